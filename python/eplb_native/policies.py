"""Placement policies by name: ``rebalance_experts`` (DeepSeek EPLB's call) and the stateful
``EplbPolicy`` the runtime uses (vllm-ascend's ``rebalance`` interface).

Names: ``L`` layers, ``N`` logical experts, ``D`` ranks, ``S`` slots per rank, ``P = D * S``
physical slots, ``T`` steps or episodes.
"""

from __future__ import annotations

import importlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from eplb_native import _core
from eplb_native.config import POLICY_NAMES
from eplb_native.flashlb import FlashLBOptions, PlannedBalance, plan_flashlb, select_layers
from eplb_native.plan import (
    FloatArray,
    IntArray,
    Plan,
    _as_int_array,
    _check_positive_int,
    check_history,
    check_load,
    count_weight_copies,
    evaluate,
    expert_load_from_slot_load,
    placement_violations,
    rank_loads,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SwiftBalancerOptions:
    """Knobs of ``swift_balancer``.

    Attributes:
        max_moves_per_layer: weight copies allowed per layer (slots whose new expert was not on
            that rank before, as ``count_weight_copies`` counts them); >= 0.
    """

    max_moves_per_layer: int = 32

    def __post_init__(self) -> None:
        value = self.max_moves_per_layer
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            msg = f"max_moves_per_layer: expected an integer >= 0, got {value!r}"
            raise ValueError(msg)


class PolicyFn(Protocol):
    """What a registered policy is: validated inputs in, a Plan out.

    Args:
        load: float64 [L, N], tokens per logical expert (checked by ``check_load``).
        num_replicas: P; num_groups: G; num_nodes: H; num_ranks: D (checked by the core).
        current: int64 [L, P] phy2log of the current placement, or None.
        history: int64 or float64 [T, L, N] past loads (from ``check_history``), or None.
        num_threads: planner threads (0: all cores).
        seed: seed for randomised policies (>= 0).
        options: the policy's options dataclass, or None for its defaults.

    Returns:
        Plan with L layers and P physical slots.
    """

    def __call__(
        self,
        load: FloatArray,
        num_replicas: int,
        num_groups: int,
        num_nodes: int,
        num_ranks: int,
        *,
        current: IntArray | None,
        history: IntArray | FloatArray | None,
        num_threads: int,
        seed: int,
        options: Any,
    ) -> Plan: ...


def _core_policy(name: str, options_type: type | None) -> PolicyFn:
    """A PolicyFn running the C++ policy ``name``; ``options`` must be ``options_type`` or None."""

    def run(
        load: FloatArray,
        num_replicas: int,
        num_groups: int,
        num_nodes: int,
        num_ranks: int,
        *,
        current: IntArray | None,
        history: IntArray | FloatArray | None,
        num_threads: int,
        seed: int,
        options: Any,
    ) -> Plan:
        del history  # these policies plan from the aggregated load only
        if options is not None and (options_type is None or not isinstance(options, options_type)):
            expected = options_type.__name__ if options_type else "None (no options)"
            msg = f"options: {name} takes {expected}, got {type(options).__name__}"
            raise ValueError(msg)
        swift = options if isinstance(options, SwiftBalancerOptions) else SwiftBalancerOptions()
        max_moves = swift.max_moves_per_layer
        phy2log, log2phy, logcnt = _core.rebalance_experts(
            name, load, num_replicas, num_groups, num_nodes, num_ranks,
            current=current, num_threads=num_threads, seed=seed, max_moves_per_layer=max_moves,
        )  # fmt: skip
        return Plan(phy2log, log2phy, logcnt)

    return run


#: Registry name -> policy; the keys are exactly config.POLICY_NAMES (vLLM's assertion).
POLICIES: dict[str, PolicyFn] = {
    "random": _core_policy("random", None),
    "default_eplb": _core_policy("default_eplb", None),
    "swift_balancer": _core_policy("swift_balancer", SwiftBalancerOptions),
    "flashlb": plan_flashlb,
}
assert set(POLICIES) == set(POLICY_NAMES), "registry keys must equal config.POLICY_NAMES"


def _is_tensor(values: Any) -> bool:
    """Whether ``values`` is a torch tensor (duck-typed: torch is never imported here)."""
    return hasattr(values, "detach") and hasattr(values, "cpu")


def _as_numpy(values: Any) -> Any:
    """numpy view of a torch tensor, else unchanged."""
    return values.detach().cpu().numpy() if _is_tensor(values) else values


def _as_torch(plan: Plan) -> Plan:
    """The plan with torch.int64 CPU tensors in place of its arrays (sharing their memory);
    called only when the caller passed a tensor, so torch is already imported."""
    torch = importlib.import_module("torch")
    return Plan(*(torch.from_numpy(array) for array in plan))


def _policy_fn(policy: str) -> PolicyFn:
    if policy not in POLICIES:
        msg = f"policy: unknown policy {policy!r}; valid policies: {', '.join(POLICY_NAMES)}"
        raise ValueError(msg)
    return POLICIES[policy]


def _check_nonnegative_int(value: object, field: str, upper: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        msg = f"{field}: expected an integer >= 0, got {value!r}"
        raise ValueError(msg)
    if upper is not None and value >= upper:
        msg = f"{field}: expected an integer < {upper}, got {value!r}"
        raise ValueError(msg)
    return int(value)


def rebalance_experts(
    load: npt.ArrayLike,
    num_replicas: int,
    num_groups: int,
    num_nodes: int,
    num_ranks: int | None = None,
    *,
    num_gpus: int | None = None,
    policy: str = "default_eplb",
    current: Plan | npt.ArrayLike | None = None,
    history: npt.ArrayLike | None = None,
    num_threads: int = 0,
    seed: int = 0,
    options: Any = None,
) -> Plan:
    """Plans where each layer's experts go; a drop-in for DeepSeek EPLB's call.

    ``phy2log, log2phy, logcnt = rebalance_experts(weight, num_replicas, num_groups,
    num_nodes, num_gpus)`` works unchanged (the fifth positional is ``num_ranks``;
    ``num_gpus=`` is its alias). Given a torch tensor, it returns torch.int64 CPU tensors, as
    DeepSeek EPLB does; given anything else, numpy arrays.

    Two modes. Without ``current``, ``default_eplb`` is DeepSeek EPLB's algorithm with its
    output (DeepSeek parity: a rank may hold two replicas of one expert). Given ``current``
    (the table in force), every policy plans slot-stable: no rank holds two replicas of one
    expert, and each expert that stays on a rank keeps its slot (the rules vllm-ascend's worker
    checks before applying a table).

    Args:
        load: float [L, N] tokens per logical expert (numpy array, array-like or torch tensor).
        num_replicas: P, physical slots per layer (a multiple of D, >= N).
        num_groups: G expert groups (divides N); hierarchical planning when H divides G.
        num_nodes: H nodes (divides D).
        num_ranks: D ranks; exactly one of ``num_ranks`` / ``num_gpus``.
        policy: a name in ``config.POLICY_NAMES``.
        current: the table in force, Plan or int phy2log [L, P]; required by swift_balancer.
            -1 marks an empty slot (vLLM's elastic expert parallelism) for the policies that
            only align to it: default_eplb, random, and flashlb without incremental mode.
        history: int or float [T, L, N] past loads for policies that use them (flashlb).
        num_threads: planner threads, 0 for all cores; the plan is the same for any value.
        seed: seed of randomised policies (0 <= seed < 2**64).
        options: the policy's options dataclass (e.g. ``SwiftBalancerOptions``), or None.

    Returns:
        Plan: phy2log int64 [L, P], log2phy int64 [L, N, max_replicas] (-1 padded),
        logcnt int64 [L, N] (torch tensors when ``load`` is one).
    """
    if (num_ranks is None) == (num_gpus is None):
        msg = "num_ranks: give exactly one of num_ranks and num_gpus (its alias)"
        raise ValueError(msg)
    ranks = num_ranks if num_ranks is not None else num_gpus
    for value, field in (
        (num_replicas, "num_replicas"),
        (num_groups, "num_groups"),
        (num_nodes, "num_nodes"),
        (ranks, "num_ranks"),
    ):
        _check_positive_int(value, field)
    fn = _policy_fn(policy)
    expert_load = check_load(_as_numpy(load), "load")
    current_table = None
    if current is not None:
        current_table = _as_int_array(
            current.phy2log if isinstance(current, Plan) else _as_numpy(current), "current"
        )
    # Only flashlb reads the history, and its C++ core scans the values (naming "history").
    history_array = None if history is None else check_history(_as_numpy(history), expert_load.shape)
    threads = _check_nonnegative_int(num_threads, "num_threads", upper=2**31)
    seed_value = _check_nonnegative_int(seed, "seed", upper=2**64)
    start = time.perf_counter()
    plan = fn(
        expert_load, int(num_replicas), int(num_groups), int(num_nodes), int(ranks),  # type: ignore[arg-type]
        current=current_table, history=history_array, num_threads=threads, seed=seed_value,
        options=options,
    )  # fmt: skip
    elapsed_ms = 1e3 * (time.perf_counter() - start)
    if logger.isEnabledFor(logging.INFO):
        _log_rebalance(policy, plan, expert_load, current_table, int(ranks), elapsed_ms)  # type: ignore[arg-type]
    return _as_torch(plan) if _is_tensor(load) else plan


def _log_rebalance(
    policy: str,
    plan: Plan,
    load: FloatArray,
    current: IntArray | None,
    num_ranks: int,
    elapsed_ms: float,
) -> None:
    """One INFO line: PAR (before when ``current`` is given) and after, gap, weight copies, ms."""
    after = evaluate(plan, load, num_ranks)
    line = f"{policy}: {plan.num_layers} layers, PAR {after.par:.4f}, gap {float(after.gap.mean()):.4f}"
    if current is not None:
        copies = count_weight_copies(current, plan, num_ranks)
        before = "-"  # no PAR for a table with empty slots or missing experts
        if all(np.unique(row[row >= 0]).size == plan.num_experts for row in current):
            old_plan = Plan.from_phy2log(current, plan.num_experts)
            before = f"{evaluate(old_plan, load, num_ranks).par:.4f}"
        line = f"{policy}: {plan.num_layers} layers, PAR {before} -> {after.par:.4f}, gap {float(after.gap.mean()):.4f}, {copies} weight copies"
    logger.info("%s, %.2f ms", line, elapsed_ms)


class EplbPolicy:
    """A named policy with fixed topology knobs, called by the runtime on placement tables.

    Example::

        policy = make_policy("swift_balancer", options=SwiftBalancerOptions(max_moves_per_layer=4))
        table = default_placement(2, 8, 4, 4).table(4)          # int64 [L=2, D=4, S=3]
        workload = np.ones((2, 4, 3)); workload[:, 0, :] = 10.0  # tokens per slot
        changed, layers, new_table = policy.rebalance(table, workload)

    Subclasses change which layers are applied by overriding ``select_layers``.
    """

    def __init__(
        self,
        name: str,
        num_groups: int = 1,
        num_nodes: int = 1,
        options: Any = None,
        num_threads: int = 0,
        seed: int = 0,
    ) -> None:
        _policy_fn(name)
        self.name = name
        self.num_groups = num_groups
        self.num_nodes = num_nodes
        self.options = options
        self.num_threads = num_threads
        self.seed = seed

    def rebalance(
        self, current_table: npt.ArrayLike, workload: npt.ArrayLike
    ) -> tuple[bool, IntArray, IntArray]:
        """Plans from the tokens each physical slot handled.

        Args:
            current_table: int [L, D, S], the logical expert in each slot now.
            workload: float [L, D, S] or [T, L, D, S] (T episodes, summed), tokens per slot.

        Returns:
            (changed, layers_by_priority int64 [k], new_table int64 [L, D, S]): the layers whose
            busiest rank gets lighter, largest improvement first; other layers keep their row.
            The new table keeps ``placement_violations``' rules against ``current_table``
            (checked: a break raises RuntimeError, a bug in the policy).
        """
        table = _as_int_array(_as_numpy(current_table), "current_table")
        if table.ndim != 3 or table.size == 0:
            msg = (
                f"current_table: expected a non-empty int array [L, D, S], got shape {table.shape}"
            )
            raise ValueError(msg)
        num_layers, num_ranks, num_slots = table.shape
        slots = np.ascontiguousarray(_as_numpy(workload), dtype=np.float64)  # reshapes: views
        if slots.ndim not in (3, 4) or slots.shape[-3:] != table.shape:
            msg = f"workload: expected [L, D, S] or [T, L, D, S] with [L, D, S] = {table.shape}, got {slots.shape}"
            raise ValueError(msg)
        check_load(slots.reshape(-1, slots.shape[-1]), "workload")
        phy2log = table.reshape(num_layers, num_ranks * num_slots)
        try:
            current = Plan.from_phy2log(phy2log)
        except ValueError as error:
            msg = f"current_table: {error}"
            raise ValueError(msg) from error
        expert_load = expert_load_from_slot_load(current, slots.reshape(*slots.shape[:-2], -1))
        history = expert_load if expert_load.ndim == 3 else None  # [T, L, N] episodes
        window_load = expert_load.sum(axis=0) if history is not None else expert_load
        proposal = rebalance_experts(
            window_load, num_ranks * num_slots, self.num_groups, self.num_nodes, num_ranks,
            policy=self.name, current=current, history=history, num_threads=self.num_threads,
            seed=self.seed, options=self.options,
        )  # fmt: skip
        layers = self.select_layers(current, proposal, expert_load, num_ranks)
        new_table = table.copy()
        new_table[layers] = proposal.table(num_ranks)[layers]
        broken = placement_violations(table, new_table)
        if broken:
            msg = f"{self.name}: the new table breaks the placement rules: {'; '.join(broken[:3])}"
            raise RuntimeError(msg)
        return bool(layers.size > 0), layers, new_table

    def select_layers(
        self, current: Plan, proposal: Plan, load: FloatArray, num_ranks: int
    ) -> IntArray:
        """Layers to apply, int64 [k]: those whose max rank load on ``load`` (float64 [L, N] or
        [T, L, N] episodes, summed) drops, largest drop first (ties: lower layer first)."""
        if load.ndim == 3:
            load = load.sum(axis=0)
        before = rank_loads(current, load, num_ranks).max(axis=-1)
        after = rank_loads(proposal, load, num_ranks).max(axis=-1)
        gain = before - after
        order = np.argsort(-gain, kind="stable")
        selected: IntArray = order[gain[order] > 0].astype(np.int64)
        return selected


class FlashLBPolicy(EplbPolicy):
    """FlashLB through the stateful interface, with layer-wise cherry-picking.

    It remembers each layer's balance (mean / peak rank load) when last planned and applies a
    layer only when its balance on the recent window fell below ``update_threshold_ratio`` x
    that, or below ``update_threshold_value``, and the new table improves it; best first, at
    most ``max_layers_per_update`` (see ``FlashLBOptions``).
    """

    def __init__(
        self,
        num_groups: int = 1,
        num_nodes: int = 1,
        options: FlashLBOptions | None = None,
        num_threads: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__("flashlb", num_groups, num_nodes, options or FlashLBOptions(), num_threads, seed)
        self.planned: PlannedBalance | None = None

    def select_layers(
        self, current: Plan, proposal: Plan, load: FloatArray, num_ranks: int
    ) -> IntArray:
        options: FlashLBOptions = self.options
        if self.planned is None or self.planned.balance.shape[0] != current.num_layers:
            self.planned = PlannedBalance.empty(current.num_layers)
        ratio, value = options.thresholds(num_ranks)
        layers, balance = select_layers(
            current, proposal, load, self.planned, num_ranks,
            threshold_ratio=ratio, threshold_value=value, max_layers=options.max_layers_per_update,
        )  # fmt: skip
        self.planned.record(layers, balance)
        return layers


def make_policy(
    name: str,
    num_groups: int = 1,
    num_nodes: int = 1,
    options: Any = None,
    num_threads: int = 0,
    seed: int = 0,
) -> EplbPolicy:
    """The stateful policy ``name`` (ValueError listing valid names when unknown)."""
    if name == "flashlb":
        return FlashLBPolicy(num_groups, num_nodes, options, num_threads, seed)
    return EplbPolicy(name, num_groups, num_nodes, options, num_threads, seed)


__all__ = [
    "POLICIES",
    "EplbPolicy",
    "FlashLBPolicy",
    "PolicyFn",
    "SwiftBalancerOptions",
    "make_policy",
    "rebalance_experts",
]
