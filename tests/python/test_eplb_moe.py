"""EplbMoE on one process: placement invariance, heat from the operator, install, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import eplb_native
from eplb_native import Plan
from eplb_native.runtime import EplbMoE, HeatRecorder, RankExperts
from eplb_native.runtime.routing import ReplicaRouter

NUM_EXPERTS, HIDDEN, INTERMEDIATE, TOP_K = 6, 16, 8, 2


def _weights(seed: int, dtype: torch.dtype = torch.float32):
    gen = torch.Generator().manual_seed(seed)
    router = torch.randn(NUM_EXPERTS, HIDDEN, generator=gen).to(dtype)
    w1 = [
        (torch.randn(HIDDEN, 2 * INTERMEDIATE, generator=gen) / 4).to(dtype)
        for _ in range(NUM_EXPERTS)
    ]
    w2 = [
        (torch.randn(INTERMEDIATE, HIDDEN, generator=gen) / 4).to(dtype) for _ in range(NUM_EXPERTS)
    ]
    return router, w1, w2


def _tokens(
    seed: int, shape: tuple[int, ...] = (9, HIDDEN), dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _moe(plan: Plan, seed: int = 0, **kwargs) -> EplbMoE:
    router, w1, w2 = _weights(seed)
    return EplbMoE.from_logical_weights(router, w1, w2, plan, top_k=TOP_K, **kwargs)


def _routing(moe: EplbMoE, x: torch.Tensor) -> torch.Tensor:
    """Logical top-k experts of each token, int64 [BS, K] (what the router picks)."""
    probs = torch.softmax(x.reshape(-1, HIDDEN) @ moe.router_weight.T, dim=-1)
    return torch.topk(probs, TOP_K, dim=-1).indices


# Three placements of the same 6 experts: identity, 2 redundant slots, shuffled with 3.
_PLANS = [
    eplb_native.default_placement(num_layers=1, num_experts=NUM_EXPERTS, num_ranks=1),
    eplb_native.default_placement(
        num_layers=1, num_experts=NUM_EXPERTS, num_ranks=1, num_redundant_experts=2
    ),
    Plan.from_phy2log([[4, 2, 5, 0, 2, 1, 3, 4, 5]], NUM_EXPERTS),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("plan_idx", [1, 2])
def test_output_does_not_depend_on_the_placement(plan_idx: int, dtype: torch.dtype) -> None:
    router, w1, w2 = _weights(0, dtype)
    x = _tokens(1, dtype=dtype)
    want = EplbMoE.from_logical_weights(router, w1, w2, _PLANS[0], top_k=TOP_K)(x)
    got = EplbMoE.from_logical_weights(router, w1, w2, _PLANS[plan_idx], top_k=TOP_K)(x)
    assert got.dtype == dtype
    # One rank: every slot is local and the operator sums the K experts in the same order.
    assert torch.equal(got, want)
    assert got.abs().sum() > 0


def test_output_keeps_leading_shape_and_empty_batch() -> None:
    moe = _moe(_PLANS[1])
    x = _tokens(2, (2, 3, HIDDEN))
    out = moe(x)
    assert out.shape == x.shape
    assert out.dtype == x.dtype
    assert torch.equal(out.reshape(6, HIDDEN), moe(x.reshape(6, HIDDEN)))
    assert moe(torch.empty(0, HIDDEN)).shape == (0, HIDDEN)


def test_routing_weights_are_renormalised_only_when_asked() -> None:
    # top_k = N: every expert is used; renormalised weights sum to 1 so the output is the
    # softmax-weighted sum either way (softmax over all experts already sums to 1).
    router, w1, w2 = _weights(3)
    plan = _PLANS[0]
    x = _tokens(4)
    full = [
        EplbMoE.from_logical_weights(router, w1, w2, plan, top_k=NUM_EXPERTS, renormalize=flag)(x)
        for flag in (True, False)
    ]
    torch.testing.assert_close(full[0], full[1], rtol=1e-5, atol=1e-6)
    # top_k < N: without renormalisation the output is scaled by the kept probability mass.
    kept = torch.topk(torch.softmax(x @ router.T, dim=-1), TOP_K, dim=-1).values.sum(
        -1, keepdim=True
    )
    norm = EplbMoE.from_logical_weights(router, w1, w2, plan, top_k=TOP_K, renormalize=True)(x)
    raw = EplbMoE.from_logical_weights(router, w1, w2, plan, top_k=TOP_K, renormalize=False)(x)
    torch.testing.assert_close(raw, norm * kept, rtol=1e-5, atol=1e-6)


def test_operator_accumulates_heat_into_the_recorder() -> None:
    plan = Plan.from_phy2log([[4, 2, 5, 0, 2, 1, 3, 4, 5]], NUM_EXPERTS)
    heat = HeatRecorder(plan, collection_interval=2)
    moe = _moe(plan, heat=heat)
    want = np.zeros(NUM_EXPERTS)
    for seed in (5, 6):
        x = _tokens(seed)
        moe(x)
        want += np.bincount(_routing(moe, x).reshape(-1).numpy(), minlength=NUM_EXPERTS)
        window = heat.step()
    assert window is not None
    assert np.array_equal(window.counts.sum(axis=0)[0], want)
    assert window.rank_load.tolist() == [[int(want.sum())]]


def test_install_swaps_placement_and_weights_atomically() -> None:
    heat = HeatRecorder(_PLANS[0], collection_interval=1)
    moe = _moe(_PLANS[0], heat=heat)
    x = _tokens(7)
    want = moe(x)
    before = moe.experts
    pointers = [t.data_ptr() for t in (*moe.replica_router.tables, *before.w1, *before.w2)]
    _, w1, w2 = _weights(0)
    row = [3, 1, 4, 5, 0, 2]
    moe.install(row, [w1[e].clone() for e in row], [w2[e].clone() for e in row])
    assert moe.experts is not before
    assert before.phy2log.tolist() == [0, 1, 2, 3, 4, 5]
    assert moe.experts.phy2log.tolist() == row
    assert moe.replica_router.expert_map.tolist() == [4, 1, 5, 0, 2, 3]
    # Copied in place: every table and slot tensor keeps its memory (captured graphs read it).
    after = [t.data_ptr() for t in (*moe.replica_router.tables, *moe.experts.w1, *moe.experts.w2)]
    assert after == pointers
    assert heat.phy2log.tolist() == [row]
    assert torch.equal(moe(x), want)
    # One slot replaced by another expert's weights (a bad install) changes the output.
    wrong = [w1[e].clone() for e in row]
    wrong[0] = w1[0].clone()
    moe.install(row, wrong, [w2[e].clone() for e in row])
    assert not torch.equal(moe(x), want)


def test_failed_install_changes_nothing() -> None:
    heat = HeatRecorder(_PLANS[0], collection_interval=1)
    moe = _moe(_PLANS[0], heat=heat)
    before = moe.experts
    _, w1, w2 = _weights(0)
    with pytest.raises(ValueError, match="w1"):
        moe.install([5, 4, 3, 2, 1, 0], w1[:5], w2)
    with pytest.raises(ValueError, match="w1"):
        moe.install([5, 4, 3, 2, 1, 0], [w.half() for w in w1], [w.half() for w in w2])
    with pytest.raises(ValueError, match="phy2log"):
        moe.install([5, 4, 3, 2, 1, 1], w1, w2)
    assert moe.experts is before
    assert heat.phy2log.tolist() == [[0, 1, 2, 3, 4, 5]]


def test_rank_experts_and_routing_tables_follow_the_plan() -> None:
    _, w1, w2 = _weights(0)
    row = [4, 2, 5, 0, 2, 1, 3, 4, 5]  # 3 ranks of 3 slots
    experts = RankExperts.build(row, NUM_EXPERTS, w1[:3], w2[:3], rank=1, num_ranks=3)
    assert experts.num_slots == 3
    assert experts.num_experts == NUM_EXPERTS
    router = ReplicaRouter(row, NUM_EXPERTS, rank=1, num_ranks=3)
    assert router.expert_map.tolist() == [0, 2, 1, -1, -1, -1]
    plan = Plan.from_phy2log([row], NUM_EXPERTS)
    assert router.log2phy.tolist() == eplb_native.rank_log2phy(plan, 3)[1, 0].tolist()
    assert router.replica_count.tolist() == plan.logcnt[0].tolist()


def _bad_calls():
    router, w1, w2 = _weights(0)
    plan = _PLANS[0]
    moe = EplbMoE.from_logical_weights(router, w1, w2, plan, top_k=TOP_K)
    x = _tokens(0)
    build = RankExperts.build
    return [
        ("x float64", lambda: moe(x.double()), TypeError, "hidden_states"),
        ("x int", lambda: moe(x.long()), TypeError, "hidden_states"),
        ("x wrong H", lambda: moe(x[:, :-1].contiguous()), ValueError, "hidden_states"),
        ("x 1-D", lambda: moe(x[0]), ValueError, "hidden_states"),
        (
            "x non-contiguous",
            lambda: moe(x.t().contiguous().t()[:, :HIDDEN]),
            ValueError,
            "hidden_states",
        ),
        ("x not a tensor", lambda: moe(x.numpy()), TypeError, "hidden_states"),
        (
            "top_k 0",
            lambda: EplbMoE.from_logical_weights(router, w1, w2, plan, top_k=0),
            ValueError,
            "top_k",
        ),
        (
            "top_k > N",
            lambda: EplbMoE.from_logical_weights(router, w1, w2, plan, top_k=7),
            ValueError,
            "top_k",
        ),
        (
            "router shape",
            lambda: EplbMoE.from_logical_weights(router.t(), w1, w2, plan, top_k=2),
            ValueError,
            "router_weight",
        ),
        (
            "router int",
            lambda: EplbMoE.from_logical_weights(router.long(), w1, w2, plan, top_k=2),
            TypeError,
            "router_weight",
        ),
        (
            "too few logical",
            lambda: EplbMoE.from_logical_weights(router, w1[:5], w2, plan, top_k=2),
            ValueError,
            "w1",
        ),
        ("w1 short", lambda: build(range(6), 6, w1[:5], w2, rank=0, num_ranks=1), ValueError, "w1"),
        (
            "w2 long",
            lambda: build(range(6), 6, w1, [*w2, w2[0]], rank=0, num_ranks=1),
            ValueError,
            "w2",
        ),
        (
            "w1 a tensor",
            lambda: build(range(6), 6, torch.stack(w1), w2, rank=0, num_ranks=1),
            TypeError,
            "w1",
        ),
        (
            "w1 dtype mix",
            lambda: build(range(6), 6, [w1[0].half(), *w1[1:]], w2, rank=0, num_ranks=1),
            TypeError,
            r"w1\[1\]",
        ),
        (
            "w1 int",
            lambda: build(range(6), 6, [w.int() for w in w1], w2, rank=0, num_ranks=1),
            TypeError,
            "w1",
        ),
        (
            "w2 shape",
            lambda: build(range(6), 6, w1, [w.t().contiguous() for w in w2], rank=0, num_ranks=1),
            ValueError,
            r"w2\[0\]",
        ),
        (
            "w1 odd cols",
            lambda: build(
                range(6), 6, [w[:, 1:].contiguous() for w in w1], w2, rank=0, num_ranks=1
            ),
            ValueError,
            "w1",
        ),
        (
            "w2 non-contiguous",
            lambda: build(
                range(6), 6, w1, [*w2[:5], w2[5].t().contiguous().t()], rank=0, num_ranks=1
            ),
            ValueError,
            r"w2\[5\]",
        ),
        (
            "id out of range",
            lambda: build([0, 1, 2, 3, 4, 6], 6, w1, w2, rank=0, num_ranks=1),
            ValueError,
            "phy2log",
        ),
        (
            "expert missing",
            lambda: build([0, 1, 2, 3, 4, 4], 6, w1, w2, rank=0, num_ranks=1),
            ValueError,
            "phy2log",
        ),
        (
            "rank out of range",
            lambda: build(range(6), 6, w1[:3], w2[:3], rank=2, num_ranks=2),
            ValueError,
            "rank",
        ),
        (
            "slots not split",
            lambda: build(range(6), 6, w1, w2, rank=0, num_ranks=4),
            ValueError,
            "num_ranks",
        ),
        (
            "wrong process",
            lambda: EplbMoE(
                router, build(range(6), 6, w1[:3], w2[:3], rank=1, num_ranks=2), top_k=2
            ),
            ValueError,
            "experts",
        ),
        (
            "heat layer",
            lambda: EplbMoE.from_logical_weights(
                router,
                w1,
                w2,
                plan,
                top_k=2,
                moe_layer_idx=0,
                heat=HeatRecorder(_PLANS[1], collection_interval=1),
            ),
            ValueError,
            "heat",
        ),
    ]


_BAD = _bad_calls()


@pytest.mark.parametrize(("name", "call", "error", "field"), _BAD, ids=[case[0] for case in _BAD])
def test_bad_input_raises_naming_the_field(name, call, error, field) -> None:
    with pytest.raises(error, match=field):
        call()
