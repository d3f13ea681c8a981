"""The CANN gate of the build: AUTO says why the Ascend part is off, ON fails."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
CANN_DEFAULTS = ("/usr/local/Ascend/ascend-toolkit/latest", "/usr/local/Ascend/cann")

pytestmark = [
    pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not on PATH"),
    pytest.mark.skipif(
        any(Path(p).exists() for p in CANN_DEFAULTS),
        reason="a CANN toolkit is installed here; these tests describe a machine without one",
    ),
]


def _configure(build_dir: Path, *defines: str, env_extra: dict[str, str] | None = None):
    """Runs the configure step only (no tests, no Python module: fast)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"ASCEND_HOME_PATH", "ASCEND_TOOLKIT_HOME", "ASCEND_OPP_PATH"}
    }
    env.update(env_extra or {})
    command = [
        "cmake",
        "-S",
        str(ROOT),
        "-B",
        str(build_dir),
        "-DEPLB_BUILD_TESTS=OFF",
        "-DEPLB_BUILD_PYTHON=OFF",
        f"-DPython_EXECUTABLE={sys.executable}",
        *defines,
    ]
    return subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=120, check=False
    )


def test_auto_without_cann_configures_and_says_why_the_kernels_are_off(tmp_path: Path) -> None:
    result = _configure(tmp_path / "build", "-DEPLB_ASCEND=AUTO")
    assert result.returncode == 0, result.stderr
    assert "Ascend kernels: OFF (no CANN toolkit found" in result.stdout, result.stdout


def test_on_without_cann_fails_at_configure_with_the_reason(tmp_path: Path) -> None:
    result = _configure(tmp_path / "build", "-DEPLB_ASCEND=ON")
    assert result.returncode != 0
    assert "EPLB_ASCEND=ON but no CANN toolkit found" in result.stderr, result.stderr
    assert "ASCEND_HOME_PATH" in result.stderr


def _fake_cann(root: Path) -> Path:
    """A folder that passes the CANN probe (holds ascendc.cmake) but has nothing else."""
    cmake_dir = root / "compiler/tikcpp/ascendc_kernel_cmake"
    cmake_dir.mkdir(parents=True)
    (cmake_dir / "ascendc.cmake").write_text('message(FATAL_ERROR "fake CANN must not be used")\n')
    return root


@pytest.mark.skipif(
    importlib.util.find_spec("torch_npu") is not None,
    reason="torch_npu is installed in this interpreter",
)
def test_cann_without_torch_npu_is_off_in_auto_and_fatal_in_on(tmp_path: Path) -> None:
    cann = _fake_cann(tmp_path / "cann")
    # An empty PYTHONPATH entry keeps any torch_npu header folder of other tests out.
    env = {"ASCEND_HOME_PATH": str(cann), "PYTHONPATH": ""}
    auto = _configure(tmp_path / "auto", "-DEPLB_ASCEND=AUTO", env_extra=env)
    assert auto.returncode == 0, auto.stderr
    assert "Ascend kernels: OFF (torch_npu is not installed" in auto.stdout, auto.stdout
    on = _configure(tmp_path / "on", "-DEPLB_ASCEND=ON", env_extra=env)
    assert on.returncode != 0
    assert "Ascend kernels need torch and torch_npu" in on.stderr, on.stderr
