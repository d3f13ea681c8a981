"""rebalance_experts, the policy registry and the stateful EplbPolicy."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eplb_native import config
from eplb_native.metrics import count_weight_copies
from eplb_native.plan import Plan, default_placement, rank_loads, validate_plan
from eplb_native.policies import SwiftBalancerOptions, make_policy, rebalance_experts

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "deepseek_readme.json"
FLASHLB_GOLDEN = GOLDEN.with_name("flashlb_published_example.json")


def test_deepseek_readme_example_exact() -> None:
    golden = json.loads(GOLDEN.read_text())
    assert golden["source"] == "deepseek-ai/EPLB README.md"
    phy2log, log2phy, logcnt = rebalance_experts(
        np.array(golden["weight"]), golden["num_replicas"], golden["num_groups"],
        golden["num_nodes"], golden["num_gpus"],
    )  # fmt: skip
    np.testing.assert_array_equal(phy2log, golden["phy2log"])
    assert logcnt.sum(axis=1).tolist() == [golden["num_replicas"]] * 2
    validate_plan(Plan(phy2log, log2phy, logcnt), golden["num_gpus"], allow_duplicate_on_rank=True)


def test_flashlb_published_example_max_load_232() -> None:
    load = np.array([[600, 560, 120, 120, 20, 10, 10, 10]], dtype=np.float64)
    plan = rebalance_experts(load, 16, 1, 1, num_gpus=8)
    assert rank_loads(plan, load, 8).max() == pytest.approx(232.0)


# DeepSeek EPLB's eplb.py on FlashLB's published example: rebalance_experts(torch.tensor([[600,
# 560, 120, 120, 20, 10, 10, 10]]), 16, 1, 1, 8) returns this phy2log (max rank load 232).
DEEPSEEK_ON_FLASHLB_EXAMPLE = [[0, 1, 2, 1, 3, 1, 0, 4, 0, 5, 0, 6, 0, 7, 1, 1]]


def test_each_policy_name_runs_its_own_algorithm() -> None:
    # One input that tells the four algorithms apart: FlashLB's published example on 8 ranks x 2
    # slots, starting from the default placement (max rank load 580).
    case = json.loads(FLASHLB_GOLDEN.read_text())
    load = np.array([case["load"]], dtype=np.float64)
    num_ranks = case["num_ranks"]
    num_physical = num_ranks * case["slots_per_rank"]
    current = default_placement(1, load.shape[1], num_ranks, num_physical - load.shape[1])

    def plan(name: str, seed: int = 0) -> Plan:
        return rebalance_experts(
            load, num_physical, 1, 1, num_ranks, policy=name, seed=seed,
            current=current if name == "swift_balancer" else None,
        )  # fmt: skip

    def max_load(candidate: Plan) -> float:
        return float(rank_loads(candidate, load, num_ranks).max())

    plans = {name: plan(name) for name in config.POLICY_NAMES}
    for name, candidate in plans.items():
        validate_plan(candidate, num_ranks, allow_duplicate_on_rank=name != "swift_balancer")
    assert plans["default_eplb"].phy2log.tolist() == DEEPSEEK_ON_FLASHLB_EXAMPLE
    assert max_load(plans["flashlb"]) == pytest.approx(case["optimal_max_rank_load"], rel=1e-12)
    assert max_load(plans["swift_balancer"]) < max_load(current) == 580
    # Only random depends on the seed.
    assert not np.array_equal(plan("random", seed=1).phy2log, plans["random"].phy2log)
    for name in ("default_eplb", "swift_balancer", "flashlb"):
        assert np.array_equal(plan(name, seed=1).phy2log, plans[name].phy2log), name


def test_torch_tensor_in_torch_tensors_out() -> None:
    torch = pytest.importorskip("torch")
    golden = json.loads(GOLDEN.read_text())
    phy2log, log2phy, logcnt = rebalance_experts(torch.tensor(golden["weight"]), 16, 4, 2, 8)
    for tensor in (phy2log, log2phy, logcnt):  # as DeepSeek EPLB returns them
        assert isinstance(tensor, torch.Tensor)
        assert tensor.dtype == torch.int64
        assert tensor.device == torch.device("cpu")
    assert phy2log.tolist() == golden["phy2log"]
    assert isinstance(rebalance_experts(np.array(golden["weight"]), 16, 4, 2, 8).phy2log, np.ndarray)


@st.composite
def problems(draw: st.DrawFn) -> tuple[np.ndarray, int, int, int, int]:
    num_nodes = draw(st.integers(1, 2))
    num_ranks = num_nodes * draw(st.integers(1, 4))
    num_groups = draw(st.sampled_from([1, 2, 4]))
    num_experts = num_groups * draw(st.integers(1, 4))
    slots = draw(st.integers(1, 4))
    num_replicas = num_ranks * max(slots, -(-num_experts // num_ranks))
    layers = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**32 - 1))
    load = (
        np.random.default_rng(seed).integers(0, 1000, size=(layers, num_experts)).astype(np.float64)
    )
    return load, num_replicas, num_groups, num_nodes, num_ranks


@settings(max_examples=40, deadline=None)
@given(
    problem=problems(), policy=st.sampled_from(["default_eplb", "random"]), seed=st.integers(0, 99)
)
def test_valid_plans_and_thread_invariance(problem, policy, seed) -> None:  # type: ignore[no-untyped-def]
    load, num_replicas, num_groups, num_nodes, num_ranks = problem
    plans = [
        rebalance_experts(load, num_replicas, num_groups, num_nodes, num_ranks, policy=policy,
                          num_threads=threads, seed=seed)
        for threads in (1, 2, 4)
    ]  # fmt: skip
    # default_eplb keeps DeepSeek's output, which may put two replicas of one expert on a rank;
    # random does so only when unavoidable (more replicas than ranks for some expert).
    unavoidable = num_replicas > load.shape[1] * num_ranks
    validate_plan(
        plans[0], num_ranks, allow_duplicate_on_rank=policy == "default_eplb" or unavoidable
    )
    assert (plans[0].logcnt.sum(axis=1) == num_replicas).all()
    for other in plans[1:]:
        np.testing.assert_array_equal(other.phy2log, plans[0].phy2log)


@settings(max_examples=40, deadline=None)
@given(problem=problems(), budget=st.integers(0, 6), seed=st.integers(0, 99))
def test_swift_never_worse_and_within_budget(problem, budget, seed) -> None:  # type: ignore[no-untyped-def]
    load, num_replicas, num_groups, num_nodes, num_ranks = problem
    current = rebalance_experts(
        load, num_replicas, num_groups, num_nodes, num_ranks, policy="random", seed=seed
    )
    plans = [
        rebalance_experts(load, num_replicas, num_groups, num_nodes, num_ranks, policy="swift_balancer",
                          current=current, options=SwiftBalancerOptions(budget), num_threads=threads)
        for threads in (1, 2)
    ]  # fmt: skip
    plan = plans[0]
    np.testing.assert_array_equal(plans[1].phy2log, plan.phy2log)
    validate_plan(plan, num_ranks, allow_duplicate_on_rank=num_replicas > load.shape[1] * num_ranks)
    before = rank_loads(current, load, num_ranks).max(axis=-1)
    after = rank_loads(plan, load, num_ranks).max(axis=-1)
    assert (after <= before + 1e-9).all()
    for layer_idx in range(load.shape[0]):
        assert (
            count_weight_copies(current.phy2log[[layer_idx]], plan.phy2log[[layer_idx]], num_ranks)
            <= budget
        )


def test_swift_improves_a_skewed_layout() -> None:
    load = np.array([[100, 90, 5, 5, 1, 1, 1, 1]], dtype=np.float64)
    current = default_placement(1, 8, 4)  # rank 0 holds experts 0 and 1
    plan = rebalance_experts(load, 8, 1, 1, 4, policy="swift_balancer", current=current)
    assert rank_loads(plan, load, 4).max() == pytest.approx(100.0 + 1.0)


def test_stateful_policy_applies_only_improving_layers() -> None:
    policy = make_policy("swift_balancer", options=SwiftBalancerOptions(max_moves_per_layer=4))
    table = default_placement(3, 8, 4, 4).table(4)  # [3, 4, 3]
    workload = np.ones((2, 3, 4, 3))  # [T, L, D, S]
    workload[:, 0, 0, :] = 10.0  # layer 0: rank 0 hot
    workload[:, 2, 1, :] = 50.0  # layer 2: rank 1 much hotter
    changed, layers, new_table = policy.rebalance(table, workload)
    assert changed
    assert layers.dtype == np.int64
    assert layers.tolist() == [2, 0]  # layer 1 is balanced already; larger gain first
    np.testing.assert_array_equal(new_table[1], table[1])
    assert not np.array_equal(new_table[2], table[2])
    unchanged, none, same = make_policy("swift_balancer").rebalance(table, np.ones((3, 4, 3)))
    assert not unchanged
    assert none.size == 0
    np.testing.assert_array_equal(same, table)


def test_swift_reallots_replicas_when_swaps_cannot_help() -> None:
    # Expert 0 carries almost everything; only a second replica of it (taken from expert 3,
    # which has two) can bring the busiest rank below 100.
    load = np.array([[100, 1, 1, 1]], dtype=np.float64)
    current = np.array([[0, 1, 2, 3, 2, 3]])
    plan = rebalance_experts(load, 6, 1, 1, 2, policy="swift_balancer", current=current)
    assert plan.logcnt[0, 0] == 2
    assert rank_loads(plan, load, 2).max() < 60.0
    assert count_weight_copies(current, plan, 2) <= SwiftBalancerOptions().max_moves_per_layer


def test_one_info_line_per_call(caplog: pytest.LogCaptureFixture) -> None:
    load = np.array([[100, 90, 5, 5, 1, 1, 1, 1]], dtype=np.float64)
    current = default_placement(1, 8, 4)
    with caplog.at_level(logging.INFO, logger="eplb_native.policies"):
        rebalance_experts(load, 8, 1, 1, 4, policy="swift_balancer", current=current)
    (record,) = caplog.records
    assert "PAR" in record.getMessage()
    assert "->" in record.getMessage()
    assert "weight copies" in record.getMessage()
    assert record.getMessage().endswith(" ms")
