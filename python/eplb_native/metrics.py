"""Balance metrics of a placement on a load: peak-to-average ratio, the lower bound on the
best achievable max rank load, ``evaluate`` (PlanStats), and weight copies between placements."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from eplb_native import _core
from eplb_native.checks import (
    FloatArray,
    IntArray,
    as_float_array,
    check_load,
    check_positive_int,
)
from eplb_native.plan import Plan, check_plan, rank_loads


def lower_bound_max_load(load: npt.ArrayLike, num_physical: int, num_ranks: int) -> FloatArray:
    """A lower bound on the smallest achievable max rank load, float64 [...] for a load float
    [..., N] (tokens per expert; finite, >= 0) placed on ``num_physical`` slots over
    ``num_ranks`` ranks.

    The larger of (a) the mean rank load ``total / D`` and (b) the smallest possible largest
    per-replica load when the ``P`` replicas are allotted optimally (each expert 1..D replicas;
    greedy min-max allotment is exact for this). Any placement's busiest rank carries at least
    both. Computed by the C++ core (``max_load_lower_bound``, as the policies use it).
    """
    expert_load = as_float_array(load, "load")
    if expert_load.ndim < 1 or expert_load.size == 0:
        msg = f"load: expected a non-empty array [..., L, N], got shape {expert_load.shape}"
        raise ValueError(msg)
    rows = expert_load.reshape(-1, expert_load.shape[-1])
    bound = _core.max_load_lower_bound(
        rows, check_positive_int(num_physical, "num_physical"), check_positive_int(num_ranks, "num_ranks")
    )
    return bound.reshape(expert_load.shape[:-1])


@dataclass(frozen=True)
class PlanStats:
    """Balance of a plan on a load.

    Attributes:
        par: peak-to-average ratio (max rank load / mean rank load) averaged over layers; for a
            time series ``[T, L, N]``, the per-step PAR averaged over steps and layers.
        par_per_layer: float64 [L], as ``par`` per layer.
        par_aggregate: PAR of the load summed over the window, averaged over layers.
        max_load: float64 [L], busiest rank's tokens on the aggregated load.
        mean_load: float64 [L], mean rank tokens on the aggregated load.
        lower_bound: float64 [L], lower bound on the best achievable max load (aggregated).
        gap: float64 [L], ``max_load / lower_bound - 1`` (0 for layers with no load).
    """

    par: float
    par_per_layer: FloatArray
    par_aggregate: float
    max_load: FloatArray
    mean_load: FloatArray
    lower_bound: FloatArray
    gap: FloatArray


def peak_to_average(rank_load: npt.ArrayLike) -> FloatArray:
    """PAR, max / mean over the last axis (ranks) of float [..., D]: float64 [...]; 1.0 where
    there is no load."""
    rank_load = np.asarray(rank_load, dtype=np.float64)
    mean = rank_load.mean(axis=-1)
    peak = rank_load.max(axis=-1)
    return np.asarray(np.divide(peak, mean, out=np.ones_like(mean), where=mean > 0), dtype=np.float64)


def _plan_load(plan: Plan, load: npt.ArrayLike) -> FloatArray:
    """``load`` checked as float [L, N] or [T, L, N] for ``plan``'s L layers and N experts."""
    check_plan(plan)
    expert_load = check_load(load, "load", allow_steps=True)
    if expert_load.shape[-2:] != plan.logcnt.shape:
        msg = f"load: expected [..., L, N] = [..., {plan.num_layers}, {plan.num_experts}], got {expert_load.shape}"
        raise ValueError(msg)
    return expert_load


def mean_par(plan: Plan, load: npt.ArrayLike, num_ranks: int) -> float:
    """``evaluate(plan, load, num_ranks).par`` alone (no lower bound; cheap enough for a serving
    step): PAR (max / mean rank load) averaged over layers and, for [T, L, N], over steps."""
    return float(peak_to_average(rank_loads(plan, _plan_load(plan, load), num_ranks)).mean())


def evaluate(plan: Plan, load: npt.ArrayLike, num_ranks: int) -> PlanStats:
    """Balance of ``plan`` on ``load`` over ``num_ranks`` ranks.

    Args:
        plan: the placement, with L layers.
        load: float [L, N] (one window) or [T, L, N] (per step), tokens per logical expert.
        num_ranks: D.

    Returns:
        PlanStats; ``par`` is the mean over steps when ``load`` is [T, L, N].
    """
    expert_load = _plan_load(plan, load)
    per_rank = rank_loads(plan, expert_load, num_ranks)  # [(T,) L, D]
    par_steps = peak_to_average(per_rank)  # [(T,) L]
    par_per_layer = par_steps.mean(axis=0) if expert_load.ndim == 3 else par_steps
    aggregate = expert_load.sum(axis=0) if expert_load.ndim == 3 else expert_load
    aggregate_rank = rank_loads(plan, aggregate, num_ranks)  # [L, D]
    max_load = aggregate_rank.max(axis=-1)
    mean_load = aggregate_rank.mean(axis=-1)
    lower_bound = lower_bound_max_load(aggregate, plan.num_physical, num_ranks)
    gap = np.divide(max_load, lower_bound, out=np.ones_like(max_load), where=lower_bound > 0) - 1.0
    return PlanStats(
        par=float(par_per_layer.mean()),
        par_per_layer=par_per_layer,
        par_aggregate=float(peak_to_average(aggregate_rank).mean()),
        max_load=max_load,
        mean_load=mean_load,
        lower_bound=lower_bound,
        gap=gap,
    )


def count_weight_copies(old: Plan | npt.ArrayLike, new: Plan | npt.ArrayLike, num_ranks: int) -> int:
    """Weight copies needed to go from ``old`` to ``new``: slots whose new expert is not already
    on that rank in ``old`` (a local slot-to-slot copy costs no transfer and is not counted).

    Args:
        old, new: Plans, or phy2log int64 [L, P] tables of the same shape: expert ids, or -1 for
            an empty slot (it holds nothing in ``old`` and needs no copy in ``new``); other
            negative ids raise ValueError naming the table.
        num_ranks: D.
    """
    return int(weight_copies_per_layer(old, new, num_ranks).sum())


def weight_copies_per_layer(
    old: Plan | npt.ArrayLike, new: Plan | npt.ArrayLike, num_ranks: int
) -> IntArray:
    """As ``count_weight_copies``, per layer: int64 [L]. Counted, and the tables checked
    (integer dtype, [L, P], equal shapes, ids >= -1), by the C++ core (``weight_copies``, the
    count the policies' move budgets use)."""
    old_table = old.phy2log if isinstance(old, Plan) else old
    new_table = new.phy2log if isinstance(new, Plan) else new
    return _core.weight_copies_per_layer(old_table, new_table, check_positive_int(num_ranks, "num_ranks"))


__all__ = [
    "PlanStats",
    "count_weight_copies",
    "evaluate",
    "lower_bound_max_load",
    "mean_par",
    "peak_to_average",
    "weight_copies_per_layer",
]
