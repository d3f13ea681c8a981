"""The fused decode MoE operator ``torch.ops.eplb_native.fused_moe_decode``.

Importing this module imports torch, defines the schema in the ``eplb_native`` namespace and
registers the CPU kernel (the bit-exact C++ reference in ``_core``, on tensor memory without
copies), a CUDA kernel built from torch ops (fixed-shape and sync-free, so CUDA graphs can
capture it), and a fake kernel so ``torch.compile`` traces the op. The Ascend kernels are loaded lazily by :func:`npu_available` (never at import).

Example::

    out, expert_token_nums = fused_moe_decode(x, topk_ids, topk_weights, w1, w2, moe_load=load)
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eplb_native import _core

logger = logging.getLogger(__name__)

OP_NAME = "eplb_native::fused_moe_decode"
SCHEMA = (
    "fused_moe_decode(Tensor x, Tensor expert_ids, Tensor expert_scales, "
    "Tensor[] w1, Tensor[] w2, Tensor? x_active_mask=None, "
    "Tensor(a!)? moe_load=None, Tensor(b!)? load_counter=None, "
    "Tensor[]? w1_scale=None, Tensor[]? w2_scale=None) "
    "-> (Tensor out, Tensor expert_token_nums)"
)
_ACT_DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}
_NPU_ACT_DTYPES = (torch.bfloat16, torch.float16)

# The schema is defined before any NPU library is loaded: the .so only adds implementations.
_LIBRARY = torch.library.Library("eplb_native", "FRAGMENT")  # type: ignore[no-untyped-call]
_LIBRARY.define(SCHEMA)  # type: ignore[no-untyped-call]


def _check_tensor(
    value: object, name: str, dtypes: tuple[torch.dtype, ...], shape: tuple[int, ...] | None
) -> torch.Tensor:
    """Return ``value`` if it is a contiguous tensor of one of ``dtypes`` and ``shape``."""
    if not isinstance(value, torch.Tensor):
        message = f"{name}: expected a torch.Tensor, got {type(value).__name__}"
        raise TypeError(message)
    if value.dtype not in dtypes:
        allowed = ", ".join(str(d) for d in dtypes)
        message = f"{name}: expected dtype {allowed}, got {value.dtype}"
        raise TypeError(message)
    if shape is not None and tuple(value.shape) != shape:
        message = f"{name}: expected shape {list(shape)}, got {list(value.shape)}"
        raise ValueError(message)
    if not value.is_contiguous():
        message = f"{name}: must be contiguous (call .contiguous())"
        raise ValueError(message)
    return value


def _check_weights(
    weights: Sequence[torch.Tensor],
    name: str,
    dtypes: tuple[torch.dtype, ...],
    shape: tuple[int, ...] | None,
) -> None:
    """Each weight: one of ``dtypes`` (all alike), contiguous, ``shape`` or empty (unused expert)."""
    for e, weight in enumerate(weights):
        _check_tensor(weight, f"{name}[{e}]", dtypes, None)
        if weight.dtype != weights[0].dtype:
            message = (
                f"{name}[{e}]: dtype {weight.dtype} differs from {name}[0] ({weights[0].dtype})"
            )
            raise TypeError(message)
        if weight.numel() > 0 and shape is not None and tuple(weight.shape) != shape:
            message = (
                f"{name}[{e}]: expected shape {list(shape)} or empty, got {list(weight.shape)}"
            )
            raise ValueError(message)


def _check_w8a8_scales(
    w1_scale: Sequence[torch.Tensor] | None,
    w2_scale: Sequence[torch.Tensor] | None,
    num_experts: int,
    inter: int | None,
    x: torch.Tensor,
) -> None:
    """W8A8 scales: both lists of one tensor per expert, [2I] and [H] (or empty), each list of one
    dtype, float32 or the dtype of x (the published DispatchGmmCombineDecode rule: fp32/bf16
    scales with bf16 activations, fp32/fp16 with fp16; w1 and w2 lists may differ)."""
    if w1_scale is None or w2_scale is None:
        message = f"{'w1_scale' if w1_scale is None else 'w2_scale'}: int8 weights (W8A8) need both scale lists"
        raise ValueError(message)
    allowed = tuple(dict.fromkeys((torch.float32, x.dtype)))
    for name, scales, length in (
        ("w1_scale", w1_scale, None if inter is None else 2 * inter),
        ("w2_scale", w2_scale, x.shape[1]),
    ):
        if not isinstance(scales, (list, tuple)) or len(scales) != num_experts:
            message = f"{name}: expected a list of {num_experts} tensors (one per expert)"
            raise ValueError(message)
        for e, scale in enumerate(scales):
            if isinstance(scale, torch.Tensor) and scale.dtype not in allowed:
                message = (
                    f"{name}[{e}]: with {x.dtype} activations the scales must be "
                    f"{' or '.join(str(d) for d in allowed)}, got {scale.dtype}"
                )
                raise TypeError(message)
        _check_weights(scales, name, allowed, None if length is None else (length,))


def is_w8a8(
    w1: Sequence[torch.Tensor],
    w1_scale: Sequence[torch.Tensor] | None,
    w2_scale: Sequence[torch.Tensor] | None,
) -> bool:
    """W8A8 mode: scales given or int8 weights (validation then requires both)."""
    int8 = any(isinstance(w, torch.Tensor) and w.dtype == torch.int8 for w in w1)
    return int8 or w1_scale is not None or w2_scale is not None


def validate_inputs(
    x: torch.Tensor,
    expert_ids: torch.Tensor,
    expert_scales: torch.Tensor,
    w1: Sequence[torch.Tensor],
    w2: Sequence[torch.Tensor],
    x_active_mask: torch.Tensor | None = None,
    moe_load: torch.Tensor | None = None,
    load_counter: torch.Tensor | None = None,
    w1_scale: Sequence[torch.Tensor] | None = None,
    w2_scale: Sequence[torch.Tensor] | None = None,
) -> None:
    """Raise TypeError (wrong type/dtype) or ValueError (shape, length, layout) naming the argument.

    Works on fake tensors (shapes and dtypes only). Ids outside ``[0, E)`` are valid input: they
    are skipped by definition.
    """
    _check_tensor(x, "x", tuple(_ACT_DTYPE_NAMES), None)
    if x.dim() != 2:
        message = f"x: expected a 2-D tensor [BS, H], got shape {list(x.shape)}"
        raise ValueError(message)
    num_tokens, hidden = x.shape
    _check_tensor(expert_ids, "expert_ids", (torch.int32,), None)
    if expert_ids.dim() != 2 or expert_ids.shape[0] != num_tokens or expert_ids.shape[1] < 1:
        message = f"expert_ids: expected shape [{num_tokens}, K>=1], got {list(expert_ids.shape)}"
        raise ValueError(message)
    top_k = expert_ids.shape[1]
    _check_tensor(expert_scales, "expert_scales", (torch.float32,), (num_tokens, top_k))
    for name, weights in (("w1", w1), ("w2", w2)):
        if not isinstance(weights, (list, tuple)):
            message = f"{name}: expected a list of tensors, got {type(weights).__name__}"
            raise TypeError(message)
    num_experts = len(w1)
    if num_experts < 1 or len(w2) != num_experts:
        message = f"w2: expected {num_experts} tensors (one per expert, as w1), got {len(w2)}"
        if num_experts < 1:
            message = "w1: expected at least one expert weight, got an empty list"
        raise ValueError(message)
    nonempty = [w for w in w2 if isinstance(w, torch.Tensor) and w.numel() > 0]
    inter = nonempty[0].shape[0] if nonempty and nonempty[0].dim() == 2 else None
    w8a8 = is_w8a8(w1, w1_scale, w2_scale)
    weight_dtypes = (torch.int8,) if w8a8 else (x.dtype,)
    _check_weights(w1, "w1", weight_dtypes, None if inter is None else (hidden, 2 * inter))
    _check_weights(w2, "w2", weight_dtypes, None if inter is None else (inter, hidden))
    if w8a8:
        _check_w8a8_scales(w1_scale, w2_scale, num_experts, inter, x)
    if x_active_mask is not None:
        _check_tensor(x_active_mask, "x_active_mask", (torch.bool,), (num_tokens,))
    if moe_load is not None:
        _check_tensor(moe_load, "moe_load", (torch.int64, torch.int32), None)
        ring = moe_load.dim() == 2
        expected = torch.int32 if ring else torch.int64
        if (
            moe_load.dim() not in (1, 2)
            or moe_load.dtype != expected
            or moe_load.shape[-1] != num_experts
        ):
            message = (
                f"moe_load: expected int64 [{num_experts}] or int32 [T, {num_experts}], "
                f"got {moe_load.dtype} {list(moe_load.shape)}"
            )
            raise ValueError(message)
        if ring and moe_load.shape[0] < 1:
            message = "moe_load: the ring needs at least one row"
            raise ValueError(message)
        if ring != (load_counter is not None):
            message = "load_counter: required with a 2-D moe_load [T, E], not allowed otherwise"
            raise ValueError(message)
        if load_counter is not None:
            _check_tensor(load_counter, "load_counter", (torch.int32,), ())
    elif load_counter is not None:
        message = "load_counter: given without moe_load"
        raise ValueError(message)
    tensors = [expert_ids, expert_scales, *w1, *w2]
    tensors += [t for t in (x_active_mask, moe_load, load_counter) if t is not None]
    for tensor in tensors:
        if tensor.device != x.device:
            message = f"all tensors must be on {x.device}, found one on {tensor.device}"
            raise ValueError(message)


def validate_npu_inputs(
    x: torch.Tensor,
    expert_ids: torch.Tensor,
    expert_scales: torch.Tensor,
    w1: Sequence[torch.Tensor],
    w2: Sequence[torch.Tensor],
    x_active_mask: torch.Tensor | None = None,
    moe_load: torch.Tensor | None = None,
    load_counter: torch.Tensor | None = None,
    w1_scale: Sequence[torch.Tensor] | None = None,
    w2_scale: Sequence[torch.Tensor] | None = None,
) -> None:
    """:func:`validate_inputs` plus what the Ascend kernels add, on any device (shapes and dtypes).

    bf16/fp16 activations; BS * K <= 3072 pairs, E <= 1024, H <= 7168, I <= 3072, K <= 12,
    a ring of at most 2**20 rows; W8A8 weight scales as in :func:`validate_inputs` (float32 or
    the activation dtype, per list). The limits are the host tiling's own checks (``_core``).
    Raises TypeError / ValueError naming the argument.
    """
    validate_inputs(
        x,
        expert_ids,
        expert_scales,
        w1,
        w2,
        x_active_mask,
        moe_load,
        load_counter,
        w1_scale,
        w2_scale,
    )
    if x.dtype not in _NPU_ACT_DTYPES:
        message = f"x: the Ascend kernels take bfloat16 or float16 activations, got {x.dtype}"
        raise TypeError(message)
    nonempty = [w for w in w2 if w.numel() > 0]
    if not nonempty:
        message = "w2: every expert weight is empty, so the intermediate size is unknown"
        raise ValueError(message)
    w8a8 = is_w8a8(w1, w1_scale, w2_scale)
    load = "none" if moe_load is None else ("ring" if moe_load.dim() == 2 else "total")
    _core.fused_moe_npu_tiling(
        x.shape[0],
        x.shape[1],
        nonempty[0].shape[0],
        expert_ids.shape[1],
        len(w1),
        _ACT_DTYPE_NAMES[x.dtype],
        w1_scale_dtype=_ACT_DTYPE_NAMES[w1_scale[0].dtype] if w8a8 and w1_scale else None,
        w2_scale_dtype=_ACT_DTYPE_NAMES[w2_scale[0].dtype] if w8a8 and w2_scale else None,
        load=load,
        load_steps=moe_load.shape[0] if load == "ring" and moe_load is not None else 0,
        has_mask=x_active_mask is not None,
    )


def _numpy_view(tensor: torch.Tensor) -> np.ndarray:
    """The tensor's memory as numpy (16-bit floats as int16 raw bits), no copy."""
    tensor = tensor.detach()
    if tensor.dtype in (torch.bfloat16, torch.float16):
        tensor = tensor.view(torch.int16)
    return tensor.numpy()


def _fused_moe_decode_cpu(
    x: torch.Tensor,
    expert_ids: torch.Tensor,
    expert_scales: torch.Tensor,
    w1: list[torch.Tensor],
    w2: list[torch.Tensor],
    x_active_mask: torch.Tensor | None = None,
    moe_load: torch.Tensor | None = None,
    load_counter: torch.Tensor | None = None,
    w1_scale: list[torch.Tensor] | None = None,
    w2_scale: list[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CPU kernel: the C++ reference on the tensors' memory (moe_load updated in place)."""
    validate_inputs(
        x,
        expert_ids,
        expert_scales,
        w1,
        w2,
        x_active_mask,
        moe_load,
        load_counter,
        w1_scale,
        w2_scale,
    )
    out = torch.empty_like(x)
    expert_token_nums = torch.empty(len(w1), dtype=torch.int64)
    _core.fused_moe_decode_ref(
        _numpy_view(x),
        _ACT_DTYPE_NAMES[x.dtype],
        _numpy_view(expert_ids),
        _numpy_view(expert_scales),
        [_numpy_view(w) for w in w1],
        [_numpy_view(w) for w in w2],
        None if x_active_mask is None else _numpy_view(x_active_mask),
        _numpy_view(out),
        _numpy_view(expert_token_nums),
        None if moe_load is None else _numpy_view(moe_load),
        None if load_counter is None else _numpy_view(load_counter),
        num_threads=torch.get_num_threads(),
        **_scale_kwargs(w1_scale, w2_scale),
    )
    return out, expert_token_nums


def _scale_kwargs(
    w1_scale: list[torch.Tensor] | None, w2_scale: list[torch.Tensor] | None
) -> dict[str, Any]:
    """W8A8 scale arguments of ``_core.fused_moe_decode_ref`` (empty when not W8A8)."""
    if w1_scale is None or w2_scale is None:
        return {}
    return {
        "w1_scale": [_numpy_view(s) for s in w1_scale],
        "w2_scale": [_numpy_view(s) for s in w2_scale],
        "w1_scale_dtype": _ACT_DTYPE_NAMES[w1_scale[0].dtype],
        "w2_scale_dtype": _ACT_DTYPE_NAMES[w2_scale[0].dtype],
    }


def fused_moe_decode_torch(
    x: torch.Tensor,
    expert_ids: torch.Tensor,
    expert_scales: torch.Tensor,
    w1: list[torch.Tensor],
    w2: list[torch.Tensor],
    x_active_mask: torch.Tensor | None = None,
    moe_load: torch.Tensor | None = None,
    load_counter: torch.Tensor | None = None,
    w1_scale: list[torch.Tensor] | None = None,
    w2_scale: list[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The operator from torch ops (the CUDA kernel; runs on any device).

    Same routing, counts and ``moe_load`` update as the reference (exact); the GEMMs use the
    backend's matmul in fp32, so ``out`` matches the reference within float tolerance only.

    Fixed-shape and sync-free: every expert runs on all BS tokens (a dense [E, BS, H] result;
    no per-expert row count reaches the host) and each routed (token, k) pair then takes its
    expert's row, combined in k order as the reference does. So it runs on the ``meta`` device,
    traces with ``torch.compile(fullgraph=True)`` and can be captured in a CUDA graph, at E x BS
    GEMM rows instead of the BS x K routed ones (decode batches are small: the weight reads,
    the same either way, dominate). An expert given empty weights yields NaN rows (the
    reference raises ValueError when such an expert is routed; this kernel cannot look
    without a host sync).
    """
    validate_inputs(
        x,
        expert_ids,
        expert_scales,
        w1,
        w2,
        x_active_mask,
        moe_load,
        load_counter,
        w1_scale,
        w2_scale,
    )
    num_tokens, hidden = x.shape
    top_k = expert_ids.shape[1]
    num_experts = len(w1)
    valid = (expert_ids >= 0) & (expert_ids < num_experts)
    if x_active_mask is not None:
        valid = valid & x_active_mask[:, None]
    keys = torch.where(valid, expert_ids, num_experts).long()  # [BS, K], E: not routed
    counts = torch.zeros(num_experts + 1, dtype=torch.int64, device=x.device)
    counts.scatter_add_(0, keys.reshape(-1), torch.ones_like(keys.reshape(-1)))
    expert_token_nums = counts[:num_experts].clone()
    x_rows = x.float()
    y = torch.stack([_expert_rows(x_rows, e, x.dtype, w1, w2, w1_scale, w2_scale) for e in range(num_experts)])
    tokens = torch.arange(num_tokens, device=x.device)
    acc = torch.zeros((num_tokens, hidden), dtype=torch.float32, device=x.device)
    for k in range(top_k):
        rows = y[keys[:, k].clamp(max=num_experts - 1), tokens].float()  # [BS, H]
        acc = torch.where(valid[:, k : k + 1], acc + expert_scales[:, k : k + 1] * rows, acc)
    if moe_load is not None and moe_load.dim() == 1:
        moe_load.add_(expert_token_nums)
    elif moe_load is not None and load_counter is not None:
        slot = torch.remainder(load_counter.long(), moe_load.shape[0])
        moe_load.index_add_(0, slot.view(1), expert_token_nums.to(torch.int32).view(1, -1))
        load_counter.add_(1)
    return acc.to(x.dtype), expert_token_nums


def _expert_rows(
    x_rows: torch.Tensor,
    expert: int,
    dtype: torch.dtype,
    w1: list[torch.Tensor],
    w2: list[torch.Tensor],
    w1_scale: list[torch.Tensor] | None,
    w2_scale: list[torch.Tensor] | None,
) -> torch.Tensor:
    """One expert's SwiGLU MLP on fp32 rows [M, H] -> [M, H] in ``dtype`` (NaN for an expert
    with empty weights)."""
    if w1[expert].numel() == 0 or w2[expert].numel() == 0:
        return torch.full(x_rows.shape, float("nan"), dtype=dtype, device=x_rows.device)
    if w1_scale is not None and w2_scale is not None:
        h1 = _int8_matmul(x_rows, w1[expert], w1_scale[expert])
    else:
        h1 = x_rows @ w1[expert].float()
    gate, up = h1.chunk(2, dim=1)
    silu = gate / (torch.exp(-gate) + 1.0)
    if w1_scale is not None and w2_scale is not None:
        return _int8_matmul(silu * up, w2[expert], w2_scale[expert]).to(dtype)
    a = (silu * up).to(dtype).float()
    return (a @ w2[expert].float()).to(dtype)


def _int8_matmul(rows: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """W8A8 step: quantise fp32 rows [M, D] per row, int8 GEMM with weight [D, N], dequantise.

    The integer sum runs in float64 (exact for D * 127 * 127 < 2**53) so any device can do it.
    """
    absmax = rows.abs().amax(dim=1)
    usable = (absmax > 0) & torch.isfinite(absmax)
    s = 127.0 / torch.where(usable, absmax, torch.ones_like(absmax))
    codes = torch.round(rows * s[:, None]).clamp(-127.0, 127.0).nan_to_num(0.0)
    codes = torch.where(usable[:, None], codes, torch.zeros_like(codes))
    row_scale = torch.where(usable, 1.0 / s, torch.zeros_like(s))
    acc = (codes.double() @ weight.double()).float()
    return (acc * scale.float()) * row_scale[:, None]


def _fused_moe_decode_fake(
    x: torch.Tensor,
    expert_ids: torch.Tensor,
    expert_scales: torch.Tensor,
    w1: list[torch.Tensor],
    w2: list[torch.Tensor],
    x_active_mask: torch.Tensor | None = None,
    moe_load: torch.Tensor | None = None,
    load_counter: torch.Tensor | None = None,
    w1_scale: list[torch.Tensor] | None = None,
    w2_scale: list[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fake kernel: out like x [BS, H], expert_token_nums int64 [E]."""
    validate_inputs(
        x,
        expert_ids,
        expert_scales,
        w1,
        w2,
        x_active_mask,
        moe_load,
        load_counter,
        w1_scale,
        w2_scale,
    )
    return torch.empty_like(x), x.new_empty((len(w1),), dtype=torch.int64)


torch.library.register_kernel(OP_NAME, "cpu", _fused_moe_decode_cpu, lib=_LIBRARY)
torch.library.register_kernel(OP_NAME, "cuda", fused_moe_decode_torch, lib=_LIBRARY)
torch.library.register_fake(OP_NAME, _fused_moe_decode_fake, lib=_LIBRARY)


@functools.cache
def npu_available() -> bool:
    """True once torch_npu imports and the Ascend kernels library is loaded (tried once).

    Never imports torch_npu at module import; the reason for ``False`` is logged once.
    """
    reason = ""
    libraries = sorted(Path(__file__).parent.glob("_npu_ops*.so"))
    if importlib.util.find_spec("torch_npu") is None:
        reason = "torch_npu is not installed"
    else:
        try:
            importlib.import_module("torch_npu")
        # RuntimeError: torch_npu installed without the CANN runtime fails while registering.
        except (ImportError, OSError, RuntimeError) as exc:
            reason = f"import torch_npu failed: {exc}"
    if not reason and not libraries:
        reason = f"no _npu_ops*.so beside {Path(__file__).parent} (built without CANN)"
    if not reason:
        try:
            torch.ops.load_library(str(libraries[0]))  # type: ignore[no-untyped-call]
        except OSError as exc:
            reason = f"loading {libraries[0].name} failed: {exc}"
    if reason:
        logger.info("Ascend NPU kernels disabled: %s", reason)
        return False
    logger.info("Ascend NPU kernels loaded from %s", libraries[0])
    return True


def fused_moe_decode(
    x: torch.Tensor,
    expert_ids: torch.Tensor,
    expert_scales: torch.Tensor,
    w1: Sequence[torch.Tensor],
    w2: Sequence[torch.Tensor],
    x_active_mask: torch.Tensor | None = None,
    moe_load: torch.Tensor | None = None,
    load_counter: torch.Tensor | None = None,
    w1_scale: Sequence[torch.Tensor] | None = None,
    w2_scale: Sequence[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Route, grouped-GEMM with SwiGLU, combine, and count tokens per local expert.

    Args:
        x: bf16/fp16/fp32 [BS, H] hidden states.
        expert_ids: int32 [BS, K] local physical expert ids; ids outside [0, E) are skipped.
        expert_scales: fp32 [BS, K] top-k weights.
        w1: E tensors [H, 2I] (gate columns then up columns), dtype of x; empty allowed for an
            expert that receives no token.
        w2: E tensors [I, H], dtype of x. (A stacked [E, ...] tensor also works: its rows are
            taken as the list.)
        x_active_mask: bool [BS]; inactive tokens are not routed and get out = 0.
        moe_load: int64 [E] (``+= counts``) or int32 [T, E] ring (row ``load_counter % T``),
            updated in place.
        load_counter: int32 [] step counter, required with the ring, incremented in place.
        w1_scale, w2_scale: W8A8 mode (w1/w2 int8): E tensors [2I] and [H], per-output-channel
            scales, each list float32 or the dtype of x (the two lists may differ); x and the
            SwiGLU output are quantised per row to int8.

    Returns:
        out: [BS, H] dtype of x; expert_token_nums: int64 [E] tokens per expert in this call.
    """
    for name, weights in (("w1", w1), ("w2", w2)):
        if not isinstance(weights, (list, tuple, torch.Tensor)):
            message = f"{name}: expected a list of tensors, got {type(weights).__name__}"
            raise TypeError(message)
    if isinstance(x, torch.Tensor) and x.device.type == "npu":
        if not npu_available():
            message = "x: on an NPU but the Ascend kernels are unavailable (see the log)"
            raise ValueError(message)
        validate_npu_inputs(
            x,
            expert_ids,
            expert_scales,
            list(w1),
            list(w2),
            x_active_mask,
            moe_load,
            load_counter,
            None if w1_scale is None else list(w1_scale),
            None if w2_scale is None else list(w2_scale),
        )
    out, expert_token_nums = torch.ops.eplb_native.fused_moe_decode(
        x,
        expert_ids,
        expert_scales,
        list(w1),
        list(w2),
        x_active_mask,
        moe_load,
        load_counter,
        None if w1_scale is None else list(w1_scale),
        None if w2_scale is None else list(w2_scale),
    )
    return out, expert_token_nums
