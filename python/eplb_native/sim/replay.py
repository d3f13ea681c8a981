"""Trace replay: re-plan with each policy as a server would and score the plans out of sample.

Semantics (one run per policy, all from the same trace ``load`` float64 [T, L, N]):

- the default placement (``default_placement``) is in force for steps ``0 .. interval - 1``;
- at every step ``t = interval, 2 * interval, ...`` (``t < T``) the policy re-plans the way the
  runtime does, with the same call: ``planning.plan`` on a ``PlanRequest`` holding the window
  just seen, ``load[t - interval : t]`` [interval, L, N] per step, the placement in force, the
  policy's options and its memory (FlashLB remembers each switched layer's balance across
  windows). The window stays per step: policies without episodes sum it, FlashLB folds it into
  episodes of its own ``FlashLBOptions.episode_steps`` (the CLI's ``--episode``). Only the
  layers ``plan`` selects are switched (their busiest rank gets lighter; FlashLB: only layers
  whose balance fell below its thresholds), the others keep their row. A policy from outside
  the package (an upstream implementation, say) is called at its vllm-ascend edge instead:
  ``rebalance(current_table [L, D, S], workload [interval, L, D, S])`` with the window's tokens
  per slot under the placement in force (each replica carrying ``load / logcnt``), and the
  whole table it returns is installed;
- the table in force is then scored on the steps it serves, ``t .. t + interval - 1`` (out of
  sample: the policy never saw them).

Scores cover the served steps ``interval .. T - 1`` only (before the first re-plan every policy
runs the same default placement). A "static" row keeps the default placement throughout.

Rank loads split each expert's tokens evenly over its replicas (what the policies plan for).
Each placement is also scored under the runtime's replica routing rules
(``eplb_native.routing``, each expert's tokens coming from the D ranks in equal parts):
``fixed`` (each rank sends an expert's tokens to one replica) and ``spread`` (a rank's own
replica first, the rest spread over the replicas); ``PolicyReplay.routing_summary``.

- per-step PAR: max rank load / mean rank load of a step, averaged over layers;
  ``par_mean`` and ``par_p99`` are its mean and 99th percentile over the served steps;
- ``par_aggregate``: PAR of each window's summed load under its plan, averaged over layers and
  windows; ``gap_to_lower_bound``: ``max rank load / lower bound - 1`` on the same sums
  (``evaluate``), averaged over layers and windows;
- ``weight_copies_per_rebalance``: mean of ``count_weight_copies(old, new)``;
  ``layers_updated``: layers whose table changed, summed over all rebalances;
  ``plan_ms``: mean wall time of one ``plan`` (or outside policy's ``rebalance``) call
  (``time.perf_counter``; building the request or the slot heat is not counted).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from eplb_native.checks import FloatArray, check_int, check_load, check_num_threads
from eplb_native.flashlb import PlannedBalance
from eplb_native.metrics import count_weight_copies, evaluate, peak_to_average
from eplb_native.plan import Plan, default_placement, rank_loads, slot_load_from_expert_load
from eplb_native.planning import PlanOutcome, PlanRequest, check_options, plan, policy_name
from eplb_native.routing import REPLICA_ROUTINGS, rank_loads_under_routing

logger = logging.getLogger(__name__)

STATIC = "static"
"""Name of the baseline row that keeps the default placement (no rebalancing)."""

Planner = Callable[[PlanRequest], PlanOutcome]
"""``planning.plan`` or anything shaped like it."""


@dataclass(frozen=True)
class PolicySpec:
    """One replayed policy: a registered policy name and its options, or a policy object from
    outside the package, and the row's label.

    Attributes:
        label: the row's name in the results (unique within a replay).
        policy: a name in ``POLICY_NAMES``, or an object with vllm-ascend's
            ``rebalance(current_table, workload) -> (changed, layers, new_table)`` (kept for the
            whole replay).
        options: the named policy's options dataclass (e.g. ``FlashLBOptions``), or None.
    """

    label: str
    policy: str | StatefulPolicy
    options: Any = None


class StatefulPolicy(Protocol):
    """vllm-ascend's policy interface: tables int [L, D, S], workload float [T, L, D, S]."""

    def rebalance(self, current_table: Any, workload: Any) -> tuple[Any, Any, Any]: ...


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
        num_threads: planner threads, at most the usable cores (0: all of them; see ``limits``).
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
            check_int(getattr(self, name), name, minimum=1)
        for name in ("num_redundant_experts", "seed"):
            check_int(getattr(self, name), name, minimum=0)
        check_num_threads(self.num_threads)


@dataclass
class PolicyReplay:
    """One policy's replay.

    Attributes:
        name: the policy (or ``STATIC``).
        par_steps: float64 [T - interval], per-step PAR (layer mean) of the served steps.
        par_windows: float64 [W], per window: mean of its steps' ``par_steps``.
        par_in_sample_windows: float64 [W], per window: mean per-step PAR (layer mean) of the
            table in force on the steps it was planned from (the ``interval`` steps before).
        rank_load: float64 [T - interval, L, D], tokens per rank at each served step.
        par_aggregate_windows: float64 [W], per window: PAR of the summed load, layer mean.
        gap_windows: float64 [W], per window: gap to the lower bound, layer mean.
        weight_copies: int64 [W], weight copies of each rebalance.
        layers_updated: int64 [W], layers whose table changed at each rebalance.
        plan_ms: float64 [W], planning wall time of each rebalance, milliseconds.
        final_plan: the placement in force at the end.
        routed_rank_load: routing rule (``fixed``, ``spread``) -> float64 [T - interval, L, D],
            tokens per rank at each served step under that rule.
        routed_par_aggregate_windows: routing rule -> float64 [W], per window: PAR of the
            summed load under that rule, layer mean.
    """

    name: str
    par_steps: FloatArray
    par_windows: FloatArray
    par_in_sample_windows: FloatArray
    rank_load: FloatArray
    par_aggregate_windows: FloatArray
    gap_windows: FloatArray
    weight_copies: npt.NDArray[np.int64]
    layers_updated: npt.NDArray[np.int64]
    plan_ms: FloatArray
    final_plan: Plan
    routed_rank_load: dict[str, FloatArray] = field(default_factory=dict)
    routed_par_aggregate_windows: dict[str, FloatArray] = field(default_factory=dict)

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

    def routing_summary(self) -> dict[str, dict[str, float]]:
        """Per routing rule: ``par_mean``, ``par_p99`` (per-step PAR, layer mean, over the served
        steps) and ``par_aggregate`` (as in ``summary``) under that rule."""
        rows = {}
        for rule, rank_load in self.routed_rank_load.items():
            par_steps = peak_to_average(rank_load).mean(axis=-1)
            rows[rule] = {
                "par_mean": float(par_steps.mean()),
                "par_p99": float(np.percentile(par_steps, 99)),
                "par_aggregate": float(self.routed_par_aggregate_windows[rule].mean()),
            }
        return rows


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

    def routing_summary(self) -> dict[str, dict[str, dict[str, float]]]:
        """Label -> routing rule -> its scores (``PolicyReplay.routing_summary``)."""
        return {name: run.routing_summary() for name, run in self.policies.items()}


def replay(
    load: npt.ArrayLike,
    policies: Sequence[str | PolicySpec],
    settings: ReplaySettings,
    *,
    options: dict[str, Any] | None = None,
    planner: Planner = plan,
    on_window: Callable[[str, int], None] | None = None,
) -> ReplayResult:
    """Replays ``load`` with each policy (see the module docstring for the semantics).

    Args:
        load: float [T, L, N], tokens per (step, layer, logical expert); T > interval.
        policies: policy names, or PolicySpecs for variants of one policy (other options, own
            label); ``STATIC`` is always added first.
        settings: ranks, redundancy, interval, threads, seed.
        options: ``options=`` objects of the policies given by name, by name.
        planner: the planning call (default ``planning.plan``), e.g. to record its requests.
        on_window: called after each scored window of every row (``STATIC`` first) with (label,
            window index), e.g. to advance a progress bar.

    Returns:
        ReplayResult with one PolicyReplay per label.
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
    specs = [
        spec if isinstance(spec, PolicySpec) else PolicySpec(spec, spec, (options or {}).get(spec))
        for spec in policies
    ]
    labels = [spec.label for spec in specs]
    if STATIC in labels or len(set(labels)) != len(labels):
        msg = f"policies: labels must be unique and not {STATIC!r}, got {labels}"
        raise ValueError(msg)
    for spec in specs:
        if isinstance(spec.policy, str):
            check_options(policy_name(spec.policy, "policies"), spec.options)
    initial = default_placement(
        num_layers, num_experts, settings.num_ranks, settings.num_redundant_experts
    )
    num_slots = initial.slots_per_rank(settings.num_ranks)
    result = ReplayResult(settings=settings, num_slots=num_slots, first_step=settings.interval)
    result.policies[STATIC] = _replay_one(trace, STATIC, None, initial, settings, on_window)
    for spec in specs:
        result.policies[spec.label] = _replay_one(
            trace, spec.label, spec, initial, settings, on_window, planner
        )
    return result


def _replay_one(
    trace: FloatArray,
    name: str,
    spec: PolicySpec | None,
    initial: Plan,
    settings: ReplaySettings,
    on_window: Callable[[str, int], None] | None,
    planner: Planner = plan,
) -> PolicyReplay:
    """One policy's replay (``spec`` None: the static row)."""
    num_steps = trace.shape[0]
    num_ranks = settings.num_ranks
    starts = list(range(settings.interval, num_steps, settings.interval))
    placement = initial
    memory = PlannedBalance.empty(initial.num_layers)
    rank_load_parts, aggregate_par, gaps, copies, changed, plan_ms = [], [], [], [], [], []
    in_sample = []
    routed_parts: dict[str, list[FloatArray]] = {rule: [] for rule in REPLICA_ROUTINGS}
    routed_aggregate: dict[str, list[float]] = {rule: [] for rule in REPLICA_ROUTINGS}
    for window_idx, start in enumerate(starts):
        window = trace[start - settings.interval : start]  # [interval, L, N]
        if spec is not None:
            if isinstance(spec.policy, str):
                request = PlanRequest(
                    window, num_ranks, spec.policy, spec.options, current=placement.phy2log,
                    num_groups=settings.num_groups, num_nodes=settings.num_nodes,
                    planned_balance=memory.balance.copy(), num_threads=settings.num_threads, seed=settings.seed,
                )  # fmt: skip
                begin = time.perf_counter()
                outcome = planner(request)
                plan_ms.append((time.perf_counter() - begin) * 1e3)
                memory.record(outcome.layers, outcome.balance)
                new_phy2log = outcome.new_phy2log
            else:
                table = placement.table(num_ranks)  # [L, D, S]
                workload = slot_load_from_expert_load(placement, window).reshape(window.shape[0], *table.shape)
                begin = time.perf_counter()
                _, _, new_table = spec.policy.rebalance(table, workload)
                plan_ms.append((time.perf_counter() - begin) * 1e3)
                new_phy2log = np.asarray(new_table, dtype=np.int64).reshape(placement.phy2log.shape)
            new_plan = Plan.from_phy2log(new_phy2log, placement.num_experts)
            copies.append(count_weight_copies(placement, new_plan, num_ranks))
            changed.append(int(np.any(placement.phy2log != new_plan.phy2log, axis=1).sum()))
            placement = new_plan
        in_sample.append(float(peak_to_average(rank_loads(placement, window, num_ranks)).mean()))
        served = trace[start : start + settings.interval]  # [w, L, N]
        rank_load_parts.append(rank_loads(placement, served, settings.num_ranks))
        stats = evaluate(placement, served, settings.num_ranks)
        for rule in REPLICA_ROUTINGS:
            routed_parts[rule].append(rank_loads_under_routing(placement, served, num_ranks, rule))
            summed = rank_loads_under_routing(placement, served.sum(axis=0), num_ranks, rule)
            routed_aggregate[rule].append(float(peak_to_average(summed).mean()))
        aggregate_par.append(stats.par_aggregate)
        gaps.append(float(stats.gap.mean()))
        logger.debug("%s window %d: par_aggregate %.4f", name, window_idx, stats.par_aggregate)
        if on_window is not None:
            on_window(name, window_idx)
    rank_load = np.concatenate(rank_load_parts, axis=0)  # [T - interval, L, D]
    par_steps = peak_to_average(rank_load).mean(axis=-1)  # [T - interval], layer mean
    window_ends = np.cumsum([part.shape[0] for part in rank_load_parts])[:-1]
    run = PolicyReplay(
        name=name,
        par_steps=par_steps,
        par_windows=np.array([part.mean() for part in np.split(par_steps, window_ends)]),
        par_in_sample_windows=np.asarray(in_sample, dtype=np.float64),
        rank_load=rank_load,
        par_aggregate_windows=np.asarray(aggregate_par, dtype=np.float64),
        gap_windows=np.asarray(gaps, dtype=np.float64),
        weight_copies=np.asarray(copies, dtype=np.int64),
        layers_updated=np.asarray(changed, dtype=np.int64),
        plan_ms=np.asarray(plan_ms, dtype=np.float64),
        final_plan=placement,
        routed_rank_load={rule: np.concatenate(parts, axis=0) for rule, parts in routed_parts.items()},
        routed_par_aggregate_windows={rule: np.asarray(v, dtype=np.float64) for rule, v in routed_aggregate.items()},
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


__all__ = [
    "STATIC",
    "PolicyReplay",
    "PolicySpec",
    "ReplayResult",
    "ReplaySettings",
    "StatefulPolicy",
    "replay",
]
