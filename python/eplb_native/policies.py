"""The two edges over the one planning call (``eplb_native.planning``): DeepSeek EPLB's
``rebalance_experts`` and the stateful ``EplbPolicy.rebalance(current_table, workload)`` of
vllm-ascend's policy interface.

Names: ``L`` layers, ``N`` logical experts, ``D`` ranks, ``S`` slots per rank, ``P = D * S``
physical slots, ``T`` steps.
"""

from __future__ import annotations

import importlib
import logging
import time
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from eplb_native.checks import (
    IntArray,
    as_float_array,
    as_int_array,
    check_history,
    check_load,
    check_positive_int,
)
from eplb_native.flashlb import FlashLBOptions, PlannedBalance
from eplb_native.metrics import count_weight_copies, evaluate
from eplb_native.plan import (
    Plan,
    default_placement,
    expert_load_from_slot_load,
    placement_violations,
)
from eplb_native.planning import (
    POLICIES,
    PlanRequest,
    PolicyFn,
    SwiftBalancerOptions,
    plan,
    policy_name,
    propose,
)

logger = logging.getLogger(__name__)


def _is_tensor(values: Any) -> bool:
    """Whether ``values`` is a torch tensor (duck-typed: torch is never imported here)."""
    return hasattr(values, "detach") and hasattr(values, "cpu")


def _as_numpy(values: Any) -> Any:
    """numpy view of a torch tensor, else unchanged."""
    return values.detach().cpu().numpy() if _is_tensor(values) else values


class TorchPlan(NamedTuple):
    """A plan as torch.int64 CPU tensors, as DeepSeek EPLB returns it: phy2log [L, P], log2phy
    [L, N, max_replicas] (-1 padded), logcnt [L, N]."""

    phy2log: Any
    log2phy: Any
    logcnt: Any


def _as_torch(plan: Plan) -> TorchPlan:
    """The plan's arrays copied into torch tensors; called only when the caller passed a tensor,
    so torch is already imported."""
    torch = importlib.import_module("torch")
    return TorchPlan(*(torch.from_numpy(array.copy()) for array in plan))


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
) -> Plan | TorchPlan:
    """Plans where each layer's experts go; a drop-in for DeepSeek EPLB's call.

    ``phy2log, log2phy, logcnt = rebalance_experts(weight, num_replicas, num_groups,
    num_nodes, num_gpus)`` works unchanged (the fifth positional is ``num_ranks``;
    ``num_gpus=`` is its alias). Given a torch tensor, it returns torch.int64 CPU tensors, as
    DeepSeek EPLB does; given anything else, numpy arrays. The call is ``planning.propose`` on
    the request these arguments make.

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
        policy: a name in ``POLICY_NAMES``.
        current: the table in force, Plan or int phy2log [L, P]; required by swift_balancer.
            -1 marks an empty slot (vLLM's elastic expert parallelism) for the policies that
            only align to it: default_eplb, random, and flashlb without incremental mode.
        history: int or float [T, L, N] per-step loads for policies that use them (flashlb);
            the request's window (``load`` stays the aggregated load planned from).
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
        check_positive_int(value, field)
    policy_name(policy, "policy")
    expert_load = check_load(_as_numpy(load), "load")
    current_table = None
    if current is not None:
        current_table = as_int_array(
            current.phy2log if isinstance(current, Plan) else _as_numpy(current), "current"
        )
    # Values of the history are scanned once, by the C++ core (naming "history").
    window = expert_load[None] if history is None else check_history(_as_numpy(history), expert_load.shape)
    request = PlanRequest(
        window, int(ranks), policy, options, current_table, int(num_replicas), int(num_groups),  # type: ignore[arg-type]
        int(num_nodes), load=expert_load, num_threads=num_threads, seed=seed,
    )  # fmt: skip
    start = time.perf_counter()
    proposal = propose(request)
    elapsed_ms = 1e3 * (time.perf_counter() - start)
    if logger.isEnabledFor(logging.INFO):
        _log_rebalance(policy, proposal, expert_load, request.current, int(ranks), elapsed_ms)  # type: ignore[arg-type]
    return _as_torch(proposal) if _is_tensor(load) else proposal


def _log_rebalance(
    policy: str,
    proposal: Plan,
    load: npt.NDArray[np.float64],
    current: IntArray | None,
    num_ranks: int,
    elapsed_ms: float,
) -> None:
    """One INFO line: PAR (before when ``current`` is given) and after, gap, weight copies, ms."""
    after = evaluate(proposal, load, num_ranks)
    line = f"{policy}: {proposal.num_layers} layers, PAR {after.par:.4f}, gap {float(after.gap.mean()):.4f}"
    if current is not None:
        copies = count_weight_copies(current, proposal, num_ranks)
        before = "-"  # no PAR for a table with empty slots or missing experts
        if (current >= 0).all() and all(np.unique(row).size == proposal.num_experts for row in current):
            old_plan = Plan.from_phy2log(current, proposal.num_experts)
            before = f"{evaluate(old_plan, load, num_ranks).par:.4f}"
        line = (f"{policy}: {proposal.num_layers} layers, PAR {before} -> {after.par:.4f}, "
                f"gap {float(after.gap.mean()):.4f}, {copies} weight copies")
    logger.info("%s, %.2f ms", line, elapsed_ms)


class EplbPolicy:
    """A named policy with fixed topology knobs, called on placement tables and per-slot heat
    (vllm-ascend's ``rebalance`` interface); each call is ``planning.plan`` on the request in
    expert space the slot heat converts to.

    Example::

        policy = make_policy("swift_balancer", options=SwiftBalancerOptions(max_moves_per_layer=4))
        table = default_placement(2, 8, 4, 4).table(4)          # int64 [L=2, D=4, S=3]
        workload = np.ones((2, 4, 3)); workload[:, 0, :] = 10.0  # tokens per slot
        changed, layers, new_table = policy.rebalance(table, workload)

    It remembers each switched layer's balance (``planned``), which FlashLB's layer selection
    compares the next window with.
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
        self.name = policy_name(name, "policy")
        self.num_groups = num_groups
        self.num_nodes = num_nodes
        self.options = options
        self.num_threads = num_threads
        self.seed = seed
        self.planned: PlannedBalance | None = None

    def rebalance(
        self, current_table: npt.ArrayLike, workload: npt.ArrayLike
    ) -> tuple[bool, IntArray, IntArray]:
        """Plans from the tokens each physical slot handled.

        Args:
            current_table: int [L, D, S], the logical expert in each slot now.
            workload: float [L, D, S] (one step) or [T, L, D, S] (T steps), tokens per slot.

        Returns:
            (changed, layers_by_priority int64 [k], new_table int64 [L, D, S]): the layers
            ``planning.plan`` switches, highest priority first; other layers keep their row.
            The new table keeps ``placement_violations``' rules against ``current_table``
            (checked: a break raises RuntimeError, a bug in the policy).
        """
        table = as_int_array(_as_numpy(current_table), "current_table")
        if table.ndim != 3 or table.size == 0:
            msg = (
                f"current_table: expected a non-empty int array [L, D, S], got shape {table.shape}"
            )
            raise ValueError(msg)
        num_layers, num_ranks, num_slots = table.shape
        slots = as_float_array(_as_numpy(workload), "workload")  # reshapes below are views
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
        steps = slots.reshape(-1, num_layers, num_ranks * num_slots)  # [T, L, P]
        window = expert_load_from_slot_load(current, steps)  # [T, L, N]
        if self.planned is None or self.planned.balance.shape != (num_layers,):
            self.planned = PlannedBalance.empty(num_layers)
        outcome = plan(PlanRequest(
            window, num_ranks, self.name, self.options, phy2log, num_groups=self.num_groups,
            num_nodes=self.num_nodes, planned_balance=self.planned.balance,
            num_threads=self.num_threads, seed=self.seed,
        ))  # fmt: skip
        new_table = outcome.new_phy2log.reshape(table.shape)
        broken = placement_violations(table, new_table)
        if broken:
            msg = f"{self.name}: the new table breaks the placement rules: {'; '.join(broken[:3])}"
            raise RuntimeError(msg)
        self.planned.record(outcome.layers, outcome.balance)
        return bool(outcome.layers.size > 0), outcome.layers, new_table


class FlashLBPolicy(EplbPolicy):
    """FlashLB through the stateful interface, with layer-wise cherry-picking.

    It remembers each layer's balance (mean / peak rank load) when last switched and switches
    a layer only when its balance on the recent window fell below ``update_threshold_ratio`` x
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


def check_policy_shape(
    policy: str,
    num_experts: int,
    num_physical: int,
    num_ranks: int,
    num_groups: int = 1,
    num_nodes: int = 1,
    options: Any = None,
) -> None:
    """Raises the ValueError (naming the argument) that planning with ``policy`` on this shape
    would raise, so that a server refuses it at start-up instead of failing every rebalance;
    e.g. FlashLB holds no expert twice on a rank, so P > N * D is refused.

    Plans one layer of zero load from the default placement (the same checks as a real call).
    """
    load = np.zeros((1, check_positive_int(num_experts, "num_experts")))
    num_redundant = check_positive_int(num_physical, "num_physical") - num_experts
    current = default_placement(1, num_experts, num_ranks, num_redundant)
    rebalance_experts(load, num_physical, num_groups, num_nodes, num_ranks, policy=policy,
                      current=current, options=options, num_threads=1)  # fmt: skip


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
    "check_policy_shape",
    "make_policy",
    "rebalance_experts",
]
