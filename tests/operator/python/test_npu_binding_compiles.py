"""The torch_npu binding compiles against the headers of the torch-npu wheel.

Marked ``network`` and ``slow``: plain ``pytest`` skips it; ``pytest -m network`` (the last stage
of scripts/test.sh) runs it. No CANN here, so the kernels are not built; the binding translation unit
(ascend_kernels/host/npu_ops.cpp) is compiled through the project's own CMake path
(-DEPLB_NPU_COMPILE_CHECK=ON: C++20, torch's ABI, -Werror, launcher prototypes from
ascend_kernels/host/kernel_launch_protos.h), linked with stand-ins for the NPU runtime symbols,
and loaded into CPU torch after the schema is defined: torch infers the schema from the C++
signature of the registered kernel, so a signature that does not match ``Tensor[]?`` & co.
fails here instead of aborting the process on an NPU machine.

torch_npu is never installed into this interpreter: its ``torch.backends`` entry point would make
``import torch`` fail without CANN. The wheel matching the installed torch is downloaded with
``pip download --no-deps`` and only its ``torch_npu/include`` tree and ``__init__.py`` are
extracted into build/torch_npu_wheel/<version>/ (kept between runs), and the check builds in
build/npu_compile_check/ (kept too: a second run recompiles only what changed).
EPLB_TORCH_NPU_SITE may point at a folder that already holds such a ``torch_npu/``. Skips, with
the reason, only when the headers cannot be obtained (no network) or cmake is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import eplb_native

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[3]
BUILD = ROOT / "build" / "npu_compile_check"
OP_COMMAND = Path("torch_npu/include/torch_npu/csrc/framework/OpCommand.h")


def _torch_npu_version() -> str:
    """torch-npu release paired with the installed torch (2.13.0+cpu -> 2.13.0)."""
    return torch.__version__.split("+")[0]


def _fetch_headers(site: Path, version: str) -> str | None:
    """Extracts the wheel's headers into site; returns why not on failure."""
    download = site.parent / f"download-{version}"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            "--disable-pip-version-check",
            "-d",
            str(download),
            f"torch-npu=={version}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    wheels = sorted(download.glob("torch_npu-*.whl"))
    if result.returncode != 0 or not wheels:
        return f"pip download torch-npu=={version} failed: {result.stderr.strip()[-300:]}"
    with zipfile.ZipFile(wheels[-1]) as wheel:
        members = [
            name
            for name in wheel.namelist()
            if name.startswith("torch_npu/include/") or name == "torch_npu/__init__.py"
        ]
        wheel.extractall(site, members)
    shutil.rmtree(download)
    return None


@pytest.fixture(scope="module")
def torch_npu_site() -> Path:
    given = os.environ.get("EPLB_TORCH_NPU_SITE")
    if given:
        site = Path(given)
        if not (site / OP_COMMAND).is_file():
            pytest.fail(f"EPLB_TORCH_NPU_SITE={given} holds no {OP_COMMAND}")
        return site
    version = _torch_npu_version()
    site = ROOT / "build" / "torch_npu_wheel" / version
    if not (site / OP_COMMAND).is_file():
        site.mkdir(parents=True, exist_ok=True)
        why = _fetch_headers(site, version)
        if why is not None:
            pytest.skip(f"torch-npu headers not available: {why}")
    return site


@pytest.mark.network
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not on PATH")
def test_npu_binding_compiles_against_torch_npu_wheel_headers(torch_npu_site: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASCEND_")}
    # Seen only by the configure-time find_spec probe; nothing imports torch_npu.
    env["PYTHONPATH"] = str(torch_npu_site)
    build = BUILD
    configure = subprocess.run(
        [
            "cmake",
            "-S",
            str(ROOT),
            "-B",
            str(build),
            "-DEPLB_ASCEND=OFF",
            "-DEPLB_NPU_COMPILE_CHECK=ON",
            "-DEPLB_BUILD_TESTS=OFF",
            "-DEPLB_BUILD_PYTHON=OFF",
            "-DEPLB_WERROR=ON",
            "-DCMAKE_BUILD_TYPE=Release",
            "-DCMAKE_CXX_FLAGS_RELEASE=-O0",
            f"-DPython_EXECUTABLE={sys.executable}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert configure.returncode == 0, configure.stdout + configure.stderr
    assert "Ascend kernels: compile check only" in configure.stdout, configure.stdout
    build_step = subprocess.run(
        ["cmake", "--build", str(build), "--target", "eplb_npu_ops_schema_check", "-j", "2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert build_step.returncode == 0, build_step.stdout[-6000:] + build_step.stderr[-3000:]
    modules = list(build.rglob("eplb_npu_ops_schema_check*.so"))
    assert len(modules) == 1, "the schema-check module was not produced"
    # Loading the module registers the PrivateUse1 kernel; torch infers the schema from the C++
    # signature and aborts the process if it does not match the Python one, hence a subprocess.
    package_root = Path(eplb_native.__file__).resolve().parents[1]
    probe = (
        "import torch, eplb_native.ops\n"
        "name = 'eplb_native::fused_moe_decode'\n"
        "assert not torch._C._dispatch_has_kernel_for_dispatch_key(name, 'PrivateUse1')\n"
        f"torch.ops.load_library({str(modules[0])!r})\n"
        "assert torch._C._dispatch_has_kernel_for_dispatch_key(name, 'PrivateUse1')\n"
    )
    load_env = dict(os.environ, PYTHONPATH=str(package_root))
    loaded = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env=load_env,
        timeout=300,
        check=False,
    )
    assert loaded.returncode == 0, loaded.stderr[:3000]
