"""The operator from torch ops: the CUDA kernel of ``torch.ops.eplb_native.fused_moe_decode``
(it runs on any device). Fixed-shape and sync-free, so CUDA graphs can capture it and
``torch.compile(fullgraph=True)`` traces it."""

from __future__ import annotations

import torch

from eplb_native.ops.schema import LIBRARY, OP_NAME, DecodeInputs, validate_inputs


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
        DecodeInputs(
            x, expert_ids, expert_scales, w1, w2, x_active_mask, moe_load, load_counter,
            w1_scale, w2_scale,
        )
    )  # fmt: skip
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


torch.library.register_kernel(OP_NAME, "cuda", fused_moe_decode_torch, lib=LIBRARY)
