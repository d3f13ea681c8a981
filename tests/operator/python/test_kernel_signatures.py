"""The Ascend C kernel entry points, launcher prototypes and binding calls agree."""

from __future__ import annotations

import shutil
from pathlib import Path

import kernel_lint
import pytest

ROOT = Path(__file__).resolve().parents[3]


def test_kernels_prototypes_and_binding_agree_and_device_code_is_clean() -> None:
    problems = kernel_lint.lint_tree(ROOT)
    assert problems == [], "\n".join(problems)


def test_lint_sees_all_six_kernels_with_their_parameters() -> None:
    kernels = kernel_lint.kernel_entries(sorted((ROOT / "ascend_kernels/kernels").glob("*.cpp")))
    assert sorted(kernels) == [
        "moe_combine",
        "moe_gemm1",
        "moe_gemm2",
        "moe_permute",
        "moe_route_count",
        "moe_swiglu",
    ]
    assert [p.name for p in kernels["moe_route_count"]] == [
        "expert_ids",
        "x_active_mask",
        "expert_token_nums",
        "moe_load",
        "load_counter",
        "workspace",
        "tiling",
    ]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the Ascend sources the lint reads, to break on purpose."""
    for sub in ("ascend_kernels/kernels", "ascend_kernels/host", "ascend_kernels/include"):
        shutil.copytree(ROOT / sub, tmp_path / sub)
    shutil.copytree(ROOT / "csrc/operator/include", tmp_path / "csrc/operator/include")
    assert kernel_lint.lint_tree(tmp_path) == []
    return tmp_path


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


# Deliberate breaks: (file, text, replacement, the start of every problem the lint must report).
SIGNATURE_BREAKS = {
    "a kernel parameter missing from the prototype and the binding": (
        "ascend_kernels/kernels/moe_permute.cpp",
        "void moe_permute(GM_ADDR x, GM_ADDR workspace",
        "void moe_permute(GM_ADDR x, GM_ADDR row_scale, GM_ADDR workspace",
        [
            "moe_permute: prototype parameters",
            "moe_permute: binding passes 5 arguments, the launcher takes 6",
        ],
    ),
    "a prototype that reorders parameters": (
        "ascend_kernels/host/kernel_launch_protos.h",
        "void* expert_ids, void* expert_scales,",
        "void* expert_scales, void* expert_ids,",
        ["moe_combine: prototype parameters"],
    ),
    "a binding call with a dropped argument": (
        "ascend_kernels/host/npu_ops.cpp",
        "stream, w2_ptr,\n                                           ws_ptr, tiling_ptr)",
        "stream, w2_ptr,\n                                           tiling_ptr)",
        ["moe_gemm2: binding passes 4 arguments, the launcher takes 5 (blockDim, stream + 3)"],
    ),
}


@pytest.mark.parametrize("name", list(SIGNATURE_BREAKS))
def test_lint_reports_a_signature_break(tree: Path, name: str) -> None:
    path, old, new, expected = SIGNATURE_BREAKS[name]
    _edit(tree / path, old, new)
    problems = kernel_lint.lint_tree(tree)
    for start in expected:
        assert any(p.startswith(start) for p in problems), (start, problems)


def test_lint_reports_a_kernel_nobody_launches(tree: Path) -> None:
    (tree / "ascend_kernels/kernels/moe_extra.cpp").write_text(
        'extern "C" __global__ __aicore__ void moe_extra(GM_ADDR workspace, GM_ADDR tiling) {\n'
        "    KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);\n}\n"
    )
    problems = kernel_lint.lint_tree(tree)
    assert "moe_extra: no aclrtlaunch_moe_extra prototype" in problems
    assert "moe_extra: never launched by the binding" in problems
    assert "moe_extra: binding does not include aclrtlaunch_moe_extra.h" in problems


def test_lint_sees_which_kernels_run_on_cube_cores() -> None:
    files = sorted((ROOT / "ascend_kernels/kernels").glob("*.cpp"))
    types = kernel_lint.kernel_task_types(files)
    cube = sorted(name for name, kind in types.items() if kind == "KERNEL_TYPE_AIC_ONLY")
    assert cube == ["moe_gemm1", "moe_gemm2"]


def test_lint_reports_a_kernel_without_its_core_type(tree: Path) -> None:
    _edit(
        tree / "ascend_kernels/kernels/moe_swiglu.cpp",
        "KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);",
        "",
    )
    problems = kernel_lint.lint_tree(tree)
    assert any(
        p.startswith("moe_swiglu: body must open with KERNEL_TASK_TYPE_DEFAULT") for p in problems
    )


def test_lint_rejects_host_only_constructs_in_device_code(tree: Path) -> None:
    header = tree / "ascend_kernels/include/moe_kernel_common.h"
    header.write_text(
        header.read_text()
        + "\n#include <vector>\n"
        + "inline void bad() { std::vector<int> v; int* p = new int(1); throw 1; }\n"
        + 'inline void log() { printf("x"); }\n'
        + '#if ASCENDC_DUMP\ninline void dump() { printf("ok"); }\n#endif\n'
        + '// std:: in a comment and "new" in a string are fine\n'
    )
    problems = kernel_lint.lint_tree(tree)
    shown = "ascend_kernels/include/moe_kernel_common.h"
    kinds = sorted({p.split(": ", 1)[1] for p in problems if p.startswith(shown)})
    assert kinds == [
        "#include <vector> in device code",
        "exceptions",
        "operator new (no heap on the AI core)",
        "printf/DumpTensor outside ASCENDC_DUMP",
        "std:: (no C++ standard library on the AI core)",
    ], problems
    # Only the unguarded printf is reported.
    assert len([p for p in problems if "printf" in p]) == 1, problems


def test_parse_params_normalises_pointer_spacing() -> None:
    params = kernel_lint.parse_params("uint32_t blockDim, aclrtStream  stream, void *x, void* y")
    assert [(p.type, p.name) for p in params] == [
        ("uint32_t", "blockDim"),
        ("aclrtStream", "stream"),
        ("void*", "x"),
        ("void*", "y"),
    ]
