"""EplbUpdateManager: the dynamic EPLB loop (heat in, plan from a worker process, weights moved
layer by layer while serving continues), called around every forward step.

Schedule (identical on every rank, so every collective lines up): every
``expert_heat_collection_interval`` counted steps the heat window is summed over the ranks
and, when no update is being applied, each planning leader (rank 0; with
``planner_placement="per_node"`` the first rank of every node; with ``"per_rank"`` every rank)
hands it to its planner worker as one ``PlanRequest`` (int64 counts [T, L, N], the table in
force, the policy and options from ``EplbConfig.policy_options``). From
``algorithm_execution_interval`` steps later on, the hand-over runs one stage per step: the
leaders post their answer, or "not ready" (``PlanExchange``: broadcast), every rank compares
the plan's checksum and the "not ready" flags across all ranks, and the plan is scheduled only
if all ranks hold the same one; while some leader's plan is not ready the hand-over starts over
at the next step, so a plan is picked up at the first round that finds it ready and the
serving thread never waits for the planner (unless ``max_plan_wait_s`` asks it to, once per
window). A newer window replaces a request still unanswered. The loader then moves the changed
layers, ``max_layers_per_step`` per step, in the policy's priority order, each layer's
transfers and commit vote overlapping a forward step. The heat window's all-reduce also runs in
the background (``HeatRecorder.step(defer_gather=True)``): the window reaches the manager one
step after it closed. So no step waits on a collective posted in that same step; a wait
normally finds the collective done during the forward in between.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch.distributed as dist

from eplb_native.checks import IntArray, check_divisor
from eplb_native.config import EplbConfig
from eplb_native.expert_map import load_expert_map, save_expert_map
from eplb_native.flashlb import PlannedBalance
from eplb_native.metrics import peak_to_average
from eplb_native.plan import Plan, default_placement
from eplb_native.planning import PlanRequest, plan
from eplb_native.policies import check_policy_shape
from eplb_native.runtime._dist import group_rank_and_size
from eplb_native.runtime.heat import HeatRecorder, HeatWindow
from eplb_native.runtime.heat_dump import HeatDump
from eplb_native.runtime.loader import LayerUpdate, WeightLoader
from eplb_native.runtime.moe import EplbMoE
from eplb_native.runtime.plan_exchange import PlanExchange, SharedPlan
from eplb_native.runtime.telemetry import EplbStats, register_prometheus
from eplb_native.runtime.worker import (
    PlanFailure,
    Planner,
    PlannerWorker,
    PlanResult,
    check_plan_result,
)

logger = logging.getLogger(__name__)



def initial_plan(config: EplbConfig, num_layers: int, num_experts: int, num_ranks: int) -> Plan:
    """The placement to build the model with: ``expert_map_path`` when set (read here), else
    the default layout with ``num_redundant_experts`` copies. ValueError naming the key when
    the file's shape disagrees with the model or with ``num_redundant_experts``."""
    if config.expert_map_path is None:
        return default_placement(num_layers, num_experts, num_ranks, config.num_redundant_experts or 0)
    path = Path(config.expert_map_path)
    if not path.is_file():
        msg = f"expert_map_path: {str(path)!r} is not an existing .json file"
        raise ValueError(msg)
    plan = load_expert_map(path, allow_duplicate_on_rank=True)
    if (plan.num_layers, plan.num_experts) != (num_layers, num_experts):
        msg = (f"expert_map_path: {config.expert_map_path} places {plan.num_experts} experts on "
               f"{plan.num_layers} layers, the model has {num_experts} experts on {num_layers} MoE layers")
        raise ValueError(msg)
    implied = plan.num_physical - plan.num_experts
    if config.num_redundant_experts is not None and config.num_redundant_experts != implied:
        msg = (f"num_redundant_experts: set to {config.num_redundant_experts}, but expert_map_path "
               f"{str(path)!r} places {plan.num_experts} experts on {plan.num_physical} slots, i.e. "
               f"{implied} redundant experts; make them agree or drop one of the two keys")
        raise ValueError(msg)
    plan.slots_per_rank(num_ranks)
    return plan


@dataclass
class UpdateRecord:
    """One update, from the heat window to its last layer (logged at INFO when it ends).

    Attributes:
        window_step: the step whose heat window was planned from.
        schedule_step: the step the plan was scheduled at.
        layers: int64 [k], the layers the plan changes, in priority order.
        par_before, par_after: PAR of the planned window's summed load, mean over layers,
            under the old placement and under the plan.
        par_max_before, par_max_after: the same, the largest layer's.
        gather_ms: waiting for the window's all-reduce (posted a step earlier) and copying it, ms.
        plan_ms: the policy's time in the worker, ms.
        wait_ms: time the serving thread waited for the worker (0 unless ``max_plan_wait_s``).
        transfer_ms, apply_ms: summed over the update's steps, ms.
        applied, abandoned: layers committed on all ranks / abandoned after a failed transfer.
        num_copies: expert copies made on this rank; global_bytes: bytes moved, all ranks.
    """

    window_step: int
    schedule_step: int
    layers: IntArray
    par_before: float
    par_after: float
    par_max_before: float
    par_max_after: float
    gather_ms: float
    plan_ms: float
    wait_ms: float
    transfer_ms: float = 0.0
    apply_ms: float = 0.0
    applied: list[int] = field(default_factory=list)
    abandoned: list[int] = field(default_factory=list)
    num_copies: int = 0
    global_bytes: int = 0


@dataclass
class _Request:
    """A window handed to the planners (every rank keeps one; leaders also the worker's id)."""

    window_step: int
    due_step: int
    phy2log: IntArray  # [L, P], the table in force when it was made
    gather_ms: float
    request_id: int | None = None
    waited: bool = False
    wait_ms: float = 0.0
    balance: dict[int, float] = field(default_factory=dict)  # FlashLB memory of each layer


class EplbUpdateManager:
    """Runs dynamic EPLB around the forward steps of one expert-parallel model replica.

    Example (every rank)::

        heat = HeatRecorder.from_config(config, plan)
        layers = [EplbMoE.from_logical_weights(..., moe_layer_idx=i, heat=heat) for i in ...]
        manager = EplbUpdateManager(config, layers, heat)
        manager.warm_up()                # during memory profiling: buffers allocated now
        for batch in batches:
            manager.pre_forward()        # posts this step's weight transfers
            out = model(batch)
            manager.post_forward()       # heat, plan hand-over, commit of arrived layers
        manager.close()

    Args:
        config: the EPLB settings (``dynamic_eplb`` False: heat is still recorded and its
            balancedness logged, the placement never changes). The policy and its options come
            from ``config.policy_options()``.
        moe_layers: the EplbMoE block of each MoE layer, indexed by MoE layer (dense layers are
            not in it; see ``MoeLayerMap``).
        heat: the recorder the blocks accumulate into.
        planner: what the worker process runs on each request (default
            ``eplb_native.planning.plan``); a picklable callable importable by name.
        ranks_per_node: ranks per node, for same-node transfer sources, the policies' node
            count and, with ``config.planner_placement == "per_node"``, one planner worker per
            node (None: one node). Must divide the number of ranks.
        num_expert_groups: G, the model's expert groups (hierarchical default_eplb).
        transfer_timeout_s: seconds a layer's transfer may take before it is abandoned.
        heartbeat_timeout_s, plan_timeout_s: the worker's deadlines (``PlannerWorker``).
        profile: log each update's per-layer detail at INFO (else DEBUG).
        synchronous: run the plan hand-over and move all layers of an update at its pick-up
            step, stopping the world (the baseline the asynchronous path is measured against).
        side_stream: the loader's transfer mode (``WeightLoader``): a side stream posted from
            this thread (GPU/NPU weights) or a background thread (CPU); None: by the device.
        metrics_registry: the ``prometheus_client`` registry ``stats`` are exported to (None:
            its default ``REGISTRY``); nothing is exported without ``prometheus_client``.
            ``close`` unregisters them.

    Raises:
        ValueError naming ``eplb_policy_type`` at construction when ``dynamic_eplb`` is on and
        the policy cannot plan the model's shape (``policies.check_policy_shape``; e.g.
        flashlb, which holds no expert twice on a rank, with more slots than experts x ranks).

    Attributes:
        step_phases: the update work the last step did, in order: ``"planning"`` (a planner
            worker holds a request during its forward), ``"transfer"`` (weights in flight
            during its forward), ``"commit"`` (layers applied or abandoned), ``"submit"`` (heat
            handed to the planner), ``"pickup"`` (answers posted), ``"verify"`` (checksum
            comparison posted), ``"schedule"`` (plan accepted or refused), ``"not ready"``
            (some leader's plan was not ready; the hand-over starts over). Empty on steady
            steps (recording heat and summing a window that is not planned from are not update
            work).
        stats: the serving counters (``EplbStats``: balancedness, updates, layers applied and
            abandoned, bytes moved, stall), exported to Prometheus when it is installed.
        heat_dump: rank 0 with ``config.expert_heat_dump_path``: writes every heat window
            there (``HeatDump``); None elsewhere.
    """

    def __init__(
        self,
        config: EplbConfig,
        moe_layers: Sequence[EplbMoE],
        heat: HeatRecorder,
        *,
        planner: Planner = plan,
        ranks_per_node: int | None = None,
        num_expert_groups: int = 1,
        transfer_timeout_s: float = 30.0,
        heartbeat_timeout_s: float = 10.0,
        plan_timeout_s: float = 600.0,
        profile: bool = False,
        synchronous: bool = False,
        side_stream: bool | None = None,
        metrics_registry: Any = None,
    ) -> None:
        if len(moe_layers) != heat.num_layers:
            msg = f"moe_layers: {len(moe_layers)} blocks, the heat recorder has {heat.num_layers} MoE layers"
            raise ValueError(msg)
        self.config = config
        self._layers = list(moe_layers)
        self._heat = heat
        self._rank, self._num_ranks = group_rank_and_size(None)
        self._num_experts = self._layers[0].experts.num_experts
        self._policy, self._options = config.policy_options()
        self._num_nodes = 1 if ranks_per_node is None else max(1, self._num_ranks // ranks_per_node)
        self._num_groups = num_expert_groups
        self._profile = profile
        self._synchronous = synchronous
        if config.expert_map_record_path is not None:
            Path(config.expert_map_record_path).parent.mkdir(parents=True, exist_ok=True)
        table = np.stack([layer.experts.phy2log for layer in self._layers])  # [L, P]
        if config.dynamic_eplb:
            self._check_shape(table.shape[1])
        table = table.reshape(len(self._layers), self._num_ranks, -1)  # [L, D, S]
        self.loader = WeightLoader(
            [layer.experts.weight_kinds for layer in self._layers],
            self._install, table, self._rank,
            ranks_per_node=ranks_per_node, max_layers_per_step=config.max_layers_per_step,
            timeout_s=transfer_timeout_s, side_stream=side_stream,
        )  # fmt: skip
        self._group = dist.new_group(backend="gloo") if self._num_ranks > 1 else None
        leader, source_group = self._planning_leader(config, ranks_per_node)
        self.exchange = PlanExchange(table.shape, leader=leader, source_group=source_group, check_group=self._group)
        self.worker = None
        if config.dynamic_eplb and self._rank == leader:
            self.worker = PlannerWorker(planner, heartbeat_timeout_s=heartbeat_timeout_s,
                                        plan_timeout_s=plan_timeout_s)
        self.planned = PlannedBalance.empty(len(self._layers))  # FlashLB's memory (leaders)
        self.step_idx = 0
        self.step_phases: list[str] = []
        self.updates: list[UpdateRecord] = []  # finished updates, oldest first
        self.last_window: tuple[int, HeatWindow] | None = None  # (step, heat) of the last window
        self._request: _Request | None = None  # the newest window handed to the planners
        self._round: _Request | None = None  # the request whose answers are in the hand-over
        self._current: UpdateRecord | None = None
        self._balance: dict[int, float] = {}  # FlashLB memory of the layers being applied
        self.stats = EplbStats()
        self._pre_forward_ms = 0.0  # this step's pre_forward time, counted as stall
        self._collector = register_prometheus(self.stats, rank=self._rank, registry=metrics_registry)
        self.heat_dump = None
        if config.expert_heat_dump_path is not None and self._rank == 0:
            self.heat_dump = HeatDump(config.expert_heat_dump_path, num_ranks=self._num_ranks)
        self._record_placement()

    def _check_shape(self, num_physical: int) -> None:
        """ValueError naming the key at start-up when the policy cannot plan this model's
        shape (e.g. flashlb with more slots than experts x ranks), instead of failing every
        rebalance while serving."""
        try:
            check_policy_shape(self._policy, self._num_experts, num_physical, self._num_ranks,
                               self._num_groups, self._num_nodes, self._options)  # fmt: skip
        except ValueError as error:
            num_slots = num_physical // self._num_ranks
            msg = (f"eplb_policy_type: {self._policy} cannot plan {self._num_experts} experts on "
                   f"{self._num_ranks} ranks x {num_slots} slots (num_redundant_experts / expert_map_path): {error}")
            raise ValueError(msg) from error

    def _planning_leader(
        self, config: EplbConfig, ranks_per_node: int | None
    ) -> tuple[int, dist.ProcessGroup | None]:
        """(global rank planning for this rank, the group it broadcasts the plan to). Building
        the node groups is collective: every rank builds all of them."""
        if self._group is None:
            return 0, None
        if config.planner_placement == "per_rank":
            return self._rank, None  # every rank plans for itself; only the checksum is shared
        if config.planner_placement == "rank0" or ranks_per_node is None or ranks_per_node == self._num_ranks:
            return 0, self._group
        ranks_per_node = check_divisor(ranks_per_node, "ranks_per_node", self._num_ranks, f"{self._num_ranks} ranks")
        nodes = [list(range(start, start + ranks_per_node)) for start in range(0, self._num_ranks, ranks_per_node)]
        groups = [dist.new_group(ranks, backend="gloo") for ranks in nodes]
        node = self._rank // ranks_per_node
        return nodes[node][0], groups[node]

    @property
    def table(self) -> IntArray:
        """int64 [L, D, S], the placement in force."""
        return self.loader.table

    @property
    def updating(self) -> bool:
        """True while an update's layers are being moved (the same on every rank)."""
        return self._current is not None

    @property
    def idle(self) -> bool:
        """True when no window is being planned, handed over or applied (the same on every
        rank at the same step)."""
        return self._request is None and self._round is None and self._current is None and not self.loader.pending

    def request_for(self, window: HeatWindow, table: IntArray | None = None) -> PlanRequest:
        """The planning request this manager makes from ``window`` and the placement ``table``
        int64 [L, D, S] (default: the one in force): its counts, policy, options, topology and
        FlashLB memory."""
        table = self.loader.table if table is None else table
        return PlanRequest(
            window.counts, self._num_ranks, self._policy, self._options,
            current=table.reshape(table.shape[0], -1), num_groups=self._num_groups,
            num_nodes=self._num_nodes, planned_balance=self.planned.balance.copy(),
            num_threads=self.config.num_planner_threads,
        )  # fmt: skip

    def warm_up(self, wait_s: float = 60.0) -> None:
        """One full cycle during memory profiling: a heat all-reduce, a plan from the worker,
        the plan hand-over, and the transfer and apply of one layer (moved away and back, so
        the placement is unchanged). Allocates the staging buffers now (the heat recorder
        allocates its window buffers when built); afterwards no step allocates device memory."""
        table = self.loader.table
        empty = self._heat.gather()  # the all-reduce once, on every rank (an empty window is fine)
        if self.worker is not None and self.worker.wait_ready(wait_s):
            ones = np.ones((1, *empty.counts.shape[1:]), dtype=np.int64)
            warm = HeatWindow(ones, empty.rank_load, 0, 1)
            self.worker.wait(self.worker.submit(self.request_for(warm, table)), wait_s)
        self.loader.allocate()
        if self._group is not None:
            # The leaders waited for their workers; transfer timeouts count from here, on every rank.
            dist.barrier(group=self._group)
        moved = table.copy()
        flat = moved[0].reshape(-1)  # [P]: rotate the first slot of every rank (or swap two)
        positions = np.arange(self._num_ranks) * table.shape[2] if self._num_ranks > 1 else np.arange(min(2, flat.size))
        flat[positions] = np.roll(flat[positions], 1)
        # The plan hand-over once (broadcast, then checksum all-reduce), as an update does it.
        warm_plan = SharedPlan(np.zeros(1, dtype=np.int64), moved, 0.0) if self.worker is not None else None
        self.exchange.post(warm_plan)
        self.exchange.verify()
        self.exchange.result()
        if not np.array_equal(moved, table):
            for target in (moved, table):
                self.loader.schedule(target, [0])
                self.loader.run_to_completion()

    def pre_forward(self) -> None:
        """Before the forward step: posts this step's weight transfers (background)."""
        start = time.perf_counter()
        self.step_phases = []
        if self._request is not None:
            self.step_phases.append("planning")
        self.loader.pre_forward()
        if self.loader.pending:
            self.step_phases.append("transfer")
        self._pre_forward_ms = (time.perf_counter() - start) * 1e3

    def post_forward(self, stage: str | None = None) -> None:
        """After the forward step: records the heat, commits layers that arrived on all ranks,
        hands a new window to the planner and advances the plan hand-over by one stage.
        ``stage`` (``"prefill"`` / ``"decode"``): what the step was, required when
        ``eplb_heat_collection_stage`` is not ``all`` (``HeatRecorder.step``)."""
        self.step_idx += 1
        start = time.perf_counter()
        window = self._heat.step(defer_gather=True, stage=stage)  # the window of the step before, if any
        gather_ms = (time.perf_counter() - start) * 1e3
        self._finish_layers(self.loader.post_forward())
        if window is not None:
            self.last_window = (self.step_idx, window)
            self._log_balancedness(window)
            if self.heat_dump is not None:
                self.heat_dump.write(window)
            if self.config.dynamic_eplb and self._current is None and not self.loader.pending:
                self._submit(window, gather_ms)
        self._advance_plan()
        stall_ms = self._pre_forward_ms + (time.perf_counter() - start) * 1e3
        self._pre_forward_ms = 0.0
        self.stats.steps += 1
        self.stats.stall_ms += stall_ms
        self.stats.max_stall_ms = max(self.stats.max_stall_ms, stall_ms)

    def close(self) -> None:
        """Stops the worker process, the loader thread and the heat dump, and unregisters the
        Prometheus metrics."""
        if self.worker is not None:
            self.worker.close()
        self.loader.close()
        if self.heat_dump is not None:
            self.heat_dump.close()
        if self._collector is not None:
            self._collector.registry.unregister(self._collector)
            self._collector = None

    def _log_balancedness(self, window: HeatWindow) -> None:
        """Every window: ``stats.balancedness`` (mean / max rank load, mean over layers, as
        vLLM's log_balancedness); rank 0 logs PAR (busiest / mean rank), mean and max over
        layers."""
        par = peak_to_average(window.rank_load)  # [L]
        self.stats.windows += 1
        self.stats.balancedness = float(np.mean(1.0 / par))
        if self._rank != 0 or not logger.isEnabledFor(logging.INFO):
            return
        logger.info("EPLB balancedness, steps %d..%d (%d counted): PAR mean %.3f, max %.3f (layer %d) over %d layers",
                    window.first_step, window.first_step + window.num_steps - 1, window.num_steps,
                    float(par.mean()), float(par.max()), int(par.argmax()), par.size)

    def _submit(self, window: HeatWindow, gather_ms: float) -> None:
        """Every rank: a new request replaces any unanswered one; leaders hand it to the worker."""
        self.step_phases.append("submit")
        table = self.loader.table
        request = _Request(self.step_idx, self.step_idx + self.config.algorithm_execution_interval,
                           table.reshape(table.shape[0], -1), gather_ms)
        if self.worker is not None:
            request.request_id = self.worker.submit(self.request_for(window, table))
        self._request = request

    def _advance_plan(self) -> None:
        """One stage of the plan hand-over per step: answers posted (broadcast), checksum and
        "not ready" comparison posted, schedule (or start over when a plan was not ready). All
        stages at once when synchronous or in a single process (nothing to overlap)."""
        all_at_once = self._synchronous or self._group is None
        while True:
            if self.exchange.stage == "idle":
                request = self._request
                if request is None or self.step_idx < request.due_step:
                    return
                self.step_phases.append("pickup")
                self._round = request
                shared, pending = self._pickup(request)
                self.exchange.post(shared, pending=pending)
            elif self.exchange.stage == "broadcast":
                self.step_phases.append("verify")
                self.exchange.verify()
            else:
                pending, shared = self.exchange.result()
                request, self._round = self._round, None
                if pending:
                    self.step_phases.append("not ready")
                    return
                self.step_phases.append("schedule")
                if request is self._request or shared is not None:
                    self._request = None  # answered (a plan scheduled now outdates a newer request)
                if shared is not None and request is not None:
                    self._schedule(request, shared)
                return
            if not all_at_once:
                return

    def _pickup(self, request: _Request) -> tuple[SharedPlan | None, bool]:
        """Planning leaders: (the worker's valid plan or None, False), or (None, True) while it is
        not ready; other ranks: (None, False), they receive the leader's."""
        if self.worker is None or request.request_id is None:
            return None, False
        answer = self.worker.poll(request.request_id)
        if answer is None and not request.waited and self.config.max_plan_wait_s > 0:
            request.waited = True
            start = time.perf_counter()
            answer = self.worker.wait(request.request_id, self.config.max_plan_wait_s)
            request.wait_ms = (time.perf_counter() - start) * 1e3
        if answer is None:
            return None, True
        if isinstance(answer, PlanFailure) or answer.outcome.layers.size == 0:
            return None, False
        return self._checked(request, answer), False

    def _checked(self, request: _Request, answer: PlanResult) -> SharedPlan | None:
        outcome = answer.outcome
        try:
            check_plan_result(outcome, request.phy2log, self._num_ranks, self._num_experts)
        except ValueError as error:
            self.stats.rejected_plans += 1
            logger.error("EPLB plan rejected, nothing applied: %s", error)
            return None
        request.balance = dict(zip(outcome.layers.tolist(), outcome.balance.tolist(), strict=True))
        before, after = outcome.par_before, outcome.par_after
        par = (float(before.mean()), float(before.max()), float(after.mean()), float(after.max()))
        new_table = outcome.new_phy2log.reshape(self.loader.table.shape)
        return SharedPlan(outcome.layers, new_table, outcome.plan_ms, par)

    def _schedule(self, request: _Request, shared: SharedPlan) -> None:
        """All ranks hold ``shared``: queue its layers on the loader."""
        layers = shared.layers
        if len(layers) == 0:
            return
        self._balance = request.balance
        par_before, par_max_before, par_after, par_max_after = shared.par
        self._current = UpdateRecord(
            request.window_step, self.step_idx, np.asarray(layers, dtype=np.int64), par_before, par_after,
            par_max_before, par_max_after, request.gather_ms, shared.plan_ms, request.wait_ms,
        )  # fmt: skip
        self.loader.schedule(shared.new_table, [int(layer) for layer in layers])
        if self._synchronous:
            self._finish_layers(self.loader.run_to_completion())
        if not self.loader.pending:
            self._end_update()

    def _finish_layers(self, results: list[LayerUpdate]) -> None:
        if results:
            self.step_phases.append("commit")
        for update in results:  # also layers scheduled on the loader directly
            self.stats.layers_applied += int(update.applied)
            self.stats.layers_abandoned += int(not update.applied)
            self.stats.bytes_moved += update.global_bytes
        record = self._current
        if not results or record is None:
            return
        for update in results:
            (record.applied if update.applied else record.abandoned).append(update.layer_idx)
            if update.applied and update.layer_idx in self._balance:
                self.planned.record([update.layer_idx], [self._balance[update.layer_idx]])
            record.num_copies += update.num_copies
            record.global_bytes += update.global_bytes
            record.transfer_ms += update.transfer_ms
            record.apply_ms += update.apply_ms
            log = logger.info if self._profile else logger.debug
            log("EPLB layer %d %s: %d copies on this rank, %d bytes all ranks",
                update.layer_idx, "applied" if update.applied else "abandoned",
                update.num_copies, update.global_bytes)
        if not self.loader.pending:
            self._end_update()

    def _end_update(self) -> None:
        record, self._current = self._current, None
        self._balance = {}
        if record is None:
            return
        self.updates.append(record)
        self.stats.updates += 1
        self._record_placement()
        log: Any = logger.info if self._rank == 0 or self._profile else logger.debug
        log(
            "EPLB update (heat of step %d, scheduled at step %d): layers %s applied%s; window PAR "
            "mean %.3f -> %.3f, max %.3f -> %.3f; %d experts moved here, %.1f MB moved; gather "
            "%.1f ms, plan %.1f ms (+%.1f ms wait), transfer %.1f ms, apply %.1f ms",
            record.window_step, record.schedule_step, record.applied,
            f", {record.abandoned} abandoned" if record.abandoned else "", record.par_before,
            record.par_after, record.par_max_before, record.par_max_after, record.num_copies,
            record.global_bytes / 1e6, record.gather_ms, record.plan_ms, record.wait_ms,
            record.transfer_ms, record.apply_ms,
        )  # fmt: skip

    def _install(self, layer_idx: int, row: IntArray) -> None:
        """The loader's commit: the layer's maps copied in place (the slot tensors, scales
        included, already hold the new weights)."""
        layer = self._layers[layer_idx]
        layer.install(row.reshape(-1), *layer.experts.weight_kinds)

    def _record_placement(self) -> None:
        path = self.config.expert_map_record_path
        if path is None or self._rank != 0:
            return
        table = self.loader.table
        plan = Plan.from_phy2log(table.reshape(table.shape[0], -1), self._num_experts)
        save_expert_map(plan, path, self._num_ranks, allow_duplicate_on_rank=True)


__all__ = ["EplbUpdateManager", "UpdateRecord", "initial_plan"]
