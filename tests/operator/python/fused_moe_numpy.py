"""Independent numpy golden of the fused decode MoE operator.

Written from the numerics stated at the top of csrc/operator/include/eplb_native/operator/reference/
fused_moe_decode_ref.h, not from the C++ code: numpy float32 ufuncs never fuse a multiply and an
add, bf16 rounding is an explicit round-to-nearest-even on the fp32 bits, fp16 rounding is
numpy's own ``astype(np.float16)``, and ``exp`` is the C library's double ``exp``
(``math.exp``) rounded to float32, as those numerics define it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ACT_DTYPES = ("bfloat16", "float16", "float32")


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    """uint16/int16 raw bf16 bits (any shape) -> float32 of the same shape (exact)."""
    return (bits.view(np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


def f32_to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """float32 (any shape) -> uint16 bf16 bits, round to nearest even, NaN kept quiet."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    upper = bits >> np.uint64(16)
    lower = bits & np.uint64(0xFFFF)
    round_up = (lower > 0x8000) | ((lower == 0x8000) & ((upper & np.uint64(1)) == 1))
    rounded = upper + round_up.astype(np.uint64)
    is_nan = (bits & np.uint64(0x7FFFFFFF)) > 0x7F800000
    result = np.where(is_nan, upper | np.uint64(0x40), rounded)
    return result.astype(np.uint16)


def to_f32(bits: np.ndarray, dtype: str) -> np.ndarray:
    """Activation buffer (uint16 bits for bf16/fp16, float32 otherwise) -> float32."""
    if dtype == "bfloat16":
        return bf16_bits_to_f32(bits)
    if dtype == "float16":
        return bits.view(np.float16).astype(np.float32)
    return bits.astype(np.float32)


def round_act(values: np.ndarray, dtype: str) -> np.ndarray:
    """float32 -> activation buffer (uint16 bits for bf16/fp16, float32 unchanged)."""
    if dtype == "bfloat16":
        return f32_to_bf16_bits(values)
    if dtype == "float16":
        return values.astype(np.float16).view(np.uint16)
    return values.astype(np.float32)


def exp_f32(values: np.ndarray) -> np.ndarray:
    """float32 -> float32 exp, computed as float32(libm exp(float64(v)))."""
    flat = [math.exp(float(v)) if v < 709.0 else math.inf for v in values.ravel()]
    return np.asarray(flat, dtype=np.float64).astype(np.float32).reshape(values.shape)


def quantize_rows(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 [R, n] -> (int64 codes in [-127, 127] [R, n], float32 dequant scale [R]).

    Symmetric per-row int8: s = 127 / max|v| (NaN ignored), code = rint(v * s) ties to even,
    scale = 1 / s; an all-zero (or non-finite max) row gets codes 0 and scale 0.
    """
    absmax = np.fmax.reduce(np.abs(values), axis=1, initial=np.float32(0.0))
    usable = (absmax > 0) & np.isfinite(absmax)
    s = np.float32(127.0) / np.where(usable, absmax, np.float32(1.0))
    codes = np.rint(values * s[:, None])
    codes = np.where(np.isnan(codes), np.float32(0.0), np.clip(codes, -127.0, 127.0))
    codes[~usable] = 0.0
    scale = np.where(usable, np.float32(1.0) / s, np.float32(0.0)).astype(np.float32)
    return codes.astype(np.int64), scale


@dataclass
class GoldenResult:
    """out: activation buffer [BS, H]; counts: int64 [E]; row_of: int64 [BS, K] (-1 skipped)."""

    out: np.ndarray
    counts: np.ndarray
    row_of: np.ndarray


def _matmul_ascending(lhs: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """float32 [M, D] @ [D, N] with one fp32 accumulator per output, d ascending, no FMA."""
    acc = np.zeros((lhs.shape[0], rhs.shape[1]), dtype=np.float32)
    for d in range(lhs.shape[1]):
        acc = acc + lhs[:, d : d + 1] * rhs[d : d + 1, :]
    return acc


def fused_moe_decode_golden(
    x: np.ndarray,
    dtype: str,
    expert_ids: np.ndarray,
    expert_scales: np.ndarray,
    w1: list[np.ndarray],
    w2: list[np.ndarray],
    x_active_mask: np.ndarray | None = None,
    w1_scale: list[np.ndarray] | None = None,
    w2_scale: list[np.ndarray] | None = None,
    scale_dtypes: tuple[str, str] = ("float32", "float32"),
) -> GoldenResult:
    """The operator on numpy arrays.

    x: [BS, H] uint16 bits (bf16/fp16) or float32; expert_ids int32 [BS, K]; expert_scales
    float32 [BS, K]; w1: E arrays [H, 2I]; w2: E arrays [I, H]; x_active_mask bool [BS].
    W8A8 when w1_scale (E arrays [2I]) and w2_scale (E arrays [H]) are given: w1/w2 are int8,
    scales are stored like activations in scale_dtypes (w1, w2).
    """
    num_tokens, hidden = x.shape
    top_k = expert_ids.shape[1]
    num_experts = len(w1)
    active = np.ones(num_tokens, dtype=bool) if x_active_mask is None else x_active_mask
    valid = active[:, None] & (expert_ids >= 0) & (expert_ids < num_experts)
    counts = np.bincount(expert_ids[valid].astype(np.int64), minlength=num_experts)
    keys = np.where(valid, expert_ids, num_experts).ravel()
    num_rows = int(counts.sum())
    order = np.argsort(keys, kind="stable")[:num_rows]
    row_of = np.full(num_tokens * top_k, -1, dtype=np.int64)
    row_of[order] = np.arange(num_rows)
    row_of = row_of.reshape(num_tokens, top_k)
    row_tokens = order // top_k
    offsets = np.concatenate([[0], np.cumsum(counts)])
    x_f32 = to_f32(x, dtype)
    y = np.zeros((num_rows, hidden), dtype=np.float32)
    for e in range(num_experts):
        lo, hi = int(offsets[e]), int(offsets[e + 1])
        if lo == hi:
            continue
        if w1_scale is not None and w2_scale is not None:
            codes, x_scale = quantize_rows(x_f32[row_tokens[lo:hi]])
            w1_s = to_f32(w1_scale[e], scale_dtypes[0])
            h1 = ((codes @ w1[e].astype(np.int64)).astype(np.float32) * w1_s) * x_scale[:, None]
        else:
            h1 = _matmul_ascending(x_f32[row_tokens[lo:hi]], to_f32(w1[e], dtype))
        inter = h1.shape[1] // 2
        gate, up = h1[:, :inter], h1[:, inter:]
        silu = gate / (exp_f32(-gate) + np.float32(1.0))
        if w1_scale is not None and w2_scale is not None:
            codes, a_scale = quantize_rows(silu * up)
            w2_s = to_f32(w2_scale[e], scale_dtypes[1])
            acc = ((codes @ w2[e].astype(np.int64)).astype(np.float32) * w2_s) * a_scale[:, None]
            y[lo:hi] = to_f32(round_act(acc, dtype), dtype)
            continue
        a = to_f32(round_act(silu * up, dtype), dtype)
        y[lo:hi] = to_f32(round_act(_matmul_ascending(a, to_f32(w2[e], dtype)), dtype), dtype)
    acc = np.zeros((num_tokens, hidden), dtype=np.float32)
    for k in range(top_k):
        routed = row_of[:, k] >= 0
        product = expert_scales[routed, k : k + 1] * y[row_of[routed, k]]
        acc[routed] = acc[routed] + product
    return GoldenResult(out=round_act(acc, dtype), counts=counts, row_of=row_of)
