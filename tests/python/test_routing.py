"""Replica routing: the simulator's rules (eplb_native.routing), the runtime's ReplicaRouter that
follows them, and a 4-rank run whose measured rank loads are the ones the simulator predicts,
with spreading and without."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist
from dist_utils import run_on_ranks, warm_operator

import eplb_native
from eplb_native import Plan
from eplb_native.routing import rank_loads_under_routing, routing_fractions
from eplb_native.runtime import EplbMoE, HeatRecorder
from eplb_native.runtime.routing import ReplicaRouter

# 4 ranks x 2 slots: expert 0 on ranks 0, 1, 2; expert 1 on ranks 0 and 3; 2 on 1 and 3; 3 on 2.
ROW = [0, 1, 0, 2, 0, 3, 1, 2]
NUM_EXPERTS, NUM_RANKS, NUM_SLOTS = 4, 4, 2


def test_fractions_follow_each_rule_by_hand() -> None:
    plan = Plan.from_phy2log([ROW], NUM_EXPERTS)
    spread = routing_fractions(plan, NUM_RANKS, "spread")[:, 0]  # [D_src, N, D]
    assert spread.shape == (NUM_RANKS, NUM_EXPERTS, NUM_RANKS)
    np.testing.assert_allclose(spread.sum(axis=-1), 1.0)
    np.testing.assert_allclose(spread[0, 0], [1, 0, 0, 0])  # held: stays on rank 0
    np.testing.assert_allclose(spread[3, 0], [1 / 3, 1 / 3, 1 / 3, 0])  # spread over 3 replicas
    np.testing.assert_allclose(spread[1, 1], [0.5, 0, 0, 0.5])
    np.testing.assert_allclose(spread[0, 3], [0, 0, 1, 0])  # one replica: no choice
    fixed = routing_fractions(plan, NUM_RANKS, "fixed")[:, 0]
    dest = eplb_native.rank_log2phy(plan, NUM_RANKS)[:, 0] // NUM_SLOTS  # [D_src, N]
    np.testing.assert_array_equal(fixed.argmax(axis=-1), dest)
    np.testing.assert_allclose(fixed.sum(axis=-1), 1.0)
    assert set(np.unique(fixed)) == {0.0, 1.0}


def test_spreading_equals_the_even_split_when_no_rank_holds_two_replicas() -> None:
    # Each replica then gets 1/D of its expert from its own rank and an equal share of the
    # other ranks' tokens: load / logcnt, the planners' model (plan.rank_loads).
    rng = np.random.default_rng(0)
    plan = eplb_native.default_placement(3, 12, 4, num_redundant_experts=4)
    load = rng.integers(0, 100, (5, 3, 12)).astype(np.float64)
    spread = rank_loads_under_routing(plan, load, 4, "spread")
    np.testing.assert_allclose(spread, eplb_native.rank_loads(plan, load, 4))
    fixed = rank_loads_under_routing(plan, load, 4, "fixed")
    np.testing.assert_allclose(fixed.sum(axis=-1), load.sum(axis=-1))


def test_by_source_loads_and_bad_input() -> None:
    plan = Plan.from_phy2log([ROW], NUM_EXPERTS)
    by_source = np.zeros((NUM_RANKS, 1, NUM_EXPERTS))
    by_source[3, 0, 0] = 9  # rank 3 sends 9 tokens to expert 0
    np.testing.assert_allclose(
        rank_loads_under_routing(plan, by_source, NUM_RANKS, "spread", by_source=True), [[3, 3, 3, 0]]
    )
    with pytest.raises(ValueError, match="routing"):
        rank_loads_under_routing(plan, by_source, NUM_RANKS, "random", by_source=True)
    with pytest.raises(ValueError, match="load"):
        rank_loads_under_routing(plan, by_source[..., :3], NUM_RANKS, "fixed")
    with pytest.raises(ValueError, match="load"):
        rank_loads_under_routing(plan, by_source[:3], NUM_RANKS, "fixed", by_source=True)


@pytest.mark.parametrize("rank", range(NUM_RANKS))
def test_router_splits_each_experts_tokens_as_the_fractions_say(rank: int) -> None:
    # A batch of 6 tokens (a multiple of every replica count) all choosing expert e: the
    # per-rank token counts are exactly the rule's fractions times 6.
    plan = Plan.from_phy2log([ROW], NUM_EXPERTS)
    for routing in ("fixed", "spread"):
        router = ReplicaRouter(ROW, NUM_EXPERTS, rank=rank, num_ranks=NUM_RANKS, routing=routing)
        want = routing_fractions(plan, NUM_RANKS, routing)[rank, 0] * 6  # [N, D]
        for expert in range(NUM_EXPERTS):
            slots = router.route(torch.full((6, 1), expert))
            assert (torch.tensor(ROW)[slots] == expert).all(), f"{routing} {expert=}"
            got = torch.bincount(slots.reshape(-1) // NUM_SLOTS, minlength=NUM_RANKS)
            np.testing.assert_array_equal(got.numpy(), want[expert], err_msg=f"{routing} {expert=}")


def test_router_load_copies_in_place_and_a_bad_row_changes_nothing() -> None:
    router = ReplicaRouter(ROW, NUM_EXPERTS, rank=1, num_ranks=NUM_RANKS, routing="spread")
    pointers = [t.data_ptr() for t in router.tables]
    before = [t.clone() for t in router.tables]
    with pytest.raises(ValueError, match="phy2log"):
        router.load([0, 0, 0, 0, 0, 0, 0, 0])  # experts 1..3 lost
    assert all(torch.equal(a, b) for a, b in zip(router.tables, before, strict=True))
    new_row = [3, 2, 1, 0, 0, 1, 2, 3]
    router.load(new_row)
    assert [t.data_ptr() for t in router.tables] == pointers
    fresh = ReplicaRouter(new_row, NUM_EXPERTS, rank=1, num_ranks=NUM_RANKS, routing="spread")
    assert all(torch.equal(a, b) for a, b in zip(router.tables, fresh.tables, strict=True))


HIDDEN, INTERMEDIATE, TOKENS = 8, 4, 6


def _spreading_worker(rank: int, world_size: int) -> None:
    # Every token picks experts 0 and 1 (router rows aligned with the all-positive inputs), so
    # each rank's tokens of an expert cover every residue modulo its replica count equally and
    # the spreading split is exact. Layer 0 routes fixed, layer 1 spreads; same placement.
    plan = Plan.from_phy2log([ROW, ROW], NUM_EXPERTS)
    heat = HeatRecorder(plan, collection_interval=1)
    gen = torch.Generator().manual_seed(0)
    router_weight = torch.zeros(NUM_EXPERTS, HIDDEN)
    router_weight[0], router_weight[1] = 3.0, 2.0
    w1 = [torch.randn(HIDDEN, 2 * INTERMEDIATE, generator=gen) for _ in range(NUM_EXPERTS)]
    w2 = [torch.randn(INTERMEDIATE, HIDDEN, generator=gen) for _ in range(NUM_EXPERTS)]
    layers = [
        EplbMoE.from_logical_weights(router_weight, w1, w2, plan, top_k=2, moe_layer_idx=layer,
                                     heat=heat, routing=routing)
        for layer, routing in enumerate(("fixed", "spread"))
    ]  # fmt: skip
    x = torch.rand(TOKENS, HIDDEN, generator=torch.Generator().manual_seed(rank)) + 0.1
    by_source = torch.zeros(world_size, 2, NUM_EXPERTS, dtype=torch.int64)  # [D, L, N]
    for layer_idx, layer in enumerate(layers):
        logical = torch.topk(x @ router_weight.T, 2, dim=-1).indices
        by_source[rank, layer_idx] = torch.bincount(logical.reshape(-1), minlength=NUM_EXPERTS)
        layer(x)
    window = heat.step()
    dist.all_reduce(by_source)
    assert window is not None
    np.testing.assert_array_equal(window.counts[0], by_source.sum(dim=0).numpy())
    for layer_idx, routing in enumerate(("fixed", "spread")):
        predicted = rank_loads_under_routing(plan, by_source.numpy(), world_size, routing, by_source=True)
        np.testing.assert_array_equal(window.rank_load[layer_idx], predicted[layer_idx], err_msg=routing)
    # Spreading moves rank 3's tokens of expert 0 from one replica to all three.
    assert window.rank_load[0].tolist() != window.rank_load[1].tolist()
    assert window.rank_load[1].tolist() == [20, 8, 8, 12]


def test_spreading_changes_the_measured_rank_loads_as_the_simulator_predicts() -> None:
    warm_operator()
    run_on_ranks(_spreading_worker, NUM_RANKS)
