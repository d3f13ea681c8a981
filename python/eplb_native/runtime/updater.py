"""EplbUpdateManager: the dynamic EPLB loop (heat in, plan from a worker process, weights moved
layer by layer while serving continues), called around every forward step.

Schedule (identical on every rank, so every collective lines up): every
``expert_heat_collection_interval`` steps the heat window is gathered and, when no update is in
progress, on the next step each planning leader (rank 0; with ``planner_placement="per_node"``
the first rank of every node; with ``"per_rank"`` every rank) hands it to its planner worker;
``algorithm_execution_interval`` steps later the leaders pick the answer up (waiting at most
``plan_wait_s``), check it and start broadcasting it (``PlanExchange``); the next step every
rank starts comparing the plan's checksum across all ranks, and the step after that the plan
is scheduled only if all ranks hold the same one. The loader then moves the changed layers,
``max_layers_per_step`` per step, in the policy's priority order, each layer's transfers and
commit vote overlapping a forward step. The heat window's gather also runs in the background
(``HeatRecorder.step(defer_gather=True)``): the window reaches the manager one step after it
closed. So no step waits on a collective posted in that same step; a wait normally finds the
collective done during the forward in between.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch.distributed as dist

from eplb_native.config import EplbConfig
from eplb_native.expert_map import load_expert_map, save_expert_map
from eplb_native.plan import Plan, default_placement, mean_par, slot_load_from_expert_load
from eplb_native.runtime._dist import group_rank_and_size
from eplb_native.runtime.heat import HeatRecorder, HeatWindow
from eplb_native.runtime.loader import LayerUpdate, WeightLoader
from eplb_native.runtime.moe import EplbMoE
from eplb_native.runtime.plan_exchange import PlanExchange, SharedPlan
from eplb_native.runtime.worker import PlannerWorker, PolicyFactory, PolicySpec, check_plan_result

logger = logging.getLogger(__name__)

IntArray = npt.NDArray[np.int64]


def initial_plan(config: EplbConfig, num_layers: int, num_experts: int, num_ranks: int) -> Plan:
    """The placement to build the model with: ``expert_map_path`` when set, else the default
    layout with ``num_redundant_experts`` copies. ValueError when the file's shape disagrees."""
    if config.expert_map_path is None:
        return default_placement(num_layers, num_experts, num_ranks, config.num_redundant_experts)
    plan = load_expert_map(config.expert_map_path, allow_duplicate_on_rank=True)
    if (plan.num_layers, plan.num_experts) != (num_layers, num_experts):
        msg = (f"expert_map_path: {config.expert_map_path} places {plan.num_experts} experts on "
               f"{plan.num_layers} layers, the model has {num_experts} experts on {num_layers} MoE layers")
        raise ValueError(msg)
    plan.slots_per_rank(num_ranks)
    return plan


@dataclass
class UpdateRecord:
    """One update, from the heat window to its last layer (logged at INFO when it ends).

    Attributes:
        window_step: the step whose heat window was planned from.
        layers: int64 [k], the layers the plan changes, in priority order.
        par_before, par_after: PAR of the window's expert load under the old and new placement.
        gather_ms: waiting for the window's gather (posted a step earlier) and converting it, ms.
        plan_ms: the policy's time in the worker, ms.
        wait_ms: time the pick-up step waited for the worker, ms (0 when it was ready).
        transfer_ms, apply_ms: summed over the update's steps, ms.
        applied, abandoned: layers committed on all ranks / abandoned after a failed transfer.
        num_copies: expert copies made on this rank; global_bytes: bytes moved, all ranks.
    """

    window_step: int
    layers: IntArray
    par_before: float
    par_after: float
    gather_ms: float
    plan_ms: float
    wait_ms: float
    transfer_ms: float = 0.0
    apply_ms: float = 0.0
    applied: list[int] = field(default_factory=list)
    abandoned: list[int] = field(default_factory=list)
    num_copies: int = 0
    global_bytes: int = 0


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
            manager.post_forward()       # heat, plan pick-up, commit of arrived layers
        manager.close()

    Args:
        config: the EPLB settings (``dynamic_eplb`` False: heat is still recorded, the
            placement never changes).
        moe_layers: the EplbMoE block of each MoE layer, indexed by MoE layer (dense layers are
            not in it; see ``MoeLayerMap``).
        heat: the recorder the blocks accumulate into.
        policy_factory: builds the policy in the worker (default: ``config``'s policy).
        ranks_per_node: ranks per node, for same-node transfer sources and, with
            ``config.planner_placement == "per_node"``, one planner worker per node (None: one
            node). Must divide the number of ranks.
        transfer_timeout_s: seconds a layer's transfer may take before it is abandoned.
        plan_wait_s: longest wait for the worker at the pick-up step, s.
        profile: log each update's per-layer detail at INFO (else DEBUG).
        synchronous: run the plan hand-over and move all layers of an update at its pick-up
            step, stopping the world (the baseline the asynchronous path is measured against).
        side_stream: the loader's transfer mode (``WeightLoader``): a side stream posted from
            this thread (GPU/NPU weights) or a background thread (CPU); None: by the device.

    Attributes:
        step_phases: the update work the last step did, in order: ``"planning"`` (a planner
            worker is computing during its forward), ``"transfer"`` (weights in flight during
            its forward), ``"commit"`` (layers applied or abandoned),
            ``"submit"`` (heat handed to the planner), ``"pickup"`` (plan picked up, broadcast
            posted), ``"verify"`` (checksum comparison posted), ``"schedule"`` (plan accepted or
            refused). Empty on steady steps (recording heat and gathering a window that is not
            planned from are not update work).
    """

    def __init__(
        self,
        config: EplbConfig,
        moe_layers: Sequence[EplbMoE],
        heat: HeatRecorder,
        *,
        policy_factory: PolicyFactory | None = None,
        ranks_per_node: int | None = None,
        transfer_timeout_s: float = 30.0,
        plan_wait_s: float = 5.0,
        profile: bool = False,
        synchronous: bool = False,
        side_stream: bool | None = None,
    ) -> None:
        if len(moe_layers) != heat.num_layers:
            msg = f"moe_layers: {len(moe_layers)} blocks, the heat recorder has {heat.num_layers} MoE layers"
            raise ValueError(msg)
        self.config = config
        self._layers = list(moe_layers)
        self._heat = heat
        self._rank, self._num_ranks = group_rank_and_size(None)
        self._num_experts = self._layers[0].experts.num_experts
        self._plan_wait_s = plan_wait_s
        self._profile = profile
        self._synchronous = synchronous
        self._log_heat_after = False
        table = np.stack([layer.experts.phy2log for layer in self._layers])  # [L, P]
        table = table.reshape(len(self._layers), self._num_ranks, -1)  # [L, D, S]
        self.loader = WeightLoader(
            [[list(layer.experts.w1), list(layer.experts.w2)] for layer in self._layers],
            self._install, table, self._rank,
            ranks_per_node=ranks_per_node, max_layers_per_step=config.max_layers_per_step,
            timeout_s=transfer_timeout_s, side_stream=side_stream,
        )  # fmt: skip
        self._group = dist.new_group(backend="gloo") if self._num_ranks > 1 else None
        leader, source_group = self._planning_leader(config, ranks_per_node)
        self.exchange = PlanExchange(table.shape, leader=leader, source_group=source_group, check_group=self._group)
        factory = policy_factory or PolicySpec(config.policy, num_threads=config.num_planner_threads)
        self.worker = PlannerWorker(factory) if config.dynamic_eplb and self._rank == leader else None
        self.step_idx = 0
        self.step_phases: list[str] = []
        self.updates: list[UpdateRecord] = []  # finished updates, oldest first
        self.last_window: tuple[int, HeatWindow] | None = None  # (step, heat) of the last window
        self.num_rejected_plans = 0
        self._pickup_step: int | None = None
        self._planned: tuple[int, HeatWindow, float, IntArray] | None = None
        self._wait_ms = 0.0
        self._current: UpdateRecord | None = None
        self._record_placement()

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
        if ranks_per_node <= 0 or self._num_ranks % ranks_per_node:
            msg = f"ranks_per_node: expected a positive divisor of {self._num_ranks} ranks, got {ranks_per_node}"
            raise ValueError(msg)
        nodes = [list(range(start, start + ranks_per_node)) for start in range(0, self._num_ranks, ranks_per_node)]
        groups = [dist.new_group(ranks, backend="gloo") for ranks in nodes]
        node = self._rank // ranks_per_node
        return nodes[node][0], groups[node]

    @property
    def table(self) -> IntArray:
        """int64 [L, D, S], the placement in force."""
        return self.loader.table

    def warm_up(self, wait_s: float = 60.0) -> None:
        """One full cycle during memory profiling: a heat gather, a plan from the worker, the plan
        hand-over, and the transfer and apply of one layer (moved away and back, so the placement
        is unchanged). Allocates the
        staging buffers now (the heat recorder allocates its gather buffer when built);
        afterwards no step allocates device memory."""
        table = self.loader.table
        self._heat.gather()  # the gather collective once, on every rank (an empty window is fine)
        if self.worker is not None and self.worker.start(wait_s=wait_s):
            workload = np.ones(table.shape, dtype=np.float64)
            if self.worker.submit(table, workload) is not None:
                self.worker.poll(timeout_s=wait_s)
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
        self.step_phases = []
        if self._pickup_step is not None:
            self.step_phases.append("planning")
        self.loader.pre_forward()
        if self.loader.pending:
            self.step_phases.append("transfer")

    def post_forward(self, stage: str | None = None) -> None:
        """After the forward step: folds the heat, commits layers that arrived on all ranks,
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
            if self._log_heat_after:
                self._log_heat_after = False
                if logger.isEnabledFor(logging.DEBUG):  # the sum is only worth computing then
                    logger.debug("EPLB heat after rebalance (expert load summed over the window) %s",
                                 window.expert_load.sum(axis=0).tolist())
            idle = self._pickup_step is None and self.exchange.stage == "idle" and not self.loader.pending
            if self.config.dynamic_eplb and idle:
                self._submit(window, gather_ms)
        self._advance_plan()

    def close(self) -> None:
        """Stops the worker process and the loader thread."""
        if self.worker is not None:
            self.worker.close()
        self.loader.close()

    def _submit(self, window: HeatWindow, gather_ms: float) -> None:
        self.step_phases.append("submit")
        table = self.loader.table
        if self.worker is not None:
            plan = Plan.from_phy2log(table.reshape(table.shape[0], -1), self._num_experts)
            # Slot heat re-derived under the placement in force: exact even when layers moved
            # during the window (the recorder converted each episode with its own placement).
            workload = slot_load_from_expert_load(plan, window.expert_load)  # [T, L, P]
            self.worker.submit(table, workload.reshape(-1, *table.shape))
        self._pickup_step = self.step_idx + self.config.algorithm_execution_interval
        self._planned = (self.step_idx, window, gather_ms, table)

    def _advance_plan(self) -> None:
        """One stage of the plan hand-over per step: pick-up (broadcast posted), verify
        (checksum comparison posted), schedule. All stages at once when synchronous or in a
        single process (nothing to overlap)."""
        all_at_once = self._synchronous or self._group is None
        while True:
            if self.exchange.stage == "idle":
                if self._pickup_step is None or self.step_idx < self._pickup_step:
                    return
                self.step_phases.append("pickup")
                self._pickup_step = None
                self.exchange.post(self._pickup())
            elif self.exchange.stage == "broadcast":
                self.step_phases.append("verify")
                self.exchange.verify()
            else:
                self.step_phases.append("schedule")
                self._schedule(self.exchange.result())
                return
            if not all_at_once:
                return

    def _pickup(self) -> SharedPlan | None:
        """Planning leaders: the worker's answer if it came within ``plan_wait_s`` and is valid
        (else None); other ranks: None (they receive the leader's)."""
        start = time.perf_counter()
        shared = None
        if self.worker is not None and self._planned is not None:
            result = self.worker.poll(timeout_s=self._plan_wait_s)
            if result is None:
                self.worker.cancel()
            elif result.changed:
                try:
                    check_plan_result(result, self._planned[3], self._num_experts)
                    shared = SharedPlan(result.layers, result.new_table, result.plan_ms)
                except ValueError as error:
                    self.num_rejected_plans += 1
                    logger.error("EPLB plan rejected, nothing applied: %s", error)
        self._wait_ms = (time.perf_counter() - start) * 1e3
        return shared

    def _schedule(self, shared: SharedPlan | None) -> None:
        """All ranks hold ``shared`` (or None): queue its layers on the loader."""
        planned, self._planned = self._planned, None
        if shared is None or planned is None:
            return
        window_step, window, gather_ms, table = planned
        layers = shared.layers
        if self.config.max_layers_per_update is not None:
            layers = layers[: self.config.max_layers_per_update]
        if len(layers) == 0:
            return
        num_layers = table.shape[0]
        load = window.expert_load
        old_plan = Plan.from_phy2log(table.reshape(num_layers, -1), self._num_experts)
        applied_table = table.copy()
        applied_table[layers] = shared.new_table[layers]
        new_plan = Plan.from_phy2log(applied_table.reshape(num_layers, -1), self._num_experts)
        self._current = UpdateRecord(
            window_step, np.asarray(layers, dtype=np.int64),
            mean_par(old_plan, load, self._num_ranks), mean_par(new_plan, load, self._num_ranks),
            gather_ms, shared.plan_ms, self._wait_ms,
        )  # fmt: skip
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("EPLB heat before rebalance (expert load summed over the window) %s",
                         load.sum(axis=0).tolist())
        self.loader.schedule(shared.new_table, [int(layer) for layer in layers])
        if self._synchronous:
            self._finish_layers(self.loader.run_to_completion())
        if not self.loader.pending:
            self._end_update()

    def _finish_layers(self, results: list[LayerUpdate]) -> None:
        if results:
            self.step_phases.append("commit")
        record = self._current
        if not results or record is None:
            return
        for update in results:
            (record.applied if update.applied else record.abandoned).append(update.layer_idx)
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
        if record is None:
            return
        self.updates.append(record)
        self._log_heat_after = True
        self._record_placement()
        logger.info(
            "EPLB update (heat of step %d): PAR %.3f -> %.3f, layers %s applied%s, %d experts "
            "moved here, %.1f MB moved; gather %.1f ms, plan %.1f ms (+%.1f ms wait), transfer "
            "%.1f ms, apply %.1f ms",
            record.window_step, record.par_before, record.par_after, record.applied,
            f", {record.abandoned} abandoned" if record.abandoned else "", record.num_copies,
            record.global_bytes / 1e6, record.gather_ms, record.plan_ms, record.wait_ms,
            record.transfer_ms, record.apply_ms,
        )  # fmt: skip

    def _install(self, layer_idx: int, row: IntArray) -> None:
        """The loader's commit: swap the layer's maps and weight list (weights already copied)."""
        layer = self._layers[layer_idx]
        layer.install(row.reshape(-1), list(layer.experts.w1), list(layer.experts.w2))

    def _record_placement(self) -> None:
        path = self.config.expert_map_record_path
        if path is None or self._rank != 0:
            return
        table = self.loader.table
        plan = Plan.from_phy2log(table.reshape(table.shape[0], -1), self._num_experts)
        save_expert_map(plan, path, self._num_ranks, allow_duplicate_on_rank=True)


__all__ = ["EplbUpdateManager", "UpdateRecord", "initial_plan"]
