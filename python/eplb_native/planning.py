"""The one planning call: a ``PlanRequest`` in expert space (the heat window, the table in force,
the policy and its options) in, the policy's proposal and the layers to switch to it out.

The runtime's planner worker, the trace replay (``eplb_native.sim``), the stateful
``EplbPolicy.rebalance`` adapter and DeepSeek's ``rebalance_experts`` call all plan through
``plan`` / ``propose``, so a plan found offline is the plan served. The policy names, their
option types and the registry of the C++ policies live here too.

Names: ``L`` layers, ``N`` logical experts, ``D`` ranks, ``S`` slots per rank, ``P = D * S``
physical slots, ``T`` steps of the heat window.
"""

from __future__ import annotations

import difflib
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from eplb_native import _core
from eplb_native.checks import (
    FloatArray,
    IntArray,
    as_array,
    as_float_array,
    as_int_array,
    check_history,
    check_int,
    check_load,
    check_num_threads,
    check_positive_int,
    is_integer,
)
from eplb_native.flashlb import (
    FlashLBOptions,
    PlannedBalance,
    _balance,
    _by_improvement,
    _due_layers,
)
from eplb_native.metrics import count_weight_copies, peak_to_average
from eplb_native.plan import Plan, rank_loads

logger = logging.getLogger(__name__)

#: A policy's registry name: one of POLICY_NAMES.
PolicyName = str
#: The policies of the C++ core's registry, in vllm-ascend's id order.
POLICY_NAMES: tuple[str, ...] = tuple(_core.POLICY_NAMES)
#: vllm-ascend's integer policy ids (policy_factory.py): 0 random, 1 default, 2 swift, 3 flashlb.
POLICY_IDS: dict[int, str] = dict(enumerate(POLICY_NAMES))


def policy_name(value: object, key: str = "eplb_policy_type") -> str:
    """The registry name of a policy given by name or vllm-ascend id; ValueError naming
    ``key`` otherwise."""
    if is_integer(value):
        if int(value) in POLICY_IDS:
            return POLICY_IDS[int(value)]
        msg = f"{key}: unknown policy id {value}; valid ids: " + ", ".join(
            f"{i} ({n})" for i, n in POLICY_IDS.items()
        )
        raise ValueError(msg)
    if isinstance(value, str):
        if value in POLICY_NAMES:
            return value
        msg = f"{key}: unknown policy {value!r}; valid policies: {', '.join(POLICY_NAMES)}"
        close = difflib.get_close_matches(value, POLICY_NAMES, n=1)
        if close:
            msg += f" (did you mean {close[0]!r}?)"
        raise ValueError(msg)
    msg = f"{key}: expected a policy name or id, got {value!r}"
    raise ValueError(msg)


@dataclass(frozen=True)
class SwiftBalancerOptions:
    """Knobs of ``swift_balancer``.

    Attributes:
        max_moves_per_layer: weight copies allowed per layer (slots whose new expert was not on
            that rank before, as ``count_weight_copies`` counts them); >= 0.
        max_layers_per_update: layers switched to the new plan per update at most (those whose
            busiest rank gets lighter, largest gain first); None: no cap.
    """

    max_moves_per_layer: int = 32
    max_layers_per_update: int | None = None

    def __post_init__(self) -> None:
        check_int(self.max_moves_per_layer, "max_moves_per_layer", minimum=0)
        if self.max_layers_per_update is not None:
            check_int(self.max_layers_per_update, "max_layers_per_update", minimum=1)

    def core_options(self, num_ranks: int) -> dict[str, Any]:
        """The options the C++ policy reads (``_core.plan_policy``); none depend on D."""
        del num_ranks
        return {"max_moves_per_layer": self.max_moves_per_layer}


#: Each policy's options type (None: the policy takes no options).
OPTIONS_TYPES: dict[str, type | None] = {
    "random": None,
    "default_eplb": None,
    "swift_balancer": SwiftBalancerOptions,
    "flashlb": FlashLBOptions,
}


@dataclass(frozen=True)
class PolicyFn:
    """A registered policy: the core registry's policy ``name``, validated inputs in, a Plan
    out.

    Args:
        load: float64 [L, N], tokens per logical expert (checked by ``check_load``).
        num_replicas: P; num_groups: G; num_nodes: H; num_ranks: D (checked by the core).
        current: int64 [L, P] phy2log of the current placement, or None.
        history: int64 or float64 [T, L, N] per-step loads (from ``check_history``), or None.
        num_threads: planner threads (0: all cores).
        seed: seed for randomised policies (>= 0).
        options: the policy's options dataclass, or None for its defaults.

    Returns:
        Plan with L layers and P physical slots.
    """

    name: str

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
    ) -> Plan:
        options_type = OPTIONS_TYPES[self.name]
        if options is None and options_type is not None:
            options = options_type()
        core_options = {} if options is None else options.core_options(num_ranks)
        return Plan.from_core(_core.plan_policy(
            self.name, load, num_replicas, num_groups, num_nodes, num_ranks, current=current,
            history=history, num_threads=num_threads, seed=seed, options=core_options,
        ))  # fmt: skip


#: Registry name -> policy; the keys are exactly POLICY_NAMES (vLLM's assertion).
POLICIES: dict[str, PolicyFn] = {name: PolicyFn(name) for name in POLICY_NAMES}
assert set(POLICY_NAMES) == set(OPTIONS_TYPES), "every policy needs its options type"


def check_options(policy: str, options: Any) -> Any:
    """``options`` when it is ``policy``'s options type (or None); ValueError naming
    ``options`` otherwise."""
    expected = OPTIONS_TYPES[policy]
    if options is not None and (expected is None or not isinstance(options, expected)):
        want = expected.__name__ if expected else "None (no options)"
        msg = f"options: {policy} takes {want}, got {type(options).__name__}"
        raise ValueError(msg)
    return options


@dataclass(frozen=True)
class PlanRequest:
    """One planning request in expert space: what was served, what is in force, how to plan.

    Building one checks shapes and types (cheap: the serving thread builds them); the values
    of the window (finite, >= 0) are checked when it is planned.

    Example:
        >>> import numpy as np
        >>> window = np.array([[[90, 5, 3, 2]], [[80, 10, 6, 4]]])  # [T=2, L=1, N=4] tokens
        >>> table = np.array([[0, 1, 2, 3, 0, 1]])                  # [L, P]: 6 slots
        >>> request = PlanRequest(window, num_ranks=2, policy="default_eplb", current=table)
        >>> plan(request).proposal.logcnt[0].tolist()
        [3, 1, 1, 1]

    Attributes:
        window: int64 or float64 [T, L, N], tokens routed to each logical expert in each step
            of the heat window (int64 counts are read in place by the C++ core). Episodes are
            not folded here: a policy that uses them (FlashLB) folds ``episode_steps`` steps
            per episode, as its options say.
        num_ranks: D.
        policy: a name in ``POLICY_NAMES`` (or a vllm-ascend id, stored as its name).
        options: the policy's options dataclass (``OPTIONS_TYPES``), or None for its defaults.
        current: int64 [L, P], phy2log of the placement in force; None: plan from scratch (all
            layers are then switched).
        num_replicas: P; required when ``current`` is None, else it must equal its P.
        num_groups: G expert groups (hierarchical planning of default_eplb when H divides G).
        num_nodes: H nodes.
        planned_balance: float64 [L], FlashLB's memory: each layer's balance (mean / peak rank
            load) when last switched, NaN for never; None: nothing remembered.
        load: float64 [L, N], the aggregated load the policies plan from; None: the window's
            sum (the normal case).
        num_threads: planner threads (0: all cores); plans are the same for any value.
        seed: seed of randomised policies (0 <= seed < 2**64).
    """

    window: IntArray | FloatArray
    num_ranks: int
    policy: str = "default_eplb"
    options: Any = None
    current: IntArray | None = None
    num_replicas: int | None = None
    num_groups: int = 1
    num_nodes: int = 1
    planned_balance: FloatArray | None = None
    load: FloatArray | None = None
    num_threads: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "policy", policy_name(self.policy, "policy"))  # an id: its name
        check_options(self.policy, self.options)
        window = as_array(self.window, "window")
        if window.ndim != 3:
            msg = f"window: expected a non-empty array [steps, layers, experts], got shape {window.shape}"
            raise ValueError(msg)
        window = check_history(window, window.shape[1:], "window")
        num_layers, num_experts = window.shape[1:]
        for value, field in ((self.num_ranks, "num_ranks"), (self.num_groups, "num_groups"),
                             (self.num_nodes, "num_nodes")):  # fmt: skip
            check_positive_int(value, field)
        check_num_threads(self.num_threads)
        check_int(self.seed, "seed", minimum=0, below=2**64)
        num_replicas = self.num_replicas
        current = None
        if self.current is not None:
            current = as_int_array(self.current, "current")
            slots = "P" if num_replicas is None else f"P={num_replicas}"
            if current.ndim != 2 or current.shape[0] != num_layers or current.shape[1] != (num_replicas or current.shape[1]):
                msg = f"current: expected phy2log [L={num_layers}, {slots}], got shape {current.shape}"
                raise ValueError(msg)
            num_replicas = int(current.shape[1])
        if num_replicas is None:
            msg = "num_replicas: required when no current table is given"
            raise ValueError(msg)
        check_positive_int(num_replicas, "num_replicas")
        balance = None
        if self.planned_balance is not None:
            balance = as_float_array(self.planned_balance, "planned_balance")
            if balance.shape != (num_layers,):
                msg = f"planned_balance: expected float64 [L={num_layers}], got shape {balance.shape}"
                raise ValueError(msg)
        load = None
        if self.load is not None:
            load = check_load(self.load, "load")
            if load.shape != (num_layers, num_experts):
                msg = f"load: expected [L={num_layers}, N={num_experts}] like the window, got {load.shape}"
                raise ValueError(msg)
        converted: dict[str, object] = {"window": window, "current": current, "num_replicas": int(num_replicas),
                                        "planned_balance": balance, "load": load}
        for name, converted_value in converted.items():
            object.__setattr__(self, name, converted_value)

    @property
    def num_layers(self) -> int:
        return int(self.window.shape[1])

    @property
    def num_experts(self) -> int:
        return int(self.window.shape[2])


@dataclass(frozen=True)
class PlanOutcome:
    """What ``plan`` decided for one request.

    Attributes:
        proposal: the policy's plan for every layer; for FlashLB given a current table, of
            the layers due for an update (the current table's rows elsewhere).
        layers: int64 [k], the layers to switch to the proposal, highest priority first (all
            layers when the request had no current table).
        new_phy2log: int64 [L, P], the placement after switching ``layers`` (the current
            table elsewhere).
        par_before: float64 [L], PAR (busiest / mean rank) of the window's summed load per
            layer under the current table (under the proposal when there was none).
        par_after: float64 [L], the same under ``new_phy2log``.
        balance: float64 [k], FlashLB: each switched layer's balance (mean / peak rank load,
            averaged over the window's steps) under the proposal, to remember as
            ``planned_balance``; NaN for the other policies (they remember nothing).
        plan_ms: wall time of the policy call, ms.
    """

    proposal: Plan
    layers: IntArray
    new_phy2log: IntArray
    par_before: FloatArray
    par_after: FloatArray
    balance: FloatArray
    plan_ms: float


def _window_load(request: PlanRequest) -> FloatArray:
    """The aggregated load float64 [L, N] of ``request``, its window's values checked once."""
    if request.load is not None:
        return request.load
    window = request.window
    if window.dtype == np.int64:
        if window.min() < 0:
            bad = np.argwhere(window < 0)[0]
            msg = f"window: negative count at index {tuple(int(i) for i in bad)} (counts must be >= 0)"
            raise ValueError(msg)
        # Summed as float64: int64 counts could wrap around.
        return check_load(window.sum(axis=0, dtype=np.float64), "window")
    summed: FloatArray = check_load(window, "window", allow_steps=True).sum(axis=0)
    return summed


def propose(request: PlanRequest) -> Plan:
    """The policy's plan for every layer of ``request`` (no layer selection)."""
    return _propose(request, _window_load(request))


def _propose(
    request: PlanRequest, load: FloatArray, rows: slice | IntArray = slice(None)
) -> Plan:
    """The policy's plan of the layers ``rows`` of ``request`` (every layer by default; an index
    array copies those layers' load, window and current rows)."""
    assert request.num_replicas is not None  # set by PlanRequest.__post_init__
    return POLICIES[request.policy](
        load[rows], request.num_replicas, request.num_groups, request.num_nodes, request.num_ranks,
        current=None if request.current is None else request.current[rows],
        history=request.window[:, rows] if request.policy == "flashlb" else None,
        num_threads=request.num_threads, seed=request.seed, options=request.options,
    )  # fmt: skip


def plan(request: PlanRequest) -> PlanOutcome:
    """Plans ``request``: the policy's proposal, then the layers worth switching to it.

    Layer selection: FlashLB plans only the layers whose balance on the window fell below its
    thresholds (``FlashLBOptions.thresholds``, against ``planned_balance``), as upstream
    FlashLB does, and switches those the proposal improves, best first, at most
    ``max_layers_per_update``; the other policies plan every layer and switch the layers whose
    busiest rank on the window's summed load gets lighter, largest gain first
    (swift_balancer: at most its ``max_layers_per_update``). Logs one INFO line.
    """
    load = _window_load(request)
    num_layers, num_ranks = request.num_layers, request.num_ranks
    if request.current is None:
        start = time.perf_counter()
        proposal = _propose(request, load)
        plan_ms = (time.perf_counter() - start) * 1e3
        current = proposal
        layers = np.arange(num_layers, dtype=np.int64)
        balance = np.full(num_layers, np.nan)
    elif request.policy == "flashlb":
        current = Plan.from_phy2log(request.current, request.num_experts)
        proposal, layers, balance, plan_ms = _update_due_layers(request, load, current)
    else:
        current = Plan.from_phy2log(request.current, request.num_experts)
        start = time.perf_counter()
        proposal = _propose(request, load)
        plan_ms = (time.perf_counter() - start) * 1e3
        swift = request.options if isinstance(request.options, SwiftBalancerOptions) else None
        cap = None if swift is None else swift.max_layers_per_update
        layers = _layers_by_peak_drop(current, proposal, load, num_ranks, cap)
        balance = np.full(layers.size, np.nan)
    new_phy2log = current.phy2log.copy()
    new_phy2log[layers] = proposal.phy2log[layers]
    new_plan = Plan.from_phy2log(new_phy2log, request.num_experts)
    par_before = peak_to_average(rank_loads(current, load, num_ranks))
    par_after = peak_to_average(rank_loads(new_plan, load, num_ranks))
    if logger.isEnabledFor(logging.INFO):
        copies = count_weight_copies(current, new_plan, num_ranks)
        logger.info(
            "%s: %d of %d layers switched, window PAR %.4f -> %.4f (layer mean), %d weight copies, "
            "%.2f ms", request.policy, layers.size, num_layers, float(par_before.mean()),
            float(par_after.mean()), copies, plan_ms,
        )  # fmt: skip
    return PlanOutcome(proposal, layers, new_phy2log, par_before, par_after, balance, plan_ms)


def _update_due_layers(
    request: PlanRequest, load: FloatArray, current: Plan
) -> tuple[Plan, IntArray, FloatArray, float]:
    """FlashLB's layer-wise update of the table in force ``current``: plans the due layers
    only (each layer is planned on its own, so their rows are those of a plan of every layer)
    and picks the ones to switch. Returns (proposal: the due layers' plan, the table in force
    elsewhere; layers int64 [k] to switch, best first; their balance float64 [k] under the
    proposal; the policy's wall time, ms, 0 when no layer is due)."""
    options: FlashLBOptions = request.options or FlashLBOptions()
    ratio, value = options.thresholds(request.num_ranks)
    remembered = request.planned_balance
    planned = PlannedBalance(np.full(request.num_layers, np.nan) if remembered is None else remembered)
    # The window's values were scanned by _window_load (the core scans them again as history).
    window = as_float_array(request.window, "window")
    current_balance = _balance(current, window, request.num_ranks, request.num_threads)
    due = _due_layers(current_balance, planned, ratio, value)
    if due.size == 0:
        return current, due, np.zeros(0), 0.0
    # Views when every layer is due; copies of the due layers' rows otherwise.
    rows = slice(None) if due.size == request.num_layers else due
    start = time.perf_counter()
    planned_rows = _propose(request, load, rows)
    plan_ms = (time.perf_counter() - start) * 1e3
    new_balance = _balance(planned_rows, window[:, rows], request.num_ranks, request.num_threads)
    layers, balance = _by_improvement(due, current_balance[due], new_balance, options.max_layers_per_update)
    phy2log = current.phy2log.copy()
    phy2log[due] = planned_rows.phy2log
    return Plan.from_phy2log(phy2log, request.num_experts), layers, balance, plan_ms


def _layers_by_peak_drop(
    current: Plan, proposal: Plan, load: FloatArray, num_ranks: int, max_layers: int | None
) -> IntArray:
    """Layers whose max rank load on ``load`` float64 [L, N] drops under ``proposal``, int64
    [k], largest drop first (ties: lower layer first), at most ``max_layers``."""
    before = rank_loads(current, load, num_ranks).max(axis=-1)
    after = rank_loads(proposal, load, num_ranks).max(axis=-1)
    gain = before - after
    order = np.argsort(-gain, kind="stable")
    selected: IntArray = order[gain[order] > 0].astype(np.int64)
    return selected[:max_layers] if max_layers is not None else selected


__all__ = [
    "OPTIONS_TYPES",
    "POLICIES",
    "POLICY_IDS",
    "POLICY_NAMES",
    "PlanOutcome",
    "PlanRequest",
    "PolicyFn",
    "PolicyName",
    "SwiftBalancerOptions",
    "check_options",
    "plan",
    "policy_name",
    "propose",
]
