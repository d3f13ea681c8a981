"""The Ascend NPU kernels of ``torch.ops.eplb_native.fused_moe_decode``: the torch_npu library
``_npu_ops*.so`` (built from ascend_kernels/ with CANN) registers them for the ``PrivateUse1``
key when :func:`npu_available` loads it (never at import), and :func:`validate_npu_inputs`
applies the kernels' limits from Python."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from eplb_native import _core
from eplb_native.ops.schema import ACT_DTYPE_NAMES, DecodeInputs, is_w8a8, validate_inputs

logger = logging.getLogger(__name__)

# The installed package folder, where the build puts _npu_ops beside _core.
_PACKAGE_DIR = Path(__file__).parent.parent
NPU_ACT_DTYPES = (torch.bfloat16, torch.float16)


@functools.cache
def npu_available() -> bool:
    """True once torch_npu imports and the Ascend kernels library is loaded (tried once).

    Never imports torch_npu at module import; the reason for ``False`` is logged once.
    """
    reason = ""
    libraries = sorted(_PACKAGE_DIR.glob("_npu_ops*.so"))
    if importlib.util.find_spec("torch_npu") is None:
        reason = "torch_npu is not installed"
    else:
        try:
            importlib.import_module("torch_npu")
        # RuntimeError: torch_npu installed without the CANN runtime fails while registering.
        except (ImportError, OSError, RuntimeError) as exc:
            reason = f"import torch_npu failed: {exc}"
    if not reason and not libraries:
        reason = f"no _npu_ops*.so in {_PACKAGE_DIR} (built without CANN)"
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
        DecodeInputs(
            x, expert_ids, expert_scales, w1, w2, x_active_mask, moe_load, load_counter,
            w1_scale, w2_scale,
        )
    )  # fmt: skip
    if x.dtype not in NPU_ACT_DTYPES:
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
        ACT_DTYPE_NAMES[x.dtype],
        w1_scale_dtype=ACT_DTYPE_NAMES[w1_scale[0].dtype] if w8a8 and w1_scale else None,
        w2_scale_dtype=ACT_DTYPE_NAMES[w2_scale[0].dtype] if w8a8 and w2_scale else None,
        load=load,
        load_steps=moe_load.shape[0] if load == "ring" and moe_load is not None else 0,
        has_mask=x_active_mask is not None,
    )
