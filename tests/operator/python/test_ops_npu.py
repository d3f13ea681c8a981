"""The Ascend kernels of fused_moe_decode against the CPU reference.

The device tests need an NPU (skipped elsewhere); the input validation the NPU path applies
(published W8A8 scale-dtype rules, kernel limits) runs everywhere, on CPU tensors.

Contract: integer outputs (expert_token_nums, moe_load, load_counter) equal the CPU reference
exactly; ``out`` is within a stated tolerance, because the device's vector ``Exp`` is not the
reference's correctly rounded exp and the cube unit's summation order inside one Mmad is not
published (everything else runs in the reference's order; W8A8 GEMMs are exact integer sums):

    |out_npu - out_cpu| <= RTOL * |out_cpu| + ATOL_FRACTION * max|out_cpu|

with RTOL = 2 ulp of the activation dtype (bf16: 2**-7, fp16: 2**-10) and ATOL_FRACTION = 2**-8.
To be calibrated on the first device run.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
ops = pytest.importorskip("eplb_native.ops")


def _npu_ready() -> bool:
    if not ops.npu_available():
        return False
    return bool(getattr(torch, "npu", None) is not None and torch.npu.is_available())


needs_npu = pytest.mark.skipif(
    not _npu_ready(),
    reason="needs an Ascend NPU with torch_npu and eplb_native built with CANN (_npu_ops*.so)",
)

RTOL = {torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}
ATOL_FRACTION = 2.0**-8


def _inputs(
    seed: int,
    tokens: int,
    hidden: int,
    inter: int,
    experts: int,
    top_k: int,
    dtype: torch.dtype,
    *,
    invalid_fraction: float = 0.1,
    empty_expert: int | None = None,
):
    """Random inputs on the CPU: ids in [-1, E] (about invalid_fraction outside [0, E))."""
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(tokens, hidden, generator=gen) * 0.5).to(dtype)
    ids = torch.randint(0, experts, (tokens, top_k), generator=gen, dtype=torch.int32)
    invalid = torch.rand(tokens, top_k, generator=gen) < invalid_fraction
    ids[invalid] = torch.where(torch.rand(int(invalid.sum()), generator=gen) < 0.5, -1, experts).to(
        torch.int32
    )
    if empty_expert is not None:
        ids[ids == empty_expert] = -1
    scales = torch.rand(tokens, top_k, generator=gen, dtype=torch.float32)
    w1 = [
        (torch.randn(hidden, 2 * inter, generator=gen) * hidden**-0.5).to(dtype)
        for _ in range(experts)
    ]
    w2 = [
        (torch.randn(inter, hidden, generator=gen) * inter**-0.5).to(dtype) for _ in range(experts)
    ]
    if empty_expert is not None:
        w1[empty_expert] = torch.empty(0, dtype=dtype)  # never read: the expert gets no row
        w2[empty_expert] = torch.empty(0, dtype=dtype)
    return x, ids, scales, w1, w2


def _to_npu(values):
    if isinstance(values, list):
        return [v.npu() for v in values]
    return None if values is None else values.npu()


def _assert_close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    got32 = got.cpu().float()
    want32 = want.float()
    bound = RTOL[dtype] * want32.abs() + ATOL_FRACTION * float(want32.abs().max().clamp(min=1e-6))
    excess = (got32 - want32).abs() - bound
    worst = int(excess.argmax())
    assert float(excess.max()) <= 0, (
        f"out differs at flat index {worst}: npu={float(got32.flatten()[worst])} "
        f"cpu={float(want32.flatten()[worst])} bound={float(bound.flatten()[worst])}"
    )


CASES = {
    # name: (tokens, hidden, inter, experts, top_k, extra)
    "decode_bs16": (16, 512, 256, 8, 4, {}),
    "tails_not_multiple_of_tiles": (5, 200, 100, 3, 2, {}),
    "bs1": (1, 128, 64, 4, 2, {}),
    "one_expert": (7, 96, 48, 1, 1, {}),
    "expert_with_no_rows": (9, 64, 32, 4, 3, {"empty_expert": 2}),
    "no_valid_pair": (4, 64, 32, 4, 2, {"invalid_fraction": 1.0}),
    "large_decode": (256, 2048, 768, 64, 8, {}),
}


@needs_npu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_npu_matches_cpu_reference_total_load(case: str, dtype: torch.dtype) -> None:
    tokens, hidden, inter, experts, top_k, extra = CASES[case]
    x, ids, scales, w1, w2 = _inputs(0, tokens, hidden, inter, experts, top_k, dtype, **extra)
    mask = torch.arange(tokens) % 5 != 3
    load_cpu = torch.arange(experts, dtype=torch.int64)
    load_npu = load_cpu.npu()
    want_out, want_counts = ops.fused_moe_decode(x, ids, scales, w1, w2, mask, load_cpu)
    got_out, got_counts = ops.fused_moe_decode(
        _to_npu(x), _to_npu(ids), _to_npu(scales), _to_npu(w1), _to_npu(w2), _to_npu(mask), load_npu
    )
    torch.npu.synchronize()
    assert torch.equal(got_counts.cpu(), want_counts), f"{case=}"
    assert torch.equal(load_npu.cpu(), load_cpu), f"{case=}"
    _assert_close(got_out, want_out, dtype)
    # Masked tokens and tokens without a valid pair are exactly zero.
    dead = ~mask | ~((ids >= 0) & (ids < experts)).any(dim=1)
    assert torch.count_nonzero(got_out.cpu()[dead]) == 0


@needs_npu
def test_npu_ring_load_and_counter_match_cpu() -> None:
    x, ids, scales, w1, w2 = _inputs(1, 12, 256, 128, 6, 3, torch.bfloat16)
    ring_cpu = torch.zeros(4, 6, dtype=torch.int32)
    counter_cpu = torch.tensor(6, dtype=torch.int32)
    ring_npu, counter_npu = ring_cpu.npu(), counter_cpu.npu()
    for _ in range(3):  # wraps around the ring
        ops.fused_moe_decode(x, ids, scales, w1, w2, None, ring_cpu, counter_cpu)
        ops.fused_moe_decode(
            _to_npu(x),
            _to_npu(ids),
            _to_npu(scales),
            _to_npu(w1),
            _to_npu(w2),
            None,
            ring_npu,
            counter_npu,
        )
    torch.npu.synchronize()
    assert torch.equal(ring_npu.cpu(), ring_cpu)
    assert torch.equal(counter_npu.cpu(), counter_cpu)


@needs_npu
def test_npu_weight_swap_rebuilds_the_pointer_table() -> None:
    """EPLB replaces one expert's buffer between calls: the new weights must be used."""
    x, ids, scales, w1, w2 = _inputs(2, 8, 128, 64, 4, 2, torch.bfloat16, invalid_fraction=0.0)
    w1_npu, w2_npu = _to_npu(w1), _to_npu(w2)
    args = (_to_npu(x), _to_npu(ids), _to_npu(scales))
    ops.fused_moe_decode(*args, w1_npu, w2_npu)
    w1[1] = -w1[1]
    w1_npu[1] = w1[1].npu()  # a new allocation, as an EPLB weight swap makes
    got, _ = ops.fused_moe_decode(*args, w1_npu, w2_npu)
    want, _ = ops.fused_moe_decode(x, ids, scales, w1, w2)
    _assert_close(got, want, torch.bfloat16)


@needs_npu
def test_npu_rejects_shapes_outside_the_kernel_limits() -> None:
    x, ids, scales, w1, w2 = _inputs(3, 257, 64, 32, 2, 12, torch.bfloat16)
    with pytest.raises(ValueError, match="num_tokens"):
        ops.fused_moe_decode(_to_npu(x), _to_npu(ids), _to_npu(scales), _to_npu(w1), _to_npu(w2))


# ---- W8A8 ------------------------------------------------------------------------------------

# The published DispatchGmmCombineDecode pairings: each scale list float32 or the activation dtype.
SCALE_KINDS = [("fp32", "fp32"), ("fp32", "act"), ("act", "fp32"), ("act", "act")]


def _w8a8_inputs(seed: int, dtype: torch.dtype, kinds: tuple[str, str], **shape: int):
    """Random int8 weights and scales of the given kinds on top of _inputs' tokens and routing."""
    tokens, hidden, inter, experts, top_k = (
        shape.get(k, v)
        for k, v in (("tokens", 9), ("hidden", 200), ("inter", 100), ("experts", 4), ("top_k", 3))
    )
    x, ids, scales, _, _ = _inputs(seed, tokens, hidden, inter, experts, top_k, dtype)
    gen = torch.Generator().manual_seed(seed + 1)
    w1 = [
        torch.randint(-127, 128, (hidden, 2 * inter), generator=gen, dtype=torch.int8)
        for _ in range(experts)
    ]
    w2 = [
        torch.randint(-127, 128, (inter, hidden), generator=gen, dtype=torch.int8)
        for _ in range(experts)
    ]
    s1_dtype, s2_dtype = (dtype if kind == "act" else torch.float32 for kind in kinds)
    w1_scale = [(torch.rand(2 * inter, generator=gen) * 0.01).to(s1_dtype) for _ in range(experts)]
    w2_scale = [(torch.rand(hidden, generator=gen) * 0.01).to(s2_dtype) for _ in range(experts)]
    return x, ids, scales, w1, w2, w1_scale, w2_scale


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("kinds", SCALE_KINDS, ids=["-".join(k) for k in SCALE_KINDS])
def test_npu_validation_accepts_every_published_scale_pairing(
    dtype: torch.dtype, kinds: tuple[str, str]
) -> None:
    x, ids, scales, w1, w2, w1_scale, w2_scale = _w8a8_inputs(4, dtype, kinds)
    ops.validate_npu_inputs(x, ids, scales, w1, w2, w1_scale=w1_scale, w2_scale=w2_scale)


def _w8a8_bad_cases():
    """(label, dtype, override of (w1_scale, w2_scale, w1, x), error, match)."""
    return [
        (
            "fp16 w1 scales with bf16 x",
            torch.bfloat16,
            {"w1_scale": torch.float16},
            TypeError,
            r"w1_scale\[0\]: .* must be torch.float32 or torch.bfloat16, got torch.float16",
        ),
        (
            "bf16 w2 scales with fp16 x",
            torch.float16,
            {"w2_scale": torch.bfloat16},
            TypeError,
            r"w2_scale\[0\]: with torch.float16 activations",
        ),
        ("int32 scales", torch.bfloat16, {"w1_scale": torch.int32}, TypeError, r"w1_scale\[0\]"),
        (
            "one scale list",
            torch.bfloat16,
            {"w2_scale": None},
            ValueError,
            "w2_scale: int8 weights",
        ),
        (
            "int8 weights without scales",
            torch.float16,
            {"w1_scale": None, "w2_scale": None},
            ValueError,
            "w1_scale: int8 weights",
        ),
        (
            "fp32 activations",
            torch.float32,
            {},
            TypeError,
            "x: the Ascend kernels take bfloat16 or float16",
        ),
    ]


@pytest.mark.parametrize(
    ("label", "dtype", "override", "error", "match"),
    _w8a8_bad_cases(),
    ids=[case[0] for case in _w8a8_bad_cases()],
)
def test_npu_validation_rejects_w8a8_inputs_outside_the_published_rules(
    label: str, dtype: torch.dtype, override: dict, error: type[Exception], match: str
) -> None:
    x, ids, scales, w1, w2, w1_scale, w2_scale = _w8a8_inputs(5, dtype, ("fp32", "fp32"))
    lists = {"w1_scale": w1_scale, "w2_scale": w2_scale}
    for name, new_dtype in override.items():
        lists[name] = None if new_dtype is None else [s.to(new_dtype) for s in lists[name]]
    with pytest.raises(error, match=match):
        ops.validate_npu_inputs(x, ids, scales, w1, w2, **lists)


def test_npu_validation_applies_the_kernel_limits() -> None:
    x, ids, scales, w1, w2 = _inputs(6, 257, 64, 32, 2, 12, torch.bfloat16)  # 3084 pairs
    with pytest.raises(ValueError, match="num_tokens: BS \\* K must be <= 3072"):
        ops.validate_npu_inputs(x, ids, scales, w1, w2)
    x, ids, scales, w1, w2 = _inputs(6, 4, 7200, 16, 2, 2, torch.bfloat16)
    with pytest.raises(ValueError, match=r"hidden: expected 1\.\.7168"):
        ops.validate_npu_inputs(x, ids, scales, w1, w2)
    # After a dispatch a rank runs the pairs it received, one row each: 3072 rows pass.
    x, ids, scales, w1, w2 = _inputs(6, 3072, 16, 16, 2, 1, torch.float16)
    ops.validate_npu_inputs(x, ids, scales, w1, w2)


@needs_npu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("kinds", SCALE_KINDS, ids=["-".join(k) for k in SCALE_KINDS])
def test_npu_w8a8_matches_cpu_reference(dtype: torch.dtype, kinds: tuple[str, str]) -> None:
    x, ids, scales, w1, w2, w1_scale, w2_scale = _w8a8_inputs(7, dtype, kinds)
    load_cpu = torch.zeros(len(w1), dtype=torch.int64)
    load_npu = load_cpu.npu()
    want_out, want_counts = ops.fused_moe_decode(
        x, ids, scales, w1, w2, moe_load=load_cpu, w1_scale=w1_scale, w2_scale=w2_scale
    )
    got_out, got_counts = ops.fused_moe_decode(
        _to_npu(x),
        _to_npu(ids),
        _to_npu(scales),
        _to_npu(w1),
        _to_npu(w2),
        moe_load=load_npu,
        w1_scale=_to_npu(w1_scale),
        w2_scale=_to_npu(w2_scale),
    )
    torch.npu.synchronize()
    assert torch.equal(got_counts.cpu(), want_counts)
    assert torch.equal(load_npu.cpu(), load_cpu)
    _assert_close(got_out, want_out, dtype)
