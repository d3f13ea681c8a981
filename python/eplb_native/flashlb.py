"""FlashLB: the planner call, its options, and the layer-wise cherry-picking of re-planned layers.

The planning itself runs in C++ (``eplb_native._core.plan_policy("flashlb", ...)``): per layer, a tree search
over how many redundant replicas each group of hot experts takes, each candidate placed by a
covariance-aware LPT on the profiling episodes (each replica to the rank of least risk, mean +
z * std of its summed episode loads) and scored on them (mean per-episode peak / mean rank
load); with one episode (an aggregate load), also a target-driven packing and swap refinement.
Then an alignment to the current table (Hungarian rank matching) so that experts stay where
they are.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from eplb_native import _core
from eplb_native.checks import (
    FloatArray,
    IntArray,
    check_history,
    check_int,
    check_load,
    check_num_threads,
    check_positive_int,
)
from eplb_native.plan import Plan

logger = logging.getLogger(__name__)


#: Rank counts from which the many-rank defaults of ``FlashLBOptions`` apply.
MANY_RANKS = 32


@dataclass(frozen=True)
class FlashLBOptions:
    """FlashLB settings; invalid values raise ValueError naming the field.

    The defaults were chosen by measurement in the serving loop of
    ``benchmarks/bench_serving_loop.py`` (re-plan every k steps from the last k, score the next
    k), against upstream vllm-ascend FlashLB: per-step episodes; a risk weight of 1.0 (the
    published 0.674 fits the per-step heat of the planning window less well); a smaller search
    on several episodes than the published one (as good on the next window, 1.7x faster);
    update thresholds and keep margin by rank count, as upstream's thresholds are.

    Example:
        >>> FlashLBOptions(max_depth=3).resolved(8).keep_margin
        0.003

    Attributes:
        z_score: weight of the deviation in a rank's risk ``mean + z * std`` (1.0: the 84th
            percentile of a normal load); in [0, 100].
        max_depth: groups of hot experts whose replica counts are searched one after another;
            None: 3 with several episodes, 4 (the published value) with one.
        width: candidate replica counts tried per group; None: 5 with several episodes, 8 (the
            published value) with one.
        episode_steps: history steps summed into one episode (1: per-step heat as is).
        max_episodes: episodes at most; a longer history merges runs of adjacent episodes.
        update_threshold_ratio: re-plan a layer whose balance fell below this fraction of its
            balance when last planned (0 < x <= 1); None: 0.92, or 0.95 below 32 ranks.
        update_threshold_value: re-plan a layer whose balance (mean / peak rank load) is below
            this (0 < x <= 1); None: 0.85, or 0.9 below 32 ranks.
        max_layers_per_update: layers changed per update at most; None: no cap.
        incremental: edit the current table (move only the replicas whose count changed and
            those the busiest rank sheds) instead of replacing it; needs ``current``.
        max_moves_per_layer: incremental mode's cap on weight copies per layer; None: no cap.
        keep_margin: with a current table, a rank that holds an expert now counts as lighter
            by this fraction of the mean rank load when a replica of that expert is placed, so
            near ties keep experts where they are (fewer weight copies); in [0, 1]; None: 0.01,
            or 0.003 below 32 ranks.
    """

    z_score: float = 1.0
    max_depth: int | None = None
    width: int | None = None
    episode_steps: int = 1
    max_episodes: int = 64
    update_threshold_ratio: float | None = None
    update_threshold_value: float | None = None
    max_layers_per_update: int | None = None
    incremental: bool = False
    max_moves_per_layer: int | None = None
    keep_margin: float | None = None

    def __post_init__(self) -> None:
        for name, upper in (("z_score", 100), ("keep_margin", 1)):
            value = getattr(self, name)
            if value is None and name == "keep_margin":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                msg = f"{name}: expected a number, got {value!r}"
                raise ValueError(msg)
            if not 0 <= value <= upper:  # NaN fails too
                msg = f"{name}: expected a value in [0, {upper}], got {value!r}"
                raise ValueError(msg)
        for name in ("episode_steps", "max_episodes"):
            check_int(getattr(self, name), name, minimum=1)
        for name in ("max_depth", "width", "max_layers_per_update"):
            if getattr(self, name) is not None:
                check_int(getattr(self, name), name, minimum=1)
        if self.max_moves_per_layer is not None:
            check_int(self.max_moves_per_layer, "max_moves_per_layer", minimum=0)
        for name in ("update_threshold_ratio", "update_threshold_value"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
                msg = f"{name}: expected a number in (0, 1], got {value!r}"
                raise ValueError(msg)
        if not isinstance(self.incremental, bool):
            msg = f"incremental: expected True or False, got {self.incremental!r}"
            raise ValueError(msg)

    def resolved(self, num_ranks: int) -> FlashLBOptions:
        """A copy whose None defaults are filled in for ``num_ranks`` ranks."""
        many = num_ranks >= MANY_RANKS
        ratio, value, margin = (0.92, 0.85, 0.01) if many else (0.95, 0.9, 0.003)
        return replace(
            self,
            update_threshold_ratio=_or(self.update_threshold_ratio, ratio),
            update_threshold_value=_or(self.update_threshold_value, value),
            keep_margin=_or(self.keep_margin, margin),
        )

    def core_options(self, num_ranks: int) -> dict[str, Any]:
        """The options the C++ FlashLB reads (``_core.plan_policy``), defaults resolved for
        ``num_ranks`` ranks."""
        opts = self.resolved(num_ranks)
        return {
            "z_score": float(opts.z_score),
            # 0: the core's size for the statistics (one episode or several).
            "max_depth": 0 if opts.max_depth is None else int(opts.max_depth),
            "width": 0 if opts.width is None else int(opts.width),
            "episode_steps": int(opts.episode_steps),
            "max_episodes": int(opts.max_episodes),
            "incremental": opts.incremental,
            "max_moves_per_layer": -1 if opts.max_moves_per_layer is None else int(opts.max_moves_per_layer),
            "keep_margin": float(_or(opts.keep_margin, 0.0)),
        }

    def thresholds(self, num_ranks: int) -> tuple[float, float]:
        """(update_threshold_ratio, update_threshold_value) in force on ``num_ranks`` ranks."""
        options = self.resolved(num_ranks)
        assert options.update_threshold_ratio is not None
        assert options.update_threshold_value is not None
        return options.update_threshold_ratio, options.update_threshold_value


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def _table_array(table: Plan | npt.ArrayLike, field_name: str) -> IntArray:
    """phy2log int64 [L, P] from a Plan, a [L, P] or a [L, D, S] table."""
    array = np.asarray(table.phy2log if isinstance(table, Plan) else table)
    if array.dtype.kind not in "iu":
        msg = f"{field_name}: expected an integer table of expert ids, got dtype {array.dtype}"
        raise ValueError(msg)
    if array.ndim == 3:
        array = array.reshape(array.shape[0], -1)
    if array.ndim != 2 or array.size == 0:
        msg = f"{field_name}: expected a non-empty [L, P] or [L, D, S] table, got shape {array.shape}"
        raise ValueError(msg)
    return np.ascontiguousarray(array, dtype=np.int64)


def plan_flashlb(
    load: npt.ArrayLike,
    num_replicas: int,
    num_groups: int,
    num_nodes: int,
    num_ranks: int,
    *,
    current: Plan | npt.ArrayLike | None = None,
    history: npt.ArrayLike | None = None,
    num_threads: int = 0,
    seed: int = 0,
    options: FlashLBOptions | None = None,
) -> Plan:
    """Plans all layers with FlashLB.

    Args:
        load: float [L, N], tokens per logical expert over the window (the statistics when
            ``history`` is None: one episode).
        num_replicas: P physical slots per layer (a multiple of ``num_ranks``, N <= P <= N * D).
        num_groups, num_nodes: validated like every policy's; FlashLB balances globally.
        num_ranks: D.
        current: the placement in service (Plan, phy2log int64 [L, P] or table [L, D, S]);
            near ties keep experts on their ranks (``options.keep_margin``), the plan is then
            aligned to it (ranks matched, experts kept in their slots), and the incremental
            mode edits it.
        history: int or float [T, L, N], tokens per expert per step (int64 counts are read
            in place, other dtypes as float64); split into episodes of
            ``options.episode_steps`` steps whose mean, deviation and covariance drive the plan.
        num_threads: planner threads, at most the usable cores (0: all of them); the plan is
            identical for any count.
        seed: accepted for the common policy signature; FlashLB draws no random numbers.
        options: FlashLBOptions (defaults when None).

    Returns:
        Plan with phy2log int64 [L, P], log2phy, logcnt.
    """
    del seed  # deterministic search: nothing to seed
    if options is not None and not isinstance(options, FlashLBOptions):
        msg = f"options: expected FlashLBOptions, got {type(options).__name__}"
        raise ValueError(msg)
    expert_load = check_load(load, "load")
    # Values (NaN, inf, negative) are scanned by the C++ core, which names "history" too.
    history_array = None if history is None else check_history(history, expert_load.shape)
    current_table = None if current is None else _table_array(current, "current")
    for value, name in (
        (num_replicas, "num_replicas"),
        (num_groups, "num_groups"),
        (num_nodes, "num_nodes"),
        (num_ranks, "num_ranks"),
    ):
        check_int(value, name, minimum=1)
    check_num_threads(num_threads)
    core_options = (FlashLBOptions() if options is None else options).core_options(int(num_ranks))
    return Plan.from_core(_core.plan_policy(
        "flashlb", expert_load, int(num_replicas), int(num_groups), int(num_nodes), int(num_ranks),
        current=current_table, history=history_array, num_threads=int(num_threads), options=core_options,
    ))  # fmt: skip


def layer_balance(table: Plan | npt.ArrayLike, load: npt.ArrayLike, num_ranks: int) -> FloatArray:
    """Balance of each layer: mean / peak rank load (1 / PAR, ``metrics.peak_to_average``),
    averaged over steps for a time series.

    Args:
        table: Plan, phy2log int64 [L, P] or table [L, D, S].
        load: float [L, N] or [T, L, N], tokens per logical expert.
        num_ranks: D.

    Returns:
        float64 [L] in (0, 1]; 1.0 for a step with no load.
    """
    expert_load = check_load(load, "load", allow_steps=True)
    return _balance(table, expert_load, num_ranks)


def _balance(
    table: Plan | npt.ArrayLike, expert_load: FloatArray, num_ranks: int, num_threads: int = 1
) -> FloatArray:
    """``layer_balance`` of a load already checked by ``check_load``: 1 / PAR, each step's in
    one core pass over the load (``_core.layer_balance``: numpy's
    ``1 / peak_to_average(rank_loads(...))`` bit for bit), on ``num_threads`` threads."""
    num_experts = expert_load.shape[-1]
    if isinstance(table, Plan) and table.num_experts == num_experts:
        plan = table
    else:
        plan = Plan.from_phy2log(_table_array(table, "table"), num_experts)
    steps = expert_load.reshape(-1, *expert_load.shape[-2:])  # [T, L, N], a view
    if steps.shape[1] != plan.num_layers:
        msg = f"load: expected [..., L, N] = [..., {plan.num_layers}, {num_experts}], got {expert_load.shape}"
        raise ValueError(msg)
    balance: FloatArray = _core.layer_balance(
        plan.core, steps, check_positive_int(num_ranks, "num_ranks"), num_threads
    )  # [T, L]
    per_layer: FloatArray = balance.mean(axis=0) if expert_load.ndim == 3 else balance[0]
    return per_layer


@dataclass
class PlannedBalance:
    """Per-layer balance each layer had when it was last planned (NaN: never planned).

    Example:
        >>> memory = PlannedBalance.empty(2)
        >>> memory.record(np.array([1]), np.array([0.97]))
        >>> memory.balance.tolist()
        [nan, 0.97]

    Attributes:
        balance: float64 [L], mean / peak rank load at planning time.
    """

    balance: FloatArray = field(default_factory=lambda: np.zeros(0))

    @classmethod
    def empty(cls, num_layers: int) -> PlannedBalance:
        check_int(num_layers, "num_layers", minimum=1)
        return cls(np.full(num_layers, np.nan))

    def record(self, layers: npt.ArrayLike, balance: npt.ArrayLike) -> None:
        """Stores ``balance`` float [len(layers)] for the re-planned ``layers`` int [k]."""
        layer_idx = np.asarray(layers, dtype=np.int64)
        self.balance[layer_idx] = np.asarray(balance, dtype=np.float64)


def select_layers(
    current_table: Plan | npt.ArrayLike,
    new_table: Plan | npt.ArrayLike,
    window_load: npt.ArrayLike,
    planned: PlannedBalance,
    num_ranks: int,
    *,
    threshold_ratio: float,
    threshold_value: float,
    max_layers: int | None = None,
    num_threads: int = 1,
) -> tuple[IntArray, FloatArray]:
    """Layer-wise cherry-picking: which layers to switch to ``new_table``, best first.

    A layer is due when its balance on the recent window under ``current_table`` dropped
    below ``threshold_ratio`` x its balance when last planned (a never-planned layer is
    compared with the threshold value only), or below ``threshold_value``. Of the due
    layers, those whose balance ``new_table`` improves are returned in order of decreasing
    improvement, at most ``max_layers``.

    Args:
        current_table, new_table: Plans, phy2log int64 [L, P] or tables [L, D, S].
        window_load: float [L, N] or [T, L, N], the recent window's tokens per expert.
        planned: balance of each layer when last planned.
        num_ranks: D.
        threshold_ratio, threshold_value: as in FlashLBOptions (see ``thresholds``).
        max_layers: cap on the layers returned; None: no cap.
        num_threads: threads of the balance computation (0: all cores); the result is the
            same for any count.

    Returns:
        (layers int64 [k], new balance float64 [k] of those layers, to ``planned.record``).
    """
    expert_load = check_load(window_load, "load", allow_steps=True)  # checked once for both
    check_num_threads(num_threads)
    current_balance = _balance(current_table, expert_load, num_ranks, num_threads)
    new_balance = _balance(new_table, expert_load, num_ranks, num_threads)
    due = _due_layers(current_balance, planned, threshold_ratio, threshold_value)
    return _by_improvement(due, current_balance[due], new_balance[due], max_layers)


def _due_layers(
    current_balance: FloatArray, planned: PlannedBalance, threshold_ratio: float, threshold_value: float
) -> IntArray:
    """The layers due for an update, int64 [k] ascending: balance ``current_balance`` float64
    [L] (under the table in force, on the recent window) below ``threshold_ratio`` x the
    layer's balance when last planned, or below ``threshold_value``."""
    if planned.balance.shape != current_balance.shape:
        msg = f"planned: expected {current_balance.shape[0]} layers, got {planned.balance.shape}"
        raise ValueError(msg)
    with np.errstate(invalid="ignore"):
        dropped = current_balance < threshold_ratio * planned.balance  # NaN compares False
    due: IntArray = np.flatnonzero(dropped | (current_balance < threshold_value)).astype(np.int64)
    return due


def _by_improvement(
    layers: IntArray, current_balance: FloatArray, new_balance: FloatArray, max_layers: int | None
) -> tuple[IntArray, FloatArray]:
    """Of ``layers`` int64 [k] ascending, with their balances float64 [k] under the table in
    force and under the proposal, those the proposal improves: largest improvement first (ties:
    lower layer first), at most ``max_layers``; and their new balances float64 [<= k]."""
    if max_layers is not None:
        check_int(max_layers, "max_layers", minimum=1)
    improvement = new_balance - current_balance
    improves = np.flatnonzero(improvement > 0)
    order = improves[np.argsort(-improvement[improves], kind="stable")][:max_layers]
    logger.debug("flashlb: %d layers due, %d improve, %d selected", layers.size, improves.size, order.size)
    return layers[order], new_balance[order]
