"""Trace replay: re-plan with each policy as a server would and score the plans out of sample.

Semantics (one run per policy, all from the same trace ``load`` float64 [T, L, N]):

- the default placement (``default_placement``) is in force for steps ``0 .. interval - 1``;
- at every step ``t = interval, 2 * interval, ...`` (``t < T``) the policy plans from the window
  just seen, ``window = load[t - interval : t]``: ``load = window.sum(0)`` [L, N], ``history`` =
  the window's per-step heat [interval, L, N] (policies with episodes, FlashLB, fold it
  themselves: its ``options.episode_steps``), ``current`` = the placement in force [L, P];
- the new plan is then scored on the steps it serves, ``t .. t + interval - 1`` (out of sample:
  the plan never saw them).

Scores cover the served steps ``interval .. T - 1`` only (before the first re-plan every policy
runs the same default placement). A "static" row keeps the default placement throughout.

- per-step PAR: max rank load / mean rank load of a step, averaged over layers;
  ``par_mean`` and ``par_p99`` are its mean and 99th percentile over the served steps;
- ``par_aggregate``: PAR of each window's summed load under its plan, averaged over layers and
  windows; ``gap_to_lower_bound``: ``max rank load / lower bound - 1`` on the same sums
  (``evaluate``), averaged over layers and windows;
- ``weight_copies_per_rebalance``: mean of ``count_weight_copies(old, new)``;
  ``layers_updated``: layers whose table changed, summed over all rebalances;
  ``plan_ms``: mean wall time of one planning call (``time.perf_counter``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from eplb_native.plan import (
    FloatArray,
    Plan,
    check_load,
    count_weight_copies,
    default_placement,
    evaluate,
    rank_loads,
)

logger = logging.getLogger(__name__)

STATIC = "static"
"""Name of the baseline row that keeps the default placement (no rebalancing)."""

Planner = Callable[..., Plan]


@dataclass(frozen=True)
class ReplaySettings:
    """What the replay simulates.

    Attributes:
        num_ranks: D, expert-parallel ranks.
        num_redundant_experts: R, physical slots beyond the N logical experts (P = N + R, a
            multiple of D).
        interval: steps between re-plans (> 0); also the window each plan is made from.
        num_groups: expert groups passed to the policies (1: no group constraint).
        num_nodes: nodes passed to the policies.
        num_threads: planner threads (0: all cores).
        seed: seed passed to the policies.
    """

    num_ranks: int = 8
    num_redundant_experts: int = 8
    interval: int = 50
    num_groups: int = 1
    num_nodes: int = 1
    num_threads: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("num_ranks", "interval", "num_groups", "num_nodes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                msg = f"{name}: expected a positive integer, got {value!r}"
                raise ValueError(msg)
        for name in ("num_redundant_experts", "num_threads", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                msg = f"{name}: expected an integer >= 0, got {value!r}"
                raise ValueError(msg)


@dataclass
class PolicyReplay:
    """One policy's replay.

    Attributes:
        name: the policy (or ``STATIC``).
        par_steps: float64 [T - interval], per-step PAR (layer mean) of the served steps.
        rank_load: float64 [T - interval, L, D], tokens per rank at each served step.
        par_aggregate_windows: float64 [W], per window: PAR of the summed load, layer mean.
        gap_windows: float64 [W], per window: gap to the lower bound, layer mean.
        weight_copies: int64 [W], weight copies of each rebalance.
        layers_updated: int64 [W], layers whose table changed at each rebalance.
        plan_ms: float64 [W], planning wall time of each rebalance, milliseconds.
        final_plan: the placement in force at the end.
    """

    name: str
    par_steps: FloatArray
    rank_load: FloatArray
    par_aggregate_windows: FloatArray
    gap_windows: FloatArray
    weight_copies: npt.NDArray[np.int64]
    layers_updated: npt.NDArray[np.int64]
    plan_ms: FloatArray
    final_plan: Plan

    def summary(self) -> dict[str, float | int]:
        """The row of the results table / JSON (keys fixed by the ``--json`` schema)."""
        rebalanced = self.weight_copies.size > 0 and self.name != STATIC
        return {
            "par_mean": float(self.par_steps.mean()),
            "par_p99": float(np.percentile(self.par_steps, 99)),
            "par_aggregate": float(self.par_aggregate_windows.mean()),
            "gap_to_lower_bound": float(self.gap_windows.mean()),
            "weight_copies_per_rebalance": float(self.weight_copies.mean()) if rebalanced else 0.0,
            "layers_updated": int(self.layers_updated.sum()),
            "plan_ms": float(self.plan_ms.mean()) if rebalanced else 0.0,
        }


@dataclass
class ReplayResult:
    """All policies' replays of one trace.

    Attributes:
        settings: what was simulated.
        num_slots: S, physical slots per rank.
        first_step: the first served (scored) step, equal to ``settings.interval``.
        policies: name -> replay, in the order run (``STATIC`` first).
    """

    settings: ReplaySettings
    num_slots: int
    first_step: int
    policies: dict[str, PolicyReplay] = field(default_factory=dict)

    def summary(self) -> dict[str, dict[str, float | int]]:
        return {name: run.summary() for name, run in self.policies.items()}


def _step_par(rank_load: FloatArray) -> FloatArray:
    """Per-step PAR averaged over layers, float64 [w], from tokens per rank [w, L, D]."""
    mean = rank_load.mean(axis=-1)
    peak = rank_load.max(axis=-1)
    par = np.divide(peak, mean, out=np.ones_like(mean), where=mean > 0)  # [w, L]
    return np.asarray(par.mean(axis=-1), dtype=np.float64)


def replay(
    load: npt.ArrayLike,
    policies: Sequence[str],
    settings: ReplaySettings,
    *,
    planner: Planner | None = None,
    options: dict[str, Any] | None = None,
    on_rebalance: Callable[[str, int], None] | None = None,
) -> ReplayResult:
    """Replays ``load`` with each policy (see the module docstring for the semantics).

    Args:
        load: float [T, L, N], tokens per (step, layer, logical expert); T > interval.
        policies: policy names for ``planner`` (``STATIC`` is always added first).
        settings: ranks, redundancy, interval, threads, seed.
        planner: ``rebalance_experts``-compatible callable; default
            ``eplb_native.policies.rebalance_experts``.
        options: per-policy ``options=`` objects, by policy name.
        on_rebalance: called after each planning call with (policy, window index), e.g. to
            advance a progress bar.

    Returns:
        ReplayResult with one PolicyReplay per policy.
    """
    trace = check_load(load, "load", allow_steps=True)
    if trace.ndim != 3:
        msg = f"load: expected [steps, layers, experts], got shape {trace.shape}"
        raise ValueError(msg)
    num_steps, num_layers, num_experts = trace.shape
    if num_steps <= settings.interval:
        msg = (
            f"interval: the trace has {num_steps} steps; replay needs more than interval="
            f"{settings.interval} (the first interval runs the default placement)"
        )
        raise ValueError(msg)
    if planner is None:
        from eplb_native.policies import rebalance_experts

        planner = rebalance_experts
    initial = default_placement(
        num_layers, num_experts, settings.num_ranks, settings.num_redundant_experts
    )
    num_slots = initial.slots_per_rank(settings.num_ranks)
    result = ReplayResult(settings=settings, num_slots=num_slots, first_step=settings.interval)
    names = [STATIC, *[name for name in policies if name != STATIC]]
    for name in names:
        result.policies[name] = _replay_one(
            trace, name, initial, settings, planner, (options or {}).get(name), on_rebalance
        )
    return result


def _replay_one(
    trace: FloatArray,
    name: str,
    initial: Plan,
    settings: ReplaySettings,
    planner: Planner,
    policy_options: Any,
    on_rebalance: Callable[[str, int], None] | None,
) -> PolicyReplay:
    num_steps = trace.shape[0]
    starts = list(range(settings.interval, num_steps, settings.interval))
    plan = initial
    rank_load_parts, aggregate_par, gaps, copies, changed, plan_ms = [], [], [], [], [], []
    for window_idx, start in enumerate(starts):
        if name != STATIC:
            window = trace[start - settings.interval : start]  # [interval, L, N]
            begin = time.perf_counter()
            new_plan = planner(
                window.sum(axis=0),
                num_replicas=initial.num_physical,
                num_groups=settings.num_groups,
                num_nodes=settings.num_nodes,
                num_ranks=settings.num_ranks,
                policy=name,
                current=plan.phy2log,
                history=window,
                num_threads=settings.num_threads,
                seed=settings.seed,
                options=policy_options,
            )
            plan_ms.append((time.perf_counter() - begin) * 1e3)
            copies.append(count_weight_copies(plan, new_plan, settings.num_ranks))
            changed.append(int(np.any(plan.phy2log != new_plan.phy2log, axis=1).sum()))
            plan = new_plan
            if on_rebalance is not None:
                on_rebalance(name, window_idx)
        served = trace[start : start + settings.interval]  # [w, L, N]
        rank_load_parts.append(rank_loads(plan, served, settings.num_ranks))
        stats = evaluate(plan, served, settings.num_ranks)
        aggregate_par.append(stats.par_aggregate)
        gaps.append(float(stats.gap.mean()))
        logger.debug("%s window %d: par_aggregate %.4f", name, window_idx, stats.par_aggregate)
    rank_load = np.concatenate(rank_load_parts, axis=0)  # [T - interval, L, D]
    run = PolicyReplay(
        name=name,
        par_steps=_step_par(rank_load),
        rank_load=rank_load,
        par_aggregate_windows=np.asarray(aggregate_par, dtype=np.float64),
        gap_windows=np.asarray(gaps, dtype=np.float64),
        weight_copies=np.asarray(copies, dtype=np.int64),
        layers_updated=np.asarray(changed, dtype=np.int64),
        plan_ms=np.asarray(plan_ms, dtype=np.float64),
        final_plan=plan,
    )
    summary = run.summary()
    logger.info(
        "%s: par_mean %.4f, weight copies per rebalance %.1f, plan %.2f ms",
        name,
        summary["par_mean"],
        summary["weight_copies_per_rebalance"],
        summary["plan_ms"],
    )
    return run


__all__ = ["STATIC", "PolicyReplay", "ReplayResult", "ReplaySettings", "replay"]
