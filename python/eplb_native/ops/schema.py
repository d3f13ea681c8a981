"""The schema of ``torch.ops.eplb_native.fused_moe_decode``, the validation of its inputs, and
its fake kernel (shapes and dtypes only, so ``torch.compile`` traces the op).

Importing this module defines the schema in the ``eplb_native`` namespace; the kernel modules
(:mod:`eplb_native.ops.cpu`, :mod:`eplb_native.ops.torch_kernel`, the Ascend library loaded by
:mod:`eplb_native.ops.npu`) only add implementations to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

OP_NAME = "eplb_native::fused_moe_decode"
SCHEMA = (
    "fused_moe_decode(Tensor x, Tensor expert_ids, Tensor expert_scales, "
    "Tensor[] w1, Tensor[] w2, Tensor? x_active_mask=None, "
    "Tensor(a!)? moe_load=None, Tensor(b!)? load_counter=None, "
    "Tensor[]? w1_scale=None, Tensor[]? w2_scale=None) "
    "-> (Tensor out, Tensor expert_token_nums)"
)
# The activation dtypes and the names the C++ bindings take for them.
ACT_DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}

LIBRARY = torch.library.Library("eplb_native", "FRAGMENT")  # type: ignore[no-untyped-call]
LIBRARY.define(SCHEMA)  # type: ignore[no-untyped-call]


class DecodeInputs(NamedTuple):
    """The operator's arguments in schema order, as a kernel receives them (trailing defaults
    may be left out). Shapes and dtypes: :func:`eplb_native.ops.fused_moe_decode`."""

    x: torch.Tensor
    expert_ids: torch.Tensor
    expert_scales: torch.Tensor
    w1: Sequence[torch.Tensor]
    w2: Sequence[torch.Tensor]
    x_active_mask: torch.Tensor | None = None
    moe_load: torch.Tensor | None = None
    load_counter: torch.Tensor | None = None
    w1_scale: Sequence[torch.Tensor] | None = None
    w2_scale: Sequence[torch.Tensor] | None = None


def check_tensor(
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


def check_weight_list(weights: object, name: str) -> None:
    """``weights`` must be a list or tuple (of tensors: checked by :func:`check_weights`)."""
    if not isinstance(weights, (list, tuple)):
        message = f"{name}: expected a list of tensors, got {type(weights).__name__}"
        raise TypeError(message)


def check_weights(
    weights: Sequence[torch.Tensor],
    name: str,
    dtypes: tuple[torch.dtype, ...],
    shape: tuple[int, ...] | None,
) -> None:
    """Each weight: one of ``dtypes`` (all alike), contiguous, ``shape`` or empty (unused expert)."""
    for e, weight in enumerate(weights):
        check_tensor(weight, f"{name}[{e}]", dtypes, None)
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
        check_weights(scales, name, allowed, None if length is None else (length,))


def is_w8a8(
    w1: Sequence[torch.Tensor],
    w1_scale: Sequence[torch.Tensor] | None,
    w2_scale: Sequence[torch.Tensor] | None,
) -> bool:
    """W8A8 mode: scales given or int8 weights (validation then requires both)."""
    int8 = any(isinstance(w, torch.Tensor) and w.dtype == torch.int8 for w in w1)
    return int8 or w1_scale is not None or w2_scale is not None


def _check_tokens(inputs: DecodeInputs) -> None:
    """x bf16/fp16/fp32 [BS, H], expert_ids int32 [BS, K >= 1], expert_scales fp32 [BS, K]."""
    x, expert_ids = inputs.x, inputs.expert_ids
    check_tensor(x, "x", tuple(ACT_DTYPE_NAMES), None)
    if x.dim() != 2:
        message = f"x: expected a 2-D tensor [BS, H], got shape {list(x.shape)}"
        raise ValueError(message)
    num_tokens = x.shape[0]
    check_tensor(expert_ids, "expert_ids", (torch.int32,), None)
    if expert_ids.dim() != 2 or expert_ids.shape[0] != num_tokens or expert_ids.shape[1] < 1:
        message = f"expert_ids: expected shape [{num_tokens}, K>=1], got {list(expert_ids.shape)}"
        raise ValueError(message)
    check_tensor(inputs.expert_scales, "expert_scales", (torch.float32,), tuple(expert_ids.shape))


def _check_expert_weights(inputs: DecodeInputs) -> None:
    """w1 E x [H, 2I], w2 E x [I, H] (dtype of x, or int8 with both W8A8 scale lists)."""
    w1, w2 = inputs.w1, inputs.w2
    check_weight_list(w1, "w1")
    check_weight_list(w2, "w2")
    num_experts = len(w1)
    if num_experts < 1 or len(w2) != num_experts:
        message = f"w2: expected {num_experts} tensors (one per expert, as w1), got {len(w2)}"
        if num_experts < 1:
            message = "w1: expected at least one expert weight, got an empty list"
        raise ValueError(message)
    hidden = inputs.x.shape[1]
    nonempty = [w for w in w2 if isinstance(w, torch.Tensor) and w.numel() > 0]
    inter = nonempty[0].shape[0] if nonempty and nonempty[0].dim() == 2 else None
    w8a8 = is_w8a8(w1, inputs.w1_scale, inputs.w2_scale)
    weight_dtypes = (torch.int8,) if w8a8 else (inputs.x.dtype,)
    check_weights(w1, "w1", weight_dtypes, None if inter is None else (hidden, 2 * inter))
    check_weights(w2, "w2", weight_dtypes, None if inter is None else (inter, hidden))
    if w8a8:
        _check_w8a8_scales(inputs.w1_scale, inputs.w2_scale, num_experts, inter, inputs.x)


def _check_load(
    moe_load: torch.Tensor | None, load_counter: torch.Tensor | None, num_experts: int
) -> None:
    """moe_load int64 [E], or an int32 ring [T >= 1, E] with load_counter int32 []."""
    if moe_load is None:
        if load_counter is not None:
            message = "load_counter: given without moe_load"
            raise ValueError(message)
        return
    check_tensor(moe_load, "moe_load", (torch.int64, torch.int32), None)
    ring = moe_load.dim() == 2
    expected = torch.int32 if ring else torch.int64
    shape_ok = moe_load.dim() in (1, 2) and moe_load.shape[-1] == num_experts
    if not shape_ok or moe_load.dtype != expected:
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
        check_tensor(load_counter, "load_counter", (torch.int32,), ())


def _check_devices(inputs: DecodeInputs) -> None:
    """Every tensor on x's device."""
    tensors = [inputs.expert_ids, inputs.expert_scales, *inputs.w1, *inputs.w2]
    optional = (inputs.x_active_mask, inputs.moe_load, inputs.load_counter)
    tensors += [t for t in optional if t is not None]
    for tensor in tensors:
        if tensor.device != inputs.x.device:
            message = f"all tensors must be on {inputs.x.device}, found one on {tensor.device}"
            raise ValueError(message)


def validate_inputs(inputs: DecodeInputs) -> None:
    """Raise TypeError (wrong type/dtype) or ValueError (shape, length, layout) naming the argument.

    Works on fake tensors (shapes and dtypes only). Ids outside ``[0, E)`` are valid input: they
    are skipped by definition.
    """
    _check_tokens(inputs)
    _check_expert_weights(inputs)
    if inputs.x_active_mask is not None:
        mask_shape = (inputs.x.shape[0],)
        check_tensor(inputs.x_active_mask, "x_active_mask", (torch.bool,), mask_shape)
    _check_load(inputs.moe_load, inputs.load_counter, len(inputs.w1))
    _check_devices(inputs)


def fused_moe_decode_fake(*args: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Fake kernel (``args``: :class:`DecodeInputs`): out like x [BS, H], expert_token_nums int64
    [E]."""
    inputs = DecodeInputs(*args)
    validate_inputs(inputs)
    return torch.empty_like(inputs.x), inputs.x.new_empty((len(inputs.w1),), dtype=torch.int64)


torch.library.register_fake(OP_NAME, fused_moe_decode_fake, lib=LIBRARY)
