"""CPU path of eplb_native::fused_moe_decode: C++ reference == independent numpy golden, bit for bit."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fused_moe_numpy import (
    ACT_DTYPES,
    GoldenResult,
    bf16_bits_to_f32,
    f32_to_bf16_bits,
    fused_moe_decode_golden,
    round_act,
)

from eplb_native import (
    _core,
    ops,
)

TORCH_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass
class Case:
    """One operator call on numpy arrays (activations as uint16 bits or float32)."""

    dtype: str
    x: np.ndarray
    expert_ids: np.ndarray
    expert_scales: np.ndarray
    w1: list[np.ndarray]
    w2: list[np.ndarray]
    x_active_mask: np.ndarray | None = None

    def inputs(self) -> tuple[Any, ...]:
        """The leading arguments of the C++ reference and of the numpy golden: x, dtype,
        expert_ids, expert_scales, w1, w2, x_active_mask."""
        args = (self.x, self.dtype, self.expert_ids, self.expert_scales, self.w1, self.w2)
        return (*args, self.x_active_mask)


def make_case(
    seed: int,
    dtype: str,
    num_tokens: int,
    hidden: int,
    inter: int,
    top_k: int,
    num_experts: int,
    id_range: tuple[int, int] | None = None,
    masked: bool = False,
) -> Case:
    rng = np.random.default_rng(seed)

    def act(shape: tuple[int, ...], scale: float) -> np.ndarray:
        return round_act((rng.standard_normal(shape) * scale).astype(np.float32), dtype)

    low, high = id_range if id_range is not None else (-1, num_experts + 1)
    return Case(
        dtype=dtype,
        x=act((num_tokens, hidden), 1.0),
        expert_ids=rng.integers(low, high, (num_tokens, top_k)).astype(np.int32),
        expert_scales=rng.random((num_tokens, top_k)).astype(np.float32),
        w1=[act((hidden, 2 * inter), 0.3) for _ in range(num_experts)],
        w2=[act((inter, hidden), 0.3) for _ in range(num_experts)],
        x_active_mask=rng.random(num_tokens) < 0.7 if masked else None,
    )


def run_core(
    case: Case,
    num_threads: int = 0,
    moe_load: np.ndarray | None = None,
    load_counter: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    out = np.full_like(case.x, 7)  # garbage: every element must be written
    counts = np.full(len(case.w1), -5, dtype=np.int64)
    _core.fused_moe_decode_ref(
        *case.inputs(), out, counts, moe_load, load_counter, num_threads=num_threads
    )
    return out, counts


def to_torch(array: np.ndarray, dtype: str) -> torch.Tensor:
    if dtype == "float32" or array.dtype == np.int8:
        return torch.from_numpy(array.copy())
    return torch.from_numpy(array.astype(np.int16)).view(TORCH_DTYPES[dtype])


def run_op(case: Case, **kwargs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mask = None if case.x_active_mask is None else torch.from_numpy(case.x_active_mask.copy())
    return ops.fused_moe_decode(
        to_torch(case.x, case.dtype),
        torch.from_numpy(case.expert_ids.copy()),
        torch.from_numpy(case.expert_scales.copy()),
        [to_torch(w, case.dtype) for w in case.w1],
        [to_torch(w, case.dtype) for w in case.w2],
        x_active_mask=mask,
        **kwargs,
    )


def bits(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array).view(np.uint8)


def assert_matches_golden(case: Case) -> GoldenResult:
    golden = fused_moe_decode_golden(*case.inputs())
    out, counts = run_core(case)
    np.testing.assert_array_equal(bits(out), bits(golden.out))
    np.testing.assert_array_equal(counts, golden.counts)
    op_out, op_counts = run_op(case)
    out_view = op_out.view(torch.int16) if case.dtype != "float32" else op_out
    np.testing.assert_array_equal(bits(out_view.numpy()), bits(golden.out))
    np.testing.assert_array_equal(op_counts.numpy(), golden.counts)
    _, offsets, row_of = _core.fused_moe_route(case.expert_ids, len(case.w1), case.x_active_mask)
    np.testing.assert_array_equal(row_of, golden.row_of)
    np.testing.assert_array_equal(offsets, np.concatenate([[0], np.cumsum(golden.counts)]))
    return golden


@pytest.mark.parametrize("dtype", ACT_DTYPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_random_cases_bit_exact(dtype: str, seed: int) -> None:
    # H and I not multiples of the 64-column tile; > 16 rows per expert (several row tiles).
    case = make_case(
        seed, dtype, num_tokens=24, hidden=70, inter=67, top_k=4, num_experts=3, masked=seed == 1
    )
    golden = assert_matches_golden(case)
    assert golden.counts.max() > 16


EDGE_CASES = {
    "no_rows": {
        "num_tokens": 5,
        "hidden": 9,
        "inter": 5,
        "top_k": 2,
        "num_experts": 3,
        "id_range": (-3, 0),
    },
    "ids_above_range": {
        "num_tokens": 5,
        "hidden": 9,
        "inter": 5,
        "top_k": 2,
        "num_experts": 3,
        "id_range": (3, 9),
    },
    "single_expert": {"num_tokens": 6, "hidden": 11, "inter": 7, "top_k": 3, "num_experts": 1},
    "single_token": {"num_tokens": 1, "hidden": 13, "inter": 6, "top_k": 4, "num_experts": 4},
    "masked_tokens": {
        "num_tokens": 9,
        "hidden": 10,
        "inter": 4,
        "top_k": 2,
        "num_experts": 3,
        "masked": True,
    },
    "tail_tiles": {
        "num_tokens": 3,
        "hidden": 129,
        "inter": 65,
        "top_k": 2,
        "num_experts": 2,
        "id_range": (0, 2),
    },
}


@pytest.mark.parametrize("dtype", ACT_DTYPES)
@pytest.mark.parametrize("name", sorted(EDGE_CASES))
def test_edge_cases_bit_exact(dtype: str, name: str) -> None:
    assert_matches_golden(make_case(3, dtype, **EDGE_CASES[name]))


@pytest.mark.parametrize("dtype", ACT_DTYPES)
def test_no_rows_gives_zeros(dtype: str) -> None:
    case = make_case(4, dtype, **EDGE_CASES["no_rows"])
    out, counts = run_core(case)
    assert not bits(out).any()
    assert not counts.any()


@pytest.mark.parametrize("dtype", ACT_DTYPES)
def test_unused_expert_may_have_empty_weights(dtype: str) -> None:
    case = make_case(5, dtype, num_tokens=6, hidden=8, inter=5, top_k=2, num_experts=4)
    case.expert_ids[case.expert_ids == 2] = 1
    empty = round_act(np.zeros((0,), dtype=np.float32), dtype)
    case = replace(case, w1=[*case.w1[:2], empty, case.w1[3]], w2=[*case.w2[:2], empty, case.w2[3]])
    golden = assert_matches_golden(case)
    assert golden.counts[2] == 0


def test_empty_weight_of_a_used_expert_is_rejected() -> None:
    case = make_case(
        6, "bfloat16", num_tokens=4, hidden=8, inter=5, top_k=2, num_experts=2, id_range=(0, 2)
    )
    empty = np.zeros((0,), dtype=np.uint16)
    case = replace(case, w1=[empty, case.w1[1]])
    with pytest.raises(ValueError, match=r"w1\[0\]"):
        run_core(case)


@pytest.mark.parametrize("dtype", ACT_DTYPES)
def test_token_with_all_k_invalid_and_duplicates(dtype: str) -> None:
    case = make_case(7, dtype, num_tokens=4, hidden=12, inter=6, top_k=3, num_experts=3)
    case.expert_ids[0] = [-1, 3, 99]  # no valid k: out row is zero
    case.expert_ids[1] = [2, 2, 2]  # duplicates: three rows, all combined
    case.expert_ids[2] = [1, -7, 1]
    golden = assert_matches_golden(case)
    out, _ = run_core(case)
    assert not bits(out[0]).any()
    assert (golden.row_of[1] >= 0).all()
    assert len(set(golden.row_of[1].tolist())) == 3


@pytest.mark.parametrize("dtype", ACT_DTYPES)
def test_masked_token_is_zero_and_uncounted(dtype: str) -> None:
    case = make_case(
        8, dtype, num_tokens=5, hidden=6, inter=3, top_k=2, num_experts=2, id_range=(0, 2)
    )
    case = replace(case, x_active_mask=np.array([True, False, True, False, True]))
    golden = assert_matches_golden(case)
    out, counts = run_core(case)
    assert not bits(out[[1, 3]]).any()
    assert counts.sum() == 6 == golden.counts.sum()


def test_thread_count_invariance() -> None:
    case = make_case(9, "bfloat16", num_tokens=20, hidden=100, inter=70, top_k=4, num_experts=5)
    results = [run_core(case, num_threads=n) for n in (1, 2, 3)]
    for out, counts in results[1:]:
        np.testing.assert_array_equal(out, results[0][0])
        np.testing.assert_array_equal(counts, results[0][1])


def test_bf16_golden_rounding_matches_torch() -> None:
    rng = np.random.default_rng(10)
    values = (rng.standard_normal(4096) * 10.0 ** rng.integers(-40, 39, 4096)).astype(np.float32)
    special = np.array(
        [0.0, -0.0, np.inf, -np.inf, 3.4e38, 1e-45, 1.00390625, 1.01171875], dtype=np.float32
    )
    values = np.concatenate([values, special])
    expected = torch.from_numpy(values).to(torch.bfloat16).view(torch.int16).numpy()
    np.testing.assert_array_equal(f32_to_bf16_bits(values), expected.view(np.uint16))
    np.testing.assert_array_equal(bf16_bits_to_f32(f32_to_bf16_bits(special))[:4], special[:4])


def test_moe_load_total_accumulates_over_calls() -> None:
    load = torch.zeros(3, dtype=torch.int64)
    expected = np.zeros(3, dtype=np.int64)
    for seed in range(4):
        case = make_case(
            seed, "bfloat16", num_tokens=7, hidden=5, inter=3, top_k=2, num_experts=3, masked=True
        )
        _, counts = run_op(case, moe_load=load)
        expected += counts.numpy()
        valid = case.x_active_mask[:, None] & (case.expert_ids >= 0) & (case.expert_ids < 3)
        np.testing.assert_array_equal(
            counts.numpy(), np.bincount(case.expert_ids[valid], minlength=3)
        )
    np.testing.assert_array_equal(load.numpy(), expected)


@pytest.mark.parametrize("start", [0, 5, -3, 2**31 - 2])
def test_moe_load_ring_with_counter(start: int) -> None:
    steps, num_experts = 3, 4
    ring = torch.zeros((steps, num_experts), dtype=torch.int32)
    counter = torch.tensor(start, dtype=torch.int32)
    expected = np.zeros((steps, num_experts), dtype=np.int64)
    step = start
    for seed in range(5):
        case = make_case(
            seed, "float16", num_tokens=6, hidden=4, inter=2, top_k=3, num_experts=num_experts
        )
        _, counts = run_op(case, moe_load=ring, load_counter=counter)
        expected[step % steps] += counts.numpy()  # Python % is floored, as torch's
        step = (step + 2**31 + 1) % 2**32 - 2**31  # int32 wrap-around
        assert int(counter) == step
    np.testing.assert_array_equal(ring.numpy(), expected)


def test_ids_out_of_range_are_skipped_not_errors() -> None:
    case = make_case(11, "bfloat16", num_tokens=4, hidden=6, inter=3, top_k=2, num_experts=2)
    case.expert_ids[:] = [[-(2**31), 2**31 - 1], [2, -1], [0, 5], [1, 1]]
    golden = assert_matches_golden(case)
    np.testing.assert_array_equal(golden.counts, [1, 2])


def test_fake_impl_under_torch_compile() -> None:
    case = make_case(12, "bfloat16", num_tokens=5, hidden=8, inter=4, top_k=2, num_experts=3)
    load = torch.zeros(3, dtype=torch.int64)
    args = (
        to_torch(case.x, "bfloat16"),
        torch.from_numpy(case.expert_ids),
        torch.from_numpy(case.expert_scales),
        [to_torch(w, "bfloat16") for w in case.w1],
        [to_torch(w, "bfloat16") for w in case.w2],
    )

    def step(x, ids, scales, w1, w2):
        return ops.fused_moe_decode(x, ids, scales, w1, w2, moe_load=load)

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    out, counts = compiled(*args)
    eager_out, eager_counts = ops.fused_moe_decode(*args)
    assert out.shape == (5, 8)
    assert out.dtype == torch.bfloat16
    assert counts.shape == (3,)
    assert counts.dtype == torch.int64
    assert torch.equal(out, eager_out)
    assert torch.equal(counts, eager_counts)
    assert torch.equal(load, counts)  # the in-place update survives functionalisation
    mode = torch._subclasses.fake_tensor.FakeTensorMode()
    fake_args = [
        [mode.from_tensor(w) for w in a] if isinstance(a, list) else mode.from_tensor(a)
        for a in args
    ]
    with mode:
        fake_out, fake_counts = torch.ops.eplb_native.fused_moe_decode(*fake_args)
    assert fake_out.shape == (5, 8)
    assert fake_out.dtype == torch.bfloat16
    assert fake_counts.shape == (3,)
    assert fake_counts.dtype == torch.int64


def test_torch_ops_path_matches_reference() -> None:
    # The CUDA kernel is built from torch ops; on CPU tensors it must route and count exactly and
    # agree on out within bf16 rounding (its matmul sums in another order).
    case = make_case(
        13, "bfloat16", num_tokens=9, hidden=40, inter=20, top_k=3, num_experts=4, masked=True
    )
    ring = torch.zeros((2, 4), dtype=torch.int32)
    counter = torch.tensor(1, dtype=torch.int32)
    out, counts = run_op(case)
    mask = torch.from_numpy(case.x_active_mask.copy())
    t_out, t_counts = ops.fused_moe_decode_torch(
        to_torch(case.x, "bfloat16"),
        torch.from_numpy(case.expert_ids),
        torch.from_numpy(case.expert_scales),
        [to_torch(w, "bfloat16") for w in case.w1],
        [to_torch(w, "bfloat16") for w in case.w2],
        mask,
        ring,
        counter,
    )
    assert torch.equal(counts, t_counts)
    torch.testing.assert_close(t_out.float(), out.float(), rtol=0.03, atol=0.03)
    assert torch.equal(ring[1], counts.to(torch.int32))
    assert int(counter) == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_reference() -> None:
    case = make_case(14, "bfloat16", num_tokens=16, hidden=64, inter=32, top_k=4, num_experts=4)
    out, counts = run_op(case)
    dev = "cuda"
    load = torch.zeros(4, dtype=torch.int64, device=dev)
    c_out, c_counts = ops.fused_moe_decode(
        to_torch(case.x, "bfloat16").to(dev),
        torch.from_numpy(case.expert_ids).to(dev),
        torch.from_numpy(case.expert_scales).to(dev),
        [to_torch(w, "bfloat16").to(dev) for w in case.w1],
        [to_torch(w, "bfloat16").to(dev) for w in case.w2],
        moe_load=load,
    )
    assert torch.equal(c_counts.cpu(), counts)
    assert torch.equal(load.cpu(), counts)
    torch.testing.assert_close(c_out.cpu().float(), out.float(), rtol=0.03, atol=0.03)


def _int8_weights(**scales: object) -> dict[str, object]:
    """Override of the bad-input call: int8 weights (E = 2, H = 8, I = 3) with valid float32
    W8A8 scale lists [2I] and [H], ``scales`` replacing them (None: not given)."""
    return {
        "w1": [torch.zeros(8, 6, dtype=torch.int8)] * 2,
        "w2": [torch.zeros(3, 8, dtype=torch.int8)] * 2,
        "w1_scale": [torch.ones(6)] * 2,
        "w2_scale": [torch.ones(8)] * 2,
        **scales,
    }


def _bad_inputs() -> list[tuple[str, dict[str, object], type[Exception], str]]:
    bf = torch.bfloat16
    return [
        ("x dtype", {"x": torch.zeros(4, 8, dtype=torch.float64)}, TypeError, "x"),
        ("x 1-D", {"x": torch.zeros(8, dtype=bf)}, ValueError, "x"),
        ("x non-contiguous", {"x": torch.zeros(8, 4, dtype=bf).t()}, ValueError, "contiguous"),
        (
            "ids int64",
            {"expert_ids": torch.zeros(4, 2, dtype=torch.int64)},
            TypeError,
            "expert_ids",
        ),
        (
            "ids rows",
            {"expert_ids": torch.zeros(3, 2, dtype=torch.int32)},
            ValueError,
            "expert_ids",
        ),
        (
            "scales dtype",
            {"expert_scales": torch.zeros(4, 2, dtype=bf)},
            TypeError,
            "expert_scales",
        ),
        ("scales shape", {"expert_scales": torch.zeros(4, 3)}, ValueError, "expert_scales"),
        ("w2 length", {"w2": [torch.zeros(3, 8, dtype=bf)]}, ValueError, "w2"),
        ("w1 empty list", {"w1": [], "w2": []}, ValueError, "w1"),
        ("w1 dtype", {"w1": [torch.zeros(8, 6, dtype=torch.float16)] * 2}, TypeError, r"w1\[0\]"),
        (
            "w1 shape",
            {"w1": [torch.zeros(8, 6, dtype=bf), torch.zeros(8, 5, dtype=bf)]},
            ValueError,
            r"w1\[1\]",
        ),
        (
            "int8 without scales",
            {"w1": [torch.zeros(8, 6, dtype=torch.int8)] * 2},
            TypeError,
            r"w2\[0\]",
        ),
        ("w8a8 one scale list", _int8_weights(w2_scale=None), ValueError, "w2_scale"),
        (
            "w8a8 scale shape",
            _int8_weights(w2_scale=[torch.ones(7)] * 2),
            ValueError,
            r"w2_scale\[0\]",
        ),
        (
            "w8a8 scale dtype",
            _int8_weights(w1_scale=[torch.ones(6, dtype=torch.int32)] * 2),
            TypeError,
            r"w1_scale\[0\]",
        ),
        (
            "w8a8 fp16 scales with bf16 activations (published rule)",
            _int8_weights(w1_scale=[torch.ones(6, dtype=torch.float16)] * 2),
            TypeError,
            r"w1_scale\[0\]: with torch.bfloat16 activations the scales must be torch.float32",
        ),
        (
            "w8a8 one list of two dtypes",
            _int8_weights(w2_scale=[torch.ones(8), torch.ones(8, dtype=bf)]),
            TypeError,
            r"w2_scale\[1\]",
        ),
        ("w1 not list", {"w1": None}, TypeError, "w1"),
        (
            "w2 non-contiguous",
            {"w2": [torch.zeros(8, 3, dtype=bf).t()] * 2},
            ValueError,
            r"w2\[0\]",
        ),
        (
            "mask dtype",
            {"x_active_mask": torch.ones(4, dtype=torch.int32)},
            TypeError,
            "x_active_mask",
        ),
        ("load dtype", {"moe_load": torch.zeros(2, dtype=torch.int32)}, ValueError, "moe_load"),
        ("load experts", {"moe_load": torch.zeros(3, dtype=torch.int64)}, ValueError, "moe_load"),
        (
            "ring no counter",
            {"moe_load": torch.zeros(2, 2, dtype=torch.int32)},
            ValueError,
            "load_counter",
        ),
        (
            "counter without ring",
            {"load_counter": torch.zeros((), dtype=torch.int32)},
            ValueError,
            "load_counter",
        ),
        (
            "counter dtype",
            {
                "moe_load": torch.zeros(2, 2, dtype=torch.int32),
                "load_counter": torch.zeros((), dtype=torch.int64),
            },
            TypeError,
            "load_counter",
        ),
        ("scales with bf16 weights", {"w1_scale": [torch.ones(6)] * 2}, TypeError, r"w1\[0\]"),
    ]


@pytest.mark.parametrize(
    ("label", "override", "error", "match"), _bad_inputs(), ids=[b[0] for b in _bad_inputs()]
)
def test_bad_inputs_raise_clear_errors(
    label: str, override: dict[str, object], error: type[Exception], match: str
) -> None:
    bf = torch.bfloat16
    kwargs: dict[str, object] = {
        "x": torch.zeros(4, 8, dtype=bf),
        "expert_ids": torch.zeros(4, 2, dtype=torch.int32),
        "expert_scales": torch.zeros(4, 2),
        "w1": [torch.zeros(8, 6, dtype=bf)] * 2,
        "w2": [torch.zeros(3, 8, dtype=bf)] * 2,
    }
    kwargs.update(override)
    with pytest.raises(error, match=match):
        ops.fused_moe_decode(**kwargs)  # type: ignore[arg-type]


def test_core_rejects_bad_buffers_by_name() -> None:
    case = make_case(15, "bfloat16", num_tokens=3, hidden=4, inter=2, top_k=2, num_experts=2)
    out = np.zeros_like(case.x)
    counts = np.zeros(2, dtype=np.int64)
    args = [
        case.x,
        "bfloat16",
        case.expert_ids,
        case.expert_scales,
        case.w1,
        case.w2,
        None,
        out,
        counts,
    ]
    bad = {
        1: ("bf8", ValueError, "dtype"),
        0: (case.x.astype(np.float32), TypeError, "x"),
        7: (np.zeros_like(case.x)[:, ::1].T.copy().T, ValueError, "out"),
        8: (counts.astype(np.int32), TypeError, "expert_token_nums"),
        4: ([case.w1[0], [1, 2]], TypeError, r"w1\[1\]"),
    }
    for position, (value, error, match) in bad.items():
        trial = list(args)
        trial[position] = value
        with pytest.raises(error, match=match):
            _core.fused_moe_decode_ref(*trial)
    read_only = np.zeros_like(out)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="out"):
        _core.fused_moe_decode_ref(*args[:7], read_only, counts)


def make_w8a8_case(seed: int, dtype: str, scale_dtypes: tuple[str, str]) -> tuple[Case, list, list]:
    case = make_case(seed, dtype, num_tokens=20, hidden=70, inter=67, top_k=4, num_experts=4)
    rng = np.random.default_rng(seed + 100)
    case.x[3] = 0  # all-zero token: scale 0, codes 0
    case.expert_ids[3] = [0, 1, 2, 3]
    case.expert_ids[case.expert_ids == 2] = 1  # expert 2 unused except token 3 ...
    case.expert_ids[3] = [0, 1, 3, 3]  # ... and then not at all: empty weights allowed
    hidden, inter = case.x.shape[1], case.w2[0].shape[0]
    case.w1 = [rng.integers(-127, 128, (hidden, 2 * inter)).astype(np.int8) for _ in range(4)]
    case.w2 = [rng.integers(-127, 128, (inter, hidden)).astype(np.int8) for _ in range(4)]
    case.w1[2] = np.zeros((0,), dtype=np.int8)
    case.w2[2] = np.zeros((0,), dtype=np.int8)
    w1_scale = [
        round_act((rng.random(2 * inter) * 0.01).astype(np.float32), scale_dtypes[0])
        for _ in range(4)
    ]
    w2_scale = [
        round_act((rng.random(hidden) * 0.01).astype(np.float32), scale_dtypes[1]) for _ in range(4)
    ]
    return case, w1_scale, w2_scale


@pytest.mark.parametrize("dtype", ACT_DTYPES)
@pytest.mark.parametrize(
    "scale_kinds", [("fp32", "fp32"), ("fp32", "act"), ("act", "fp32"), ("act", "act")]
)
def test_w8a8_bit_exact(dtype: str, scale_kinds: tuple[str, str]) -> None:
    """Every published scale pairing: each list float32 or the activation dtype."""
    w1_kind, w2_kind = (dtype if kind == "act" else "float32" for kind in scale_kinds)
    scale_dtypes = (w1_kind, w2_kind)
    case, w1_scale, w2_scale = make_w8a8_case(16, dtype, scale_dtypes)
    golden = fused_moe_decode_golden(
        *case.inputs(),
        w1_scale=w1_scale,
        w2_scale=w2_scale,
        scale_dtypes=scale_dtypes,
    )
    assert golden.counts[2] == 0
    assert bits(golden.out).any()
    out = np.full_like(case.x, 3)
    counts = np.zeros(4, dtype=np.int64)
    _core.fused_moe_decode_ref(
        *case.inputs(),
        out,
        counts,
        w1_scale=w1_scale,
        w2_scale=w2_scale,
        w1_scale_dtype=scale_dtypes[0],
        w2_scale_dtype=scale_dtypes[1],
    )
    np.testing.assert_array_equal(bits(out), bits(golden.out))
    np.testing.assert_array_equal(counts, golden.counts)
    op_out, op_counts = run_op(
        case,
        w1_scale=[to_torch(s, scale_dtypes[0]) for s in w1_scale],
        w2_scale=[to_torch(s, scale_dtypes[1]) for s in w2_scale],
    )
    out_view = op_out.view(torch.int16) if dtype != "float32" else op_out
    np.testing.assert_array_equal(bits(out_view.numpy()), bits(golden.out))
    np.testing.assert_array_equal(op_counts.numpy(), golden.counts)


def test_w8a8_torch_ops_path_matches_reference() -> None:
    case, w1_scale, w2_scale = make_w8a8_case(17, "bfloat16", ("float32", "bfloat16"))
    scales = {
        "w1_scale": [to_torch(s, "float32") for s in w1_scale],
        "w2_scale": [to_torch(s, "bfloat16") for s in w2_scale],
    }
    out, counts = run_op(case, **scales)
    t_out, t_counts = ops.fused_moe_decode_torch(
        to_torch(case.x, "bfloat16"),
        torch.from_numpy(case.expert_ids),
        torch.from_numpy(case.expert_scales),
        [torch.from_numpy(w) for w in case.w1],
        [torch.from_numpy(w) for w in case.w2],
        **scales,
    )
    assert torch.equal(counts, t_counts)
    # Its exp differs from libm's by an ulp, which can flip a re-quantised int8 code: tolerance
    # relative to the output range, as vllm-ascend compared its int8 path.
    atol = 0.02 * float(out.float().abs().max())
    torch.testing.assert_close(t_out.float(), out.float(), rtol=0.02, atol=atol)
    assert (t_out == out).float().mean() > 0.9

