"""The CPU kernel of ``torch.ops.eplb_native.fused_moe_decode``: the bit-exact C++ reference
(``_core.fused_moe_decode_ref``) run on the tensors' memory, without copies."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from eplb_native import _core
from eplb_native.ops.schema import ACT_DTYPE_NAMES, LIBRARY, OP_NAME, DecodeInputs, validate_inputs


def _numpy_view(tensor: torch.Tensor) -> np.ndarray:
    """The tensor's memory as numpy (16-bit floats as int16 raw bits), no copy."""
    tensor = tensor.detach()
    if tensor.dtype in (torch.bfloat16, torch.float16):
        tensor = tensor.view(torch.int16)
    return tensor.numpy()


def _optional_view(tensor: torch.Tensor | None) -> np.ndarray | None:
    return None if tensor is None else _numpy_view(tensor)


def _scale_kwargs(inputs: DecodeInputs) -> dict[str, Any]:
    """W8A8 scale arguments of ``_core.fused_moe_decode_ref`` (empty when not W8A8)."""
    w1_scale, w2_scale = inputs.w1_scale, inputs.w2_scale
    if w1_scale is None or w2_scale is None:
        return {}
    return {
        "w1_scale": [_numpy_view(s) for s in w1_scale],
        "w2_scale": [_numpy_view(s) for s in w2_scale],
        "w1_scale_dtype": ACT_DTYPE_NAMES[w1_scale[0].dtype],
        "w2_scale_dtype": ACT_DTYPE_NAMES[w2_scale[0].dtype],
    }


def fused_moe_decode_cpu(*args: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """CPU kernel (``args``: :class:`DecodeInputs`): the C++ reference on the tensors' memory,
    moe_load and load_counter updated in place. Returns out [BS, H] dtype of x and
    expert_token_nums int64 [E]."""
    inputs = DecodeInputs(*args)
    validate_inputs(inputs)
    x = inputs.x
    out = torch.empty_like(x)
    expert_token_nums = torch.empty(len(inputs.w1), dtype=torch.int64)
    _core.fused_moe_decode_ref(
        _numpy_view(x),
        ACT_DTYPE_NAMES[x.dtype],
        _numpy_view(inputs.expert_ids),
        _numpy_view(inputs.expert_scales),
        [_numpy_view(w) for w in inputs.w1],
        [_numpy_view(w) for w in inputs.w2],
        _optional_view(inputs.x_active_mask),
        _numpy_view(out),
        _numpy_view(expert_token_nums),
        _optional_view(inputs.moe_load),
        _optional_view(inputs.load_counter),
        num_threads=torch.get_num_threads(),
        **_scale_kwargs(inputs),
    )
    return out, expert_token_nums


torch.library.register_kernel(OP_NAME, "cpu", fused_moe_decode_cpu, lib=LIBRARY)
