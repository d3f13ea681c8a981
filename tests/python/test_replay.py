"""Replay semantics: each policy re-plans through ``planning.plan`` from the past window only (in
expert space, per step), its tables are scored on the steps that follow, and the reported moves,
layers and PAR agree with the tables it returned."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import numpy as np
import pytest

from eplb_native.flashlb import FlashLBOptions
from eplb_native.metrics import count_weight_copies, evaluate, peak_to_average
from eplb_native.plan import Plan, default_placement
from eplb_native.planning import PlanOutcome, PlanRequest, SwiftBalancerOptions, plan
from eplb_native.routing import rank_loads_under_routing
from eplb_native.sim.replay import STATIC, PolicySpec, ReplaySettings, replay

SETTINGS = ReplaySettings(num_ranks=2, num_redundant_experts=2, interval=4, num_threads=1)


@pytest.fixture
def trace() -> np.ndarray:
    """float64 [T=13, L=2, N=6]: expert 0 hot in layer 0, expert 5 hot in layer 1, with noise."""
    rng = np.random.default_rng(11)
    base = np.array([[40, 5, 5, 5, 5, 5], [3, 3, 3, 3, 3, 30]], dtype=np.float64)
    return rng.poisson(base, size=(13, 2, 6)).astype(np.float64)


class SpyPlanner:
    """``planning.plan``, recording every request and outcome."""

    def __init__(self) -> None:
        self.calls: list[tuple[PlanRequest, PlanOutcome]] = []

    def __call__(self, request: PlanRequest) -> PlanOutcome:
        outcome = plan(request)
        self.calls.append((request, outcome))
        return outcome

    def plans(self) -> list[Plan]:
        """The placements in force: the default one, then each re-plan's new table."""
        tables = [default_placement(2, 6, 2, 2).phy2log]
        tables += [outcome.new_phy2log for _, outcome in self.calls]
        return [Plan.from_phy2log(table, 6) for table in tables]


def test_each_replan_sees_only_the_window_before_it(trace: np.ndarray) -> None:
    spy = SpyPlanner()
    replay(trace, ["default_eplb"], SETTINGS, planner=spy)
    assert len(spy.calls) == 3  # re-plans at steps 4, 8, 12
    plans = spy.plans()
    for (request, _), start, previous in zip(spy.calls, (4, 8, 12), plans, strict=False):
        np.testing.assert_array_equal(request.window, trace[start - 4 : start])  # per step
        np.testing.assert_array_equal(request.current, previous.phy2log)
        assert (request.num_ranks, request.num_threads, request.seed, request.num_groups) == (2, 1, 0, 1)


def test_flashlb_gets_its_options_and_its_memory_across_windows(trace: np.ndarray) -> None:
    spy = SpyPlanner()
    options = FlashLBOptions(episode_steps=2, update_threshold_value=1.0)
    replay(trace, ["default_eplb", "flashlb"], SETTINGS, options={"flashlb": options}, planner=spy)
    flashlb = [(request, outcome) for request, outcome in spy.calls if request.policy == "flashlb"]
    assert len(flashlb) == 3
    assert all(request.options is options for request, _ in flashlb)
    # The memory starts empty and then holds the balance each switched layer was planned with.
    memory = np.full(2, np.nan)
    for request, outcome in flashlb:
        assert request.planned_balance is not None
        np.testing.assert_array_equal(request.planned_balance, memory)
        memory[outcome.layers] = outcome.balance
    assert not np.isnan(memory).all(), "no layer was ever switched"


def test_on_window_follows_every_scored_window_of_every_row(trace: np.ndarray) -> None:
    seen: list[tuple[str, int, int]] = []
    spy = SpyPlanner()
    replay(
        trace, ["default_eplb", "swift_balancer"], SETTINGS, planner=spy,
        on_window=lambda label, window: seen.append((label, window, len(spy.calls))),
    )  # fmt: skip
    # Windows 0..2 of each row, static first; a policy's window is reported after its re-plan.
    assert [(label, window) for label, window, _ in seen] == [
        (label, window) for label in (STATIC, "default_eplb", "swift_balancer") for window in range(3)
    ]
    assert [calls for _, _, calls in seen] == [0, 0, 0, 1, 2, 3, 4, 5, 6]


def test_scores_are_out_of_sample_per_step_par(trace: np.ndarray) -> None:
    spy = SpyPlanner()
    result = replay(trace, ["default_eplb"], SETTINGS, planner=spy)
    run = result.policies["default_eplb"]
    assert run.par_steps.shape == (13 - 4,)
    plans = spy.plans()[1:]
    for offset, step in enumerate(range(4, 13)):
        plan = plans[(step - 4) // 4]
        want = evaluate(plan, trace[step], 2).par
        assert run.par_steps[offset] == pytest.approx(want), f"{step=}"
    np.testing.assert_allclose(
        run.par_windows, [run.par_steps[0:4].mean(), run.par_steps[4:8].mean(), run.par_steps[8]]
    )
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


def test_moves_and_layers_updated_match_the_tables(trace: np.ndarray) -> None:
    spy = SpyPlanner()
    result = replay(trace, ["swift_balancer"], SETTINGS, planner=spy)
    run = result.policies["swift_balancer"]
    plans = spy.plans()
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
    np.testing.assert_array_equal(run.final_plan.phy2log, plans[-1].phy2log)


def test_variants_of_one_policy_get_their_own_options_and_rows(trace: np.ndarray) -> None:
    frozen = PolicySpec("swift frozen", "swift_balancer", SwiftBalancerOptions(0))
    result = replay(trace, ["swift_balancer", frozen], SETTINGS)
    assert list(result.policies) == [STATIC, "swift_balancer", "swift frozen"]
    free, capped = result.policies["swift_balancer"], result.policies["swift frozen"]
    assert free.weight_copies.sum() > 0
    np.testing.assert_array_equal(capped.weight_copies, [0, 0, 0])
    np.testing.assert_allclose(capped.par_steps, result.policies[STATIC].par_steps)


@pytest.mark.parametrize("label", [STATIC, "swift_balancer"])
def test_duplicate_or_static_labels_are_rejected(trace: np.ndarray, label: str) -> None:
    with pytest.raises(ValueError, match="policies: labels"):
        replay(trace, ["swift_balancer", PolicySpec(label, "default_eplb")], SETTINGS)


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


def test_figure_gives_static_its_own_scale_and_keeps_legends_off_the_data(
    trace: np.ndarray,
) -> None:
    pytest.importorskip("matplotlib", reason="plots need matplotlib")
    from eplb_native.sim.plots import replay_figure

    result = replay(trace, ["default_eplb", "swift_balancer"], SETTINGS)
    figure = replay_figure(result, layer=1)
    try:
        static_axis, par_axis, *heatmaps = figure.axes[: 2 + len(result.policies)]
        assert len(heatmaps) == len(result.policies)
        drawn = {line.get_label(): line.get_ydata() for line in par_axis.get_lines()}
        assert set(drawn) >= {"default_eplb", "swift_balancer"}
        assert STATIC not in drawn  # the static row has the top axis to itself
        static_line = static_axis.get_lines()[0].get_ydata()
        np.testing.assert_array_equal(static_line, result.policies[STATIC].par_steps)
        figure.canvas.draw()
        renderer = figure.canvas.get_renderer()
        for axis in (static_axis, par_axis):
            legend_box = axis.get_legend().get_window_extent(renderer)
            assert legend_box.x0 >= axis.get_window_extent(renderer).x1  # right of the plot
    finally:
        import matplotlib.pyplot as plt

        plt.close(figure)


def test_routing_rows_score_the_tables_in_force_under_each_rule(trace: np.ndarray) -> None:
    spy = SpyPlanner()
    run = replay(trace, ["default_eplb"], SETTINGS, planner=spy).policies["default_eplb"]
    plans = spy.plans()
    for rule in ("fixed", "spread"):
        want = [rank_loads_under_routing(plans[window + 1], trace[start : start + 4], 2, rule)
                for window, start in enumerate((4, 8, 12))]  # fmt: skip
        np.testing.assert_allclose(run.routed_rank_load[rule], np.concatenate(want))
    rows = run.routing_summary()
    assert set(rows) == {"fixed", "spread"}
    par_steps = peak_to_average(run.routed_rank_load["fixed"]).mean(axis=-1)
    assert rows["fixed"]["par_mean"] == pytest.approx(par_steps.mean())
    assert rows["fixed"]["par_p99"] >= rows["fixed"]["par_mean"]
