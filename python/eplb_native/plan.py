"""The placement plan model: Plan, its validation, the per-rank maps, and the load conversions
between logical experts, physical slots and ranks under a plan.

Names: ``L`` layers, ``N`` logical experts, ``D`` ranks, ``S`` slots per rank, ``P = D * S``
physical slots. Rank ``r`` owns physical slots ``r * S .. r * S + S - 1``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import numpy as np
import numpy.typing as npt

from eplb_native import _core
from eplb_native.checks import (
    FloatArray,
    IntArray,
    as_float_array,
    as_int_array,
    check_array_size,
    check_int,
    check_positive_int,
)
from eplb_native.layers import MoeLayerMap

logger = logging.getLogger(__name__)


class Plan:
    """A placement of logical experts onto physical slots, one row per MoE layer.

    The plan is held by the C++ core (``_core.Plan``) and passed to it as built: the maps,
    loads and checks below never rebuild it. Its arrays are read-only views. Unpacks like
    DeepSeek EPLB's result: ``phy2log, log2phy, logcnt = plan``.

    ``Plan(phy2log, log2phy, logcnt)`` copies three given maps and checks them once in the core
    (ValueError naming the field); ``Plan.from_phy2log`` derives the other two.

    Attributes:
        phy2log: int64 [L, P], the logical expert held by each physical slot.
        log2phy: int64 [L, N, max_replicas], the physical slots of each expert in ascending
            order, padded with -1.
        logcnt: int64 [L, N], the number of replicas of each expert.
        core: the ``_core.Plan`` holding them.
    """

    __slots__ = ("_valid_on", "core")

    def __init__(self, phy2log: npt.ArrayLike, log2phy: npt.ArrayLike, logcnt: npt.ArrayLike) -> None:
        self.core = _core.Plan(
            as_int_array(phy2log, "phy2log"), as_int_array(log2phy, "log2phy"), as_int_array(logcnt, "logcnt")
        )
        #: (num_ranks, allow_duplicate_on_rank) pairs ``validate_plan`` passed (the plan is
        #: immutable: each is checked once).
        self._valid_on: set[tuple[int, bool]] = set()

    @classmethod
    def from_core(cls, core: _core.Plan) -> Plan:
        """The Plan holding ``core`` (a plan the core built), not copied."""
        plan = cls.__new__(cls)
        plan.core = core
        plan._valid_on = set()
        return plan

    @classmethod
    def from_phy2log(cls, phy2log: npt.ArrayLike, num_experts: int | None = None) -> Plan:
        """Builds the full plan from phy2log int64 [L, P] (or [P] for one layer).

        ``num_experts`` defaults to ``phy2log.max() + 1``. Raises ValueError naming
        ``phy2log`` when an expert has no replica or an id is out of range.
        """
        table = as_int_array(phy2log, "phy2log")
        if table.ndim == 1:
            table = table[None, :]
        if num_experts is None:
            largest = int(table.max(initial=0))
            if table.ndim == 2 and largest >= table.shape[1]:
                msg = (f"phy2log: expert id {largest} implies {largest + 1} experts, but a layer has "
                       f"only {table.shape[1]} slots (every expert needs one)")
                raise ValueError(msg)
            num_experts = largest + 1
        return cls.from_core(_core.plan_from_phy2log(table, check_positive_int(num_experts, "num_experts")))

    @property
    def phy2log(self) -> IntArray:
        return self.core.phy2log

    @property
    def log2phy(self) -> IntArray:
        return self.core.log2phy

    @property
    def logcnt(self) -> IntArray:
        return self.core.logcnt

    @property
    def num_layers(self) -> int:
        return self.core.num_layers

    @property
    def num_physical(self) -> int:
        return self.core.num_physical

    @property
    def num_experts(self) -> int:
        return self.core.num_experts

    def __iter__(self) -> Iterator[IntArray]:
        return iter((self.phy2log, self.log2phy, self.logcnt))

    def __len__(self) -> int:
        return 3

    def __getitem__(self, index: int) -> IntArray:
        return (self.phy2log, self.log2phy, self.logcnt)[index]

    def __reduce__(self) -> tuple[type[Plan], tuple[IntArray, IntArray, IntArray]]:
        return (Plan, (self.phy2log, self.log2phy, self.logcnt))

    def __repr__(self) -> str:
        return f"Plan(phy2log={self.phy2log!r}, log2phy={self.log2phy!r}, logcnt={self.logcnt!r})"

    def slots_per_rank(self, num_ranks: int) -> int:
        """S, the physical slots on each of ``num_ranks`` ranks; ValueError if P is not a multiple."""
        check_positive_int(num_ranks, "num_ranks")
        if self.num_physical % num_ranks:
            msg = (
                f"num_ranks: {self.num_physical} physical slots cannot be split evenly over "
                f"{num_ranks} ranks"
            )
            raise ValueError(msg)
        return self.num_physical // num_ranks

    def table(self, num_ranks: int) -> IntArray:
        """phy2log as the runtime's placement table, int64 [L, D, S] (a writable copy)."""
        return self.phy2log.reshape(self.num_layers, num_ranks, self.slots_per_rank(num_ranks)).copy()


def check_plan(plan: object) -> Plan:
    """``plan`` when it is a Plan; TypeError naming "plan" otherwise (a Plan was checked when
    it was built)."""
    if not isinstance(plan, Plan):
        msg = f"plan: expected a Plan, got {type(plan).__name__}"
        raise TypeError(msg)
    return plan


def validate_plan(plan: Plan, num_ranks: int, allow_duplicate_on_rank: bool = False) -> None:
    """Raises ValueError naming the field unless ``plan`` is one valid placement on
    ``num_ranks`` ranks.

    Checks (in the core): every expert has >= 1 replica; ids in range; P is a multiple of
    ``num_ranks`` (each rank exactly S slots); ``logcnt`` counts ``phy2log``; ``log2phy`` lists
    exactly each expert's slots, -1 padded; and, unless ``allow_duplicate_on_rank``, no rank
    holds two replicas of one expert (vllm-ascend's rule).
    """
    key = (check_positive_int(num_ranks, "num_ranks"), bool(allow_duplicate_on_rank))
    if key in check_plan(plan)._valid_on:
        return
    _core.validate_plan(plan.core, *key)
    plan._valid_on.update({key, (key[0], True)})  # no duplicates: also valid with them allowed


def layer_plan(row: Plan | npt.ArrayLike, num_experts: int, num_ranks: int) -> Plan:
    """One layer's placement on ``num_ranks`` ranks as a Plan [1, P], validated as the runtime
    takes it (a rank may hold an expert twice): ``row`` itself when it is such a Plan of
    ``num_experts`` experts (built and checked once, then passed on), else built from phy2log
    ``row`` int [P]. Raises ValueError naming phy2log_row or the field at fault."""
    if isinstance(row, Plan):
        plan = row
        if plan.num_layers != 1 or plan.num_experts != num_experts:
            msg = (f"phy2log_row: expected a one-layer plan of {num_experts} experts, got "
                   f"{plan.num_layers} layers of {plan.num_experts}")
            raise ValueError(msg)
    else:
        plan = Plan.from_phy2log(as_int_array(row, "phy2log_row")[None], num_experts)
    validate_plan(plan, num_ranks, allow_duplicate_on_rank=True)
    return plan


def rank_expert_maps(plan: Plan, num_ranks: int) -> IntArray:
    """vllm-ascend's per-rank expert_map, int64 [D, L, N].

    ``maps[r, l, e]`` is the local slot (0..S-1) of expert ``e`` on rank ``r`` in layer ``l``,
    or -1 when rank ``r`` holds no replica of it.
    """
    return _core.rank_expert_maps(check_plan(plan).core, check_positive_int(num_ranks, "num_ranks"))


def rank_log2phy(plan: Plan, num_ranks: int, tp_size: int | None = None) -> IntArray:
    """Per-rank routing choice, int64 [D, L, N]: the physical slot rank r sends expert e's tokens to.

    ``tp_size=None``: a rank holding a replica uses its own; the other ranks are spread over the
    replicas so that the numbers of ranks each replica serves differ by at most one.

    ``tp_size`` >= 1: vllm-ascend's ``generate_log2phy_map`` rule, so that both sides route
    alike. Expert e's k candidates are its holding ranks in ascending order (each with its lowest
    slot of e); rank r takes candidate ``r % k`` when ``tp_size == 1``, else
    ``(r % tp_size + r // tp_size + e) % k``: ranks of one tensor-parallel group, and successive
    experts, take different replicas.
    """
    if tp_size is not None:
        check_positive_int(tp_size, "tp_size")
    return _core.rank_log2phy(check_plan(plan).core, check_positive_int(num_ranks, "num_ranks"), tp_size or 0)


def default_placement(
    num_layers: int | MoeLayerMap,
    num_experts: int,
    num_ranks: int,
    num_redundant_experts: int = 0,
) -> Plan:
    """vLLM's initial layout: all logical experts in order, then copies of experts 0..R-1.

    Args:
        num_layers: MoE layers L, or the model's MoeLayerMap (its dense layers have no
            placement: they are skipped and reported in the log).
        num_experts: N logical experts per MoE layer.
        num_ranks: D.
        num_redundant_experts: R extra physical slots per layer.

    Returns a Plan with ``P = N + R`` physical slots per MoE layer. Raises ValueError when
    ``(N + R) % D != 0`` (ranks would hold different slot counts).
    """
    if isinstance(num_layers, MoeLayerMap):
        if num_layers.dense_layer_ids:
            logger.info(
                "default placement: %d MoE layers; dense layers skipped: %s",
                num_layers.num_moe_layers,
                list(num_layers.dense_layer_ids),
            )
        num_layers = num_layers.num_moe_layers
    for value, field in (
        (num_layers, "num_layers"),
        (num_experts, "num_experts"),
        (num_ranks, "num_ranks"),
    ):
        check_positive_int(value, field)
    check_int(num_redundant_experts, "num_redundant_experts", minimum=0)
    num_physical = num_experts + num_redundant_experts
    check_array_size("num_layers", "a plan of layers x slots", num_layers, num_physical)
    if num_physical % num_ranks:
        msg = (
            f"num_redundant_experts: {num_experts} experts + {num_redundant_experts} redundant = "
            f"{num_physical} slots, not a multiple of num_ranks={num_ranks}"
        )
        raise ValueError(msg)
    row = np.arange(num_physical, dtype=np.int64) % num_experts
    return Plan.from_phy2log(np.tile(row, (num_layers, 1)), num_experts)


def slot_load_from_expert_load(plan: Plan, load: npt.ArrayLike) -> FloatArray:
    """Per-slot load from per-expert load: each replica carries ``load / logcnt`` exactly.

    Args:
        plan: the placement.
        load: float [..., L, N], tokens routed to each logical expert.

    Returns:
        float64 [..., L, P], tokens handled by each physical slot.
    """
    plan = check_plan(plan)
    expert_load = as_float_array(load, "load")
    if expert_load.ndim < 2 or expert_load.shape[-2:] != plan.logcnt.shape:
        msg = f"load: expected [..., L, N] = [..., {plan.num_layers}, {plan.num_experts}], got {expert_load.shape}"
        raise ValueError(msg)
    per_replica = expert_load / plan.logcnt  # [..., L, N]
    layer_idx = np.arange(plan.num_layers)[:, None]
    return np.ascontiguousarray(per_replica[..., layer_idx, plan.phy2log])


def expert_load_from_slot_load(plan: Plan, slot_load: npt.ArrayLike) -> FloatArray:
    """Per-expert load from per-slot load (the inverse of ``slot_load_from_expert_load``).

    Args:
        plan: the placement.
        slot_load: float [..., L, P], tokens handled by each physical slot.

    Returns:
        float64 [..., L, N], the tokens of all replicas of each expert summed.
    """
    plan = check_plan(plan)
    slots = as_float_array(slot_load, "slot_load")
    if slots.ndim < 2 or slots.shape[-2:] != plan.phy2log.shape:
        msg = f"slot_load: expected [..., L, P] = [..., {plan.num_layers}, {plan.num_physical}], got {slots.shape}"
        raise ValueError(msg)
    return _per_row(slots, plan.num_experts,
                    lambda rows: _core.expert_load_from_slot_load(plan.core, rows))


def rank_loads(plan: Plan, load: npt.ArrayLike, num_ranks: int) -> FloatArray:
    """Tokens per rank, float64 [..., L, D], each expert's tokens split evenly among replicas.

    ``load`` is float [..., L, N]; each rank adds load / logcnt of its slots' experts in slot
    order (``slot_load_from_expert_load`` summed over each rank's slots)."""
    plan = check_plan(plan)
    expert_load = as_float_array(load, "load")
    if expert_load.ndim < 2 or expert_load.shape[-2:] != plan.logcnt.shape:
        msg = f"load: expected [..., L, N] = [..., {plan.num_layers}, {plan.num_experts}], got {expert_load.shape}"
        raise ValueError(msg)
    ranks = check_positive_int(num_ranks, "num_ranks")
    return _per_row(expert_load, ranks,
                    lambda rows: _core.rank_loads(plan.core, rows, ranks))


def _per_row(
    values: FloatArray, width: int, convert: Callable[[FloatArray], npt.ArrayLike]
) -> FloatArray:
    """A core conversion of float64 [rows, L, X] into [rows, L, width], applied to ``values``
    [..., L, X] with any leading dimensions (none converted when empty)."""
    lead, num_layers = values.shape[:-2], values.shape[-2]
    if values.size == 0:
        return np.zeros((*lead, num_layers, width))
    converted = convert(values.reshape(-1, *values.shape[-2:]))
    return np.asarray(converted, dtype=np.float64).reshape(*lead, num_layers, width)


def placement_violations(current_table: npt.ArrayLike, new_table: npt.ArrayLike) -> list[str]:
    """The rules a new placement table must keep against the table in force, as vllm-ascend's
    ``EplbWorker.check_expert_placement`` enforces them (it reverts any layer that breaks one):

    1. every expert of the table in force still has a replica in the layer;
    2. no rank holds two replicas of one expert (unless it already did in the table in force:
       vllm-ascend's tables never do, and a planner cannot always undo it);
    3. an expert that stays on a rank keeps its slot.

    Args:
        current_table: int [L, D, S], the logical expert in each slot now (-1: empty slot).
        new_table: int [L, D, S], the proposed table.

    Returns:
        One message per broken rule and layer (the first rank that breaks it); empty when the
        new table keeps all three.
    """
    old = as_int_array(current_table, "current_table")
    new = as_int_array(new_table, "new_table")
    violations = []
    # [L, 3]: the first break of each rule, -1: none (the core checks the shapes).
    first = _core.placement_violations(old, new)
    for layer in np.flatnonzero((first >= 0).any(axis=1)).tolist():
        expert, twice, moved = first[layer].tolist()
        if expert >= 0:
            violations.append(f"layer {layer}: expert {expert} has no replica left")
        if twice >= 0:
            violations.append(f"layer {layer}: rank {twice} holds an expert twice: {new[layer, twice].tolist()}")
        if moved >= 0:
            violations.append(
                f"layer {layer}: an expert that stays on rank {moved} changes slot: "
                f"{old[layer, moved].tolist()} -> {new[layer, moved].tolist()}"
            )
    return violations
