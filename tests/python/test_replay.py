"""Replay semantics: plans come from the past window only, are scored on the steps that follow,
and the reported moves, layers and PAR agree with the plans made."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import numpy as np
import pytest

from eplb_native.plan import Plan, count_weight_copies, default_placement, evaluate
from eplb_native.policies import rebalance_experts
from eplb_native.sim.replay import STATIC, ReplaySettings, replay

SETTINGS = ReplaySettings(num_ranks=2, num_redundant_experts=2, interval=4, num_threads=1)


@pytest.fixture
def trace() -> np.ndarray:
    """float64 [T=13, L=2, N=6]: expert 0 hot in layer 0, expert 5 hot in layer 1, with noise."""
    rng = np.random.default_rng(11)
    base = np.array([[40, 5, 5, 5, 5, 5], [3, 3, 3, 3, 3, 30]], dtype=np.float64)
    return rng.poisson(base, size=(13, 2, 6)).astype(np.float64)


class Spy:
    """Calls the real planner and remembers what it was given and what it returned."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, load: np.ndarray, **kwargs: Any) -> Plan:
        plan = rebalance_experts(load, **kwargs)
        self.calls.append({"load": load, **kwargs, "plan": plan})
        return plan


def test_each_plan_sees_only_the_window_before_it(trace: np.ndarray) -> None:
    spy = Spy()
    replay(trace, ["default_eplb"], SETTINGS, planner=spy)
    assert len(spy.calls) == 3  # re-plans at steps 4, 8, 12
    previous = default_placement(2, 6, 2, 2).phy2log
    for call, start in zip(spy.calls, (4, 8, 12), strict=True):
        window = trace[start - 4 : start]
        np.testing.assert_array_equal(call["load"], window.sum(axis=0))
        np.testing.assert_array_equal(call["history"], window)
        np.testing.assert_array_equal(call["current"], previous)
        assert call["policy"] == "default_eplb"
        assert call["num_ranks"] == 2
        assert call["num_replicas"] == 8
        previous = call["plan"].phy2log


def test_scores_are_out_of_sample_per_step_par(trace: np.ndarray) -> None:
    spy = Spy()
    result = replay(trace, ["default_eplb"], SETTINGS, planner=spy)
    run = result.policies["default_eplb"]
    assert run.par_steps.shape == (13 - 4,)
    plans = [call["plan"] for call in spy.calls]
    for offset, step in enumerate(range(4, 13)):
        plan = plans[(step - 4) // 4]
        want = evaluate(plan, trace[step], 2).par
        assert run.par_steps[offset] == pytest.approx(want), f"{step=}"
    window_stats = [
        evaluate(plan, trace[s : s + 4], 2) for plan, s in zip(plans, (4, 8, 12), strict=True)
    ]
    summary = run.summary()
    assert summary["par_aggregate"] == pytest.approx(
        np.mean([s.par_aggregate for s in window_stats])
    )
    assert summary["gap_to_lower_bound"] == pytest.approx(
        np.mean([s.gap.mean() for s in window_stats])
    )
    assert summary["par_p99"] >= summary["par_mean"]


def test_static_row_keeps_the_default_placement(trace: np.ndarray) -> None:
    result = replay(trace, ["default_eplb"], SETTINGS)
    static = result.policies[STATIC]
    initial = default_placement(2, 6, 2, 2)
    np.testing.assert_array_equal(static.final_plan.phy2log, initial.phy2log)
    want = [evaluate(initial, trace[step], 2).par for step in range(4, 13)]
    np.testing.assert_allclose(static.par_steps, want)
    summary = static.summary()
    assert summary["weight_copies_per_rebalance"] == 0.0
    assert summary["layers_updated"] == 0
    assert list(result.policies) == [STATIC, "default_eplb"]


def test_moves_and_layers_updated_match_the_plans(trace: np.ndarray) -> None:
    spy = Spy()
    result = replay(trace, ["swift_balancer"], SETTINGS, planner=spy)
    run = result.policies["swift_balancer"]
    plans = [default_placement(2, 6, 2, 2)] + [call["plan"] for call in spy.calls]
    want_copies = [count_weight_copies(old, new, 2) for old, new in pairwise(plans)]
    want_layers = [
        int(np.any(old.phy2log != new.phy2log, axis=1).sum()) for old, new in pairwise(plans)
    ]
    np.testing.assert_array_equal(run.weight_copies, want_copies)
    np.testing.assert_array_equal(run.layers_updated, want_layers)
    assert run.summary()["weight_copies_per_rebalance"] == pytest.approx(np.mean(want_copies))
    assert run.summary()["layers_updated"] == sum(want_layers)
    assert run.plan_ms.shape == (3,)
    assert np.all(run.plan_ms >= 0)


def test_rebalancing_beats_the_static_placement_on_a_skewed_trace(trace: np.ndarray) -> None:
    result = replay(trace, ["default_eplb"], SETTINGS).summary()
    assert result["default_eplb"]["par_mean"] < result[STATIC]["par_mean"]
    assert result["default_eplb"]["weight_copies_per_rebalance"] > 0


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"num_ranks": 0}, "num_ranks"),
        ({"interval": -1}, "interval"),
        ({"num_redundant_experts": -2}, "num_redundant_experts"),
        ({"num_threads": True}, "num_threads"),
    ],
)
def test_settings_reject_bad_values(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        ReplaySettings(**changes)


def test_trace_shorter_than_one_interval_is_rejected(trace: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"interval: the trace has 4 steps"):
        replay(trace[:4], ["default_eplb"], SETTINGS)


def test_slot_count_not_divisible_by_ranks_is_rejected(trace: np.ndarray) -> None:
    with pytest.raises(ValueError, match="num_redundant_experts"):
        replay(
            trace,
            ["default_eplb"],
            ReplaySettings(num_ranks=4, num_redundant_experts=1, interval=4),
        )
