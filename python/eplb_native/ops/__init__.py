"""The fused decode MoE operator ``torch.ops.eplb_native.fused_moe_decode``.

Importing this package imports torch, defines the schema in the ``eplb_native`` namespace and
registers the CPU kernel (the bit-exact C++ reference in ``_core``, on tensor memory without
copies), a CUDA kernel built from torch ops (fixed-shape and sync-free, so CUDA graphs can
capture it), and a fake kernel so ``torch.compile`` traces the op. The Ascend kernels are loaded
lazily by :func:`npu_available` (never at import).

Modules: :mod:`~eplb_native.ops.schema` (schema, input validation, fake kernel),
:mod:`~eplb_native.ops.cpu` (the C++ reference), :mod:`~eplb_native.ops.torch_kernel` (the
operator from torch ops), :mod:`~eplb_native.ops.npu` (the Ascend kernels),
:mod:`~eplb_native.ops.dispatch` (expert-parallel dispatch and combine across ranks).

Example::

    out, expert_token_nums = fused_moe_decode(x, topk_ids, topk_weights, w1, w2, moe_load=load)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from eplb_native.ops import cpu as _cpu_kernel  # noqa: F401  (registers the CPU kernel)
from eplb_native.ops.npu import npu_available, validate_npu_inputs
from eplb_native.ops.schema import OP_NAME, SCHEMA, DecodeInputs, is_w8a8, validate_inputs
from eplb_native.ops.torch_kernel import fused_moe_decode_torch

__all__ = [
    "OP_NAME",
    "SCHEMA",
    "DecodeInputs",
    "fused_moe_decode",
    "fused_moe_decode_torch",
    "is_w8a8",
    "npu_available",
    "validate_inputs",
    "validate_npu_inputs",
]


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
    inputs = DecodeInputs(
        x, expert_ids, expert_scales, list(w1), list(w2), x_active_mask, moe_load, load_counter,
        None if w1_scale is None else list(w1_scale), None if w2_scale is None else list(w2_scale),
    )  # fmt: skip
    if isinstance(x, torch.Tensor) and x.device.type == "npu":
        if not npu_available():
            message = "x: on an NPU but the Ascend kernels are unavailable (see the log)"
            raise ValueError(message)
        validate_npu_inputs(*inputs)
    out, expert_token_nums = torch.ops.eplb_native.fused_moe_decode(*inputs)
    return out, expert_token_nums
