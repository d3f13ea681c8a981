"""Signature-drift and device-code lint for ascend_kernels/.

No CANN exists on CI machines, so the Ascend C sources are never compiled there. This lint keeps
the three places that must agree in agreement:

* kernel entry points ``extern "C" __global__ __aicore__ void <name>(GM_ADDR a, ...)`` in
  ``ascend_kernels/kernels/*.cpp``;
* the launcher prototypes ``aclrtlaunch_<name>(uint32_t blockDim, aclrtStream stream, void* a,
  ...)`` in ``ascend_kernels/host/kernel_launch_protos.h`` (what ascendc_library generates);
* the binding's ``aclrtlaunch_<name>(...)`` calls and ``aclrtlaunch_<name>.h`` includes in
  ``ascend_kernels/host/npu_ops.cpp``;

and it rejects host-only constructs in device code (the kernels, ascend_kernels/include and the
csrc/operator/include headers they include): ``std::``, ``new``/``delete``, ``malloc``/``free``,
exceptions, standard-library includes, and ``printf`` outside an ``ASCENDC_DUMP`` guard. Every
entry point must declare the cores it runs on, ``KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY)``
(vector) or ``KERNEL_TYPE_AIC_ONLY`` (cube), first thing in its body: the launch block count
means vector or cube cores accordingly, and the host emulation enforces the split.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

KERNEL_RE = re.compile(
    r'extern\s+"C"\s+__global__\s+__aicore__\s+void\s+(\w+)\s*\(([^)]*)\)', re.MULTILINE
)
PROTO_RE = re.compile(r'extern\s+"C"\s+uint32_t\s+aclrtlaunch_(\w+)\s*\(([^)]*)\)', re.MULTILINE)
CALL_RE = re.compile(r"\baclrtlaunch_(\w+)\s*\(")
INCLUDE_LAUNCH_RE = re.compile(r'#include\s+"aclrtlaunch_(\w+)\.h"')
LOCAL_INCLUDE_RE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.MULTILINE)
ANGLE_INCLUDE_RE = re.compile(r"^\s*#\s*include\s*<([^>]+)>", re.MULTILINE)
TASK_TYPE_RE = re.compile(r"^\s*KERNEL_TASK_TYPE_DEFAULT\(\s*(\w+)\s*\)\s*;")
KERNEL_TYPES = frozenset({"KERNEL_TYPE_AIV_ONLY", "KERNEL_TYPE_AIC_ONLY"})

# Host-only constructs that do not exist on the AI core (pattern, what it is).
FORBIDDEN = (
    (re.compile(r"\bstd::"), "std:: (no C++ standard library on the AI core)"),
    (re.compile(r"\bnew\b"), "operator new (no heap on the AI core)"),
    (re.compile(r"\bdelete\b"), "operator delete (no heap on the AI core)"),
    (re.compile(r"\b(malloc|calloc|realloc|free)\s*\("), "C heap allocation"),
    (re.compile(r"\b(throw|try|catch)\b"), "exceptions"),
    (re.compile(r"\b(printf|PRINTF|DumpTensor)\s*\("), "printf/DumpTensor outside ASCENDC_DUMP"),
)
# Standard headers a device-side shared header may include in its host-only branch.
HOST_BRANCH_INCLUDES = frozenset({"cstdint"})


@dataclass(frozen=True)
class Param:
    """One parameter: C type (whitespace-normalised) and name."""

    type: str
    name: str


def strip_comments(text: str, *, blank_strings: bool = False) -> str:
    """Source with comments (and, if asked, string-literal contents) blanked, lines kept."""
    out: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        two = text[i : i + 2]
        if two == "//":
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif two == "/*":
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append("\n" * text.count("\n", i, j))
            i = j
        elif text[i] == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            body = text[i + 1 : j]
            out.append('"' + (" " * len(body) if blank_strings else body) + '"')
            i = j + 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def parse_params(params: str) -> list[Param]:
    """'GM_ADDR x, void* y' -> [Param('GM_ADDR', 'x'), Param('void*', 'y')]."""
    result: list[Param] = []
    for raw in params.split(","):
        item = " ".join(raw.split())
        if not item or item == "void":
            continue
        match = re.match(r"^(.*?[\s*&])(\w+)$", item)
        if match is None:
            msg = f"cannot parse parameter {item!r}"
            raise ValueError(msg)
        result.append(Param(match.group(1).replace(" ", ""), match.group(2)))
    return result


def split_call_args(text: str, open_paren: int) -> list[str]:
    """Top-level comma-separated arguments of the call whose '(' is at text[open_paren]."""
    depth = 0
    args: list[str] = []
    start = open_paren + 1
    for i in range(open_paren, len(text)):
        char = text[i]
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
            if depth == 0:
                last = text[start:i].strip()
                if last:
                    args.append(last)
                return args
        elif char == "," and depth == 1:
            args.append(text[start:i].strip())
            start = i + 1
    msg = "unbalanced parentheses in a launcher call"
    raise ValueError(msg)


def kernel_entries(kernel_files: list[Path]) -> dict[str, list[Param]]:
    """Kernel name -> parameters, over every entry point of every kernel file."""
    entries: dict[str, list[Param]] = {}
    for path in kernel_files:
        for match in KERNEL_RE.finditer(strip_comments(path.read_text())):
            entries[match.group(1)] = parse_params(match.group(2))
    return entries


def kernel_task_types(kernel_files: list[Path]) -> dict[str, str | None]:
    """Kernel name -> the KERNEL_TASK_TYPE_DEFAULT its body opens with (None if it does not)."""
    types: dict[str, str | None] = {}
    for path in kernel_files:
        text = strip_comments(path.read_text())
        for match in KERNEL_RE.finditer(text):
            body = text[text.index("{", match.end()) + 1 :]
            declared = TASK_TYPE_RE.match(body)
            types[match.group(1)] = declared.group(1) if declared else None
    return types


def launcher_protos(protos_path: Path) -> dict[str, list[Param]]:
    """Kernel name -> launcher parameters (blockDim and stream included)."""
    text = strip_comments(protos_path.read_text())
    return {m.group(1): parse_params(m.group(2)) for m in PROTO_RE.finditer(text)}


def binding_calls(binding_path: Path) -> tuple[dict[str, list[int]], set[str]]:
    """(kernel name -> argument counts of each launcher call, kernels whose header is included)."""
    raw = binding_path.read_text()
    included = set(INCLUDE_LAUNCH_RE.findall(raw))
    text = strip_comments(raw)
    calls: dict[str, list[int]] = {}
    for match in CALL_RE.finditer(text):
        args = split_call_args(text, match.end() - 1)
        calls.setdefault(match.group(1), []).append(len(args))
    return calls, included


def check_signatures(kernel_files: list[Path], protos_path: Path, binding_path: Path) -> list[str]:
    """Every disagreement between kernel entries, launcher prototypes and binding calls."""
    problems: list[str] = []
    kernels = kernel_entries(kernel_files)
    protos = launcher_protos(protos_path)
    calls, included = binding_calls(binding_path)
    if not kernels:
        problems.append("no kernel entry points found")
    for name, params in sorted(kernels.items()):
        bad_types = [p.name for p in params if p.type != "GM_ADDR"]
        if bad_types:
            problems.append(f"{name}: parameters {bad_types} are not GM_ADDR")
        if params[-2:] != [Param("GM_ADDR", "workspace"), Param("GM_ADDR", "tiling")]:
            problems.append(f"{name}: must end with (GM_ADDR workspace, GM_ADDR tiling)")
        proto = protos.get(name)
        if proto is None:
            problems.append(f"{name}: no aclrtlaunch_{name} prototype")
        else:
            head = [Param("uint32_t", "blockDim"), Param("aclrtStream", "stream")]
            if proto[:2] != head:
                problems.append(
                    f"{name}: prototype must start with (uint32_t blockDim, aclrtStream stream)"
                )
            want = [Param("void*", p.name) for p in params]
            if proto[2:] != want:
                got = [f"{p.type} {p.name}" for p in proto[2:]]
                problems.append(
                    f"{name}: prototype parameters {got} != kernel parameters "
                    f"{[f'void* {p.name}' for p in params]}"
                )
        counts = calls.get(name)
        if not counts:
            problems.append(f"{name}: never launched by the binding")
        else:
            for count in counts:
                if count != len(params) + 2:
                    problems.append(
                        f"{name}: binding passes {count} arguments, the launcher takes "
                        f"{len(params) + 2} (blockDim, stream + {len(params)})"
                    )
        if name not in included:
            problems.append(f"{name}: binding does not include aclrtlaunch_{name}.h")
    for name, task_type in sorted(kernel_task_types(kernel_files).items()):
        if task_type not in KERNEL_TYPES:
            problems.append(
                f"{name}: body must open with KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY or "
                f"KERNEL_TYPE_AIC_ONLY), got {task_type}"
            )
    for name in sorted(set(protos) - set(kernels)):
        problems.append(f"aclrtlaunch_{name}: prototype without a kernel entry point")
    for name in sorted(set(calls) - set(kernels)):
        problems.append(f"aclrtlaunch_{name}: binding calls a launcher with no kernel")
    for name in sorted(included - set(kernels)):
        problems.append(f"aclrtlaunch_{name}.h: binding includes a header with no kernel")
    return problems


def device_files(kernel_files: list[Path], include_dirs: list[Path]) -> list[Path]:
    """Kernel files plus every quoted include they reach (transitively) in include_dirs."""
    seen: dict[Path, None] = {}
    stack = list(kernel_files)
    while stack:
        path = stack.pop()
        if path in seen:
            continue
        seen[path] = None
        for name in LOCAL_INCLUDE_RE.findall(path.read_text()):
            for base in [path.parent, *include_dirs]:
                candidate = (base / name).resolve()
                if candidate.is_file():
                    stack.append(candidate)
                    break
    return list(seen)


def _dump_guarded_lines(text: str) -> set[int]:
    """1-based line numbers inside an #if/#ifdef block whose condition names ASCENDC_DUMP."""
    guarded: set[int] = set()
    stack: list[bool] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if re.match(r"#\s*if", stripped):
            stack.append("ASCENDC_DUMP" in stripped)
        elif re.match(r"#\s*endif", stripped) and stack:
            stack.pop()
        elif any(stack):
            guarded.add(number)
    return guarded


def check_device_code(files: list[Path], root: Path) -> list[str]:
    """Host-only constructs in device sources, as 'path:line: what'."""
    problems: list[str] = []
    for path in files:
        text = strip_comments(path.read_text(), blank_strings=True)
        guarded = _dump_guarded_lines(text)
        try:
            shown = path.relative_to(root)
        except ValueError:
            shown = path
        for number, line in enumerate(text.splitlines(), start=1):
            for pattern, what in FORBIDDEN:
                if pattern.search(line) and not (what.startswith("printf") and number in guarded):
                    problems.append(f"{shown}:{number}: {what}")
        in_ascend = "ascend_kernels" in path.parts
        for header in ANGLE_INCLUDE_RE.findall(text):
            if in_ascend or header not in HOST_BRANCH_INCLUDES:
                problems.append(f"{shown}: #include <{header}> in device code")
    return problems


def lint_tree(root: Path) -> list[str]:
    """All problems of the Ascend sources under repository root `root`."""
    kernels_dir = root / "ascend_kernels" / "kernels"
    kernel_files = sorted(kernels_dir.glob("*.cpp"))
    host = root / "ascend_kernels" / "host"
    problems = check_signatures(kernel_files, host / "kernel_launch_protos.h", host / "npu_ops.cpp")
    include_dirs = [root / "ascend_kernels" / "include", root / "csrc" / "operator" / "include"]
    problems += check_device_code(device_files(kernel_files, include_dirs), root)
    return problems
