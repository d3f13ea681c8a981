"""The package surface: planning imports and works with numpy alone; NPU support is lazy."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _run(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_planning_never_imports_torch():
    out = _run(
        """
        import sys
        import numpy as np
        import eplb_native
        plan = eplb_native.rebalance_experts(np.arange(1.0, 13.0)[None, :], 16, 4, 2, 8)
        eplb_native.validate_plan(plan, 8, allow_duplicate_on_rank=True)
        stats = eplb_native.evaluate(plan, np.arange(1.0, 13.0)[None, :], 8)
        print("torch" in sys.modules, round(stats.par, 6) >= 1.0)
        """
    )
    assert out == "False True"


def test_npu_available_is_false_without_cann_and_never_imports_torch_npu_eagerly():
    out = _run(
        """
        import sys
        import eplb_native
        print("torch_npu" in sys.modules, eplb_native.npu_available(), "torch_npu" in sys.modules)
        """
    )
    assert out == "False False False"


def test_core_stubs_name_every_compiled_function():
    import ast
    from pathlib import Path

    from eplb_native import _core

    stub = Path(_core.__file__).with_name("_core.pyi")
    if not stub.exists():  # an installed wheel carries it; a bare build dir may not
        stub = Path(__file__).parents[2] / "python" / "eplb_native" / "_core.pyi"
    tree = ast.parse(stub.read_text())
    stubbed = {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    compiled = {name for name in dir(_core) if not name.startswith("_") and callable(getattr(_core, name))}
    assert stubbed == compiled, f"regenerate python/eplb_native/_core.pyi: {stubbed ^ compiled}"
