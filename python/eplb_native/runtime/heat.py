"""Expert heat recording: per-step token counts of this rank's slots, turned into per-step
counts of the logical experts and summed over every rank once per collection window."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
import torch.distributed as dist

from eplb_native.checks import check_int, check_positive_int
from eplb_native.config import HEAT_STAGES, EplbConfig, HeatStage
from eplb_native.layers import MoeLayerMap
from eplb_native.plan import Plan, layer_plan, validate_plan
from eplb_native.runtime._dist import group_rank_and_size

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeatWindow:
    """Heat of every rank over one collection window, step by step (no episodes: a policy that
    uses them folds the steps itself).

    Attributes:
        counts: int64 [T, L, N], tokens routed to each logical expert in each counted step,
            all ranks and replicas summed (each step under the placement it ran with).
        rank_load: int64 [L, D], tokens each rank's slots processed over the window.
        first_step: counted steps before the window's first one (0 for the first window).
        num_steps: T, the counted steps the window covers.
    """

    counts: npt.NDArray[np.int64]
    rank_load: npt.NDArray[np.int64]
    first_step: int
    num_steps: int


class HeatRecorder:
    """Counts the tokens this rank's physical slots process, step by step, for every MoE layer.

    Example:
        >>> import torch, eplb_native
        >>> from eplb_native.runtime import HeatRecorder
        >>> plan = eplb_native.default_placement(num_layers=1, num_experts=4, num_ranks=1)
        >>> heat = HeatRecorder(plan, collection_interval=2)
        >>> heat.record(0, torch.tensor([[0, 1], [1, 3]]))
        >>> heat.step() is None
        True
        >>> heat.step().counts[:, 0].tolist()
        [[1, 2, 0, 1], [0, 0, 0, 0]]

    Each MoE layer owns one row of a preallocated int64 ``[L, S]`` counter, reused every step.
    The fused operator accumulates into it in place (pass ``buffer(layer)`` as ``moe_load``);
    layers that use another kernel call ``record(layer, topk_ids)`` (fixed-shape, sync-free:
    graph-capturable, like the operator's accumulation). The counts are what this rank's slots
    processed, so the window's ``rank_load`` is the measured load under whatever replica routing
    the layers use (``eplb_native.routing``: ``fixed`` or ``spread``). ``step()`` adds the step's
    counts to row t of an int64 ``[T, L, N]`` window in expert space (each local slot's count
    goes to the logical expert the slot holds; ``T = collection_interval``) and, every
    ``collection_interval`` counted steps, sums all ranks' windows with one all-reduce and
    returns the result as a ``HeatWindow``. Every rank must call ``step()`` at the same steps
    with the same ``stage`` (it is a collective then). With ``step(defer_gather=True)`` the
    all-reduce runs in the background instead and the window is returned by the next
    ``step()``, one step later, so no step waits on a collective posted in that same step.
    Works without torch.distributed (one rank).

    Device memory: two ``[T, L, N]`` int64 windows (the one filling and the one being summed),
    logged at INFO when built.

    NOTE: a step's counts are attributed with the placement in force when ``step()`` runs:
    call it after the forward and before installing a new placement (``set_layer_placement``,
    which ``EplbMoE.install`` calls), as ``EplbUpdateManager.post_forward`` does.
    """

    def __init__(
        self,
        plan: Plan,
        *,
        collection_interval: int,
        layer_map: MoeLayerMap | None = None,
        group: dist.ProcessGroup | None = None,
        device: torch.device | str = "cpu",
        collection_stage: HeatStage = "all",
    ) -> None:
        """
        Args:
            plan: the placement in force, L MoE layers of P physical slots.
            collection_interval: counted steps per window (config
                ``expert_heat_collection_interval``), > 0.
            layer_map: model layer -> MoE layer map (dense layers have no counter); default:
                every model layer is a MoE layer.
            group: the expert-parallel process group (None: the default group, or a single
                process when torch.distributed is not initialised).
            device: where the counters live (the device the MoE kernels run on).
            collection_stage: which forward passes count (config
                ``eplb_heat_collection_stage``): ``all``, or only ``prefill`` / ``decode``
                ones; the others' counts are dropped and they do not count toward the window
                (``step(stage=...)`` says which it was).
        """
        check_positive_int(collection_interval, "collection_interval")
        if collection_stage not in HEAT_STAGES:
            msg = f"collection_stage: expected one of {', '.join(HEAT_STAGES)}, got {collection_stage!r}"
            raise ValueError(msg)
        self.collection_stage = collection_stage
        self._rank, self._num_ranks = group_rank_and_size(group)
        # Two replicas on one rank are legal here (a policy choice, not a runtime limit).
        validate_plan(plan, self._num_ranks, allow_duplicate_on_rank=True)
        self._group = group
        self._num_experts = plan.num_experts
        self._phy2log = plan.phy2log.copy()  # [L, P], the placement in force
        num_layers, num_physical = self._phy2log.shape
        if layer_map is None:
            layer_map = MoeLayerMap.all_moe(num_layers)
        if layer_map.num_moe_layers != num_layers:
            msg = f"layer_map: has {layer_map.num_moe_layers} MoE layers, the plan has {num_layers}"
            raise ValueError(msg)
        self.layer_map = layer_map
        self.collection_interval = collection_interval
        self.num_slots = num_physical // self._num_ranks
        # [L, S + 1]: each layer's slot counts, then a discard bucket for ids of other ranks.
        self._step_counts = torch.zeros((num_layers, self.num_slots + 1), dtype=torch.int64, device=device)
        # The logical expert of each local slot, [L, S]: where a slot's count goes.
        self._slot_expert = torch.as_tensor(self._local_experts(self._phy2log), device=device).contiguous()
        # The window and the rank loads, one flat buffer so that one all-reduce sums both:
        # [T * L * N] expert counts, then [L * D] tokens per rank (this rank's column only).
        window_size = collection_interval * num_layers * self._num_experts
        self._window_size = window_size
        self._buffer = torch.zeros(window_size + num_layers * self._num_ranks, dtype=torch.int64, device=device)
        # A deferred all-reduce sums this copy while the window fills again.
        self._outgoing = torch.zeros_like(self._buffer)
        # (work or None, first step, steps): a deferred all-reduce in flight.
        self._deferred: tuple[dist.Work | None, int, int] | None = None
        self._steps_in_window = 0
        self._num_counted = 0
        logger.info("EPLB heat window: %d steps x %d layers x %d experts, int64, 2 x %.1f MB on %s",
                    collection_interval, num_layers, self._num_experts, self._buffer.numel() * 8 / 1e6,
                    self._buffer.device)

    @classmethod
    def from_config(cls, config: EplbConfig, plan: Plan, **kwargs: object) -> HeatRecorder:
        """Window length and collection stage from ``config``; other arguments as the
        constructor."""
        return cls(
            plan,
            collection_interval=config.expert_heat_collection_interval,
            collection_stage=config.eplb_heat_collection_stage,
            **kwargs,  # type: ignore[arg-type]
        )

    @property
    def num_layers(self) -> int:
        return int(self._step_counts.shape[0])

    @property
    def phy2log(self) -> npt.NDArray[np.int64]:
        """The placement the recorder attributes counts with, int64 [L, P] (a copy)."""
        return self._phy2log.copy()

    def _local_experts(self, phy2log: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """This rank's slots' logical experts, int64 [L, S], from phy2log [L, P]."""
        start = self._rank * self.num_slots
        return np.array(phy2log[:, start : start + self.num_slots], dtype=np.int64)  # a writable copy

    def _check_layer(self, layer_idx: int) -> None:
        check_int(layer_idx, "layer_idx", minimum=0, below=self.num_layers)

    def buffer(self, layer_idx: int) -> torch.Tensor:
        """MoE layer ``layer_idx``'s step counter, int64 [S], contiguous: the operator's
        ``moe_load`` (it adds each local slot's token count in place). Always the same memory."""
        self._check_layer(layer_idx)
        return self._step_counts[layer_idx, : self.num_slots]

    def buffer_for_model_layer(self, model_layer_idx: int) -> torch.Tensor | None:
        """As ``buffer`` for a model layer index; None for a dense layer (nothing to record)."""
        moe_idx = self.layer_map.moe_index(model_layer_idx)
        return None if moe_idx is None else self.buffer(moe_idx)

    def record(self, layer_idx: int, topk_ids: torch.Tensor) -> None:
        """Counts one forward call of a layer whose kernel does not accumulate by itself.

        Args:
            layer_idx: the MoE layer index.
            topk_ids: integer tensor of any shape (e.g. [BS, K]), this rank's local physical
                slot ids of the routed (token, k) pairs; ids outside [0, S) are skipped, as
                the operator skips them.

        Fixed-shape and sync-free (ids outside [0, S) are counted into a discard bucket, never
        filtered out), so it runs on the ``meta`` device, traces with
        ``torch.compile(fullgraph=True)`` and can be captured in a CUDA graph.
        """
        self._check_layer(layer_idx)
        if not isinstance(topk_ids, torch.Tensor):
            msg = f"topk_ids: expected a torch.Tensor, got {type(topk_ids).__name__}"
            raise TypeError(msg)
        if topk_ids.dtype not in (torch.int32, torch.int64, torch.int16, torch.int8, torch.uint8):
            msg = f"topk_ids: expected an integer tensor, got dtype {topk_ids.dtype}"
            raise TypeError(msg)
        ids = topk_ids.reshape(-1).to(device=self._step_counts.device, dtype=torch.int64)
        slots = torch.where((ids >= 0) & (ids < self.num_slots), ids, self.num_slots)
        self._step_counts[layer_idx].scatter_add_(0, slots, torch.ones_like(slots))

    def set_layer_placement(self, layer_idx: int, phy2log_row: Plan | npt.ArrayLike) -> None:
        """Installs a new placement for one MoE layer: steps recorded from now on attribute
        their counts with it (see the class NOTE on timing).

        Args:
            layer_idx: the MoE layer index.
            phy2log_row: int64 [P], the logical expert of each physical slot (or its
                ``layer_plan``).
        """
        self._check_layer(layer_idx)
        row = layer_plan(phy2log_row, self._num_experts, self._num_ranks)
        if row.num_physical != self._phy2log.shape[1]:
            msg = f"phy2log_row: expected {self._phy2log.shape[1]} slots, got {row.num_physical}"
            raise ValueError(msg)
        self._phy2log[layer_idx] = row.phy2log[0]
        self._slot_expert[layer_idx].copy_(torch.from_numpy(self._local_experts(row.phy2log)[0]))

    def step(self, *, defer_gather: bool = False, stage: str | None = None) -> HeatWindow | None:
        """Ends one forward step: adds its counts to the window (in expert space) and clears them.

        Returns the window summed over all ranks every ``collection_interval`` counted steps
        (then starts a new window), else None. A collective on those steps. With
        ``defer_gather`` the all-reduce is only posted on that step and its window is returned
        by the next call instead (which waits for it: normally done during the forward step in
        between), whatever that call's stage.

        ``stage`` (``"prefill"`` or ``"decode"``) says what the step was; required unless
        ``collection_stage`` is ``all``. A step of the other stage is not counted: its counts
        are dropped and the window does not advance (every rank must name the same stage).
        """
        counted = True
        if self.collection_stage != "all":
            if stage not in ("prefill", "decode"):
                msg = (f"stage: expected 'prefill' or 'decode' (heat is collected on "
                       f"{self.collection_stage} steps only), got {stage!r}")
                raise ValueError(msg)
            counted = stage == self.collection_stage
        deferred = self._finish_deferred()
        if not counted:
            self._step_counts.zero_()
            return deferred
        num_layers, num_experts = self.num_layers, self._num_experts
        row = self._buffer[: self._window_size].view(-1, num_layers, num_experts)[self._steps_in_window]
        step_counts = self._step_counts[:, : self.num_slots]  # [L, S]
        row.scatter_add_(1, self._slot_expert, step_counts)  # [L, N] += [L, S] by expert
        rank_load = self._buffer[self._window_size :].view(num_layers, self._num_ranks)[:, self._rank]
        rank_load += step_counts.sum(dim=1)
        self._step_counts.zero_()
        self._steps_in_window += 1
        self._num_counted += 1
        if self._steps_in_window < self.collection_interval:
            return deferred
        num_steps, first_step = self._steps_in_window, self._num_counted - self._steps_in_window
        result = None
        if defer_gather:
            self._outgoing.copy_(self._buffer)
            work = None if self._num_ranks == 1 else dist.all_reduce(self._outgoing, group=self._group, async_op=True)
            self._deferred = (work, first_step, num_steps)
        else:
            result = self._sum_over_ranks(first_step, num_steps)
        self._buffer.zero_()
        self._steps_in_window = 0
        return deferred if result is None else result

    def gather(self) -> HeatWindow:
        """Sums every rank's window so far (its counted steps) without resetting it. A
        collective: every rank calls it at the same step."""
        num_steps = self._steps_in_window
        return self._sum_over_ranks(self._num_counted - num_steps, num_steps)

    def _sum_over_ranks(self, first_step: int, num_steps: int) -> HeatWindow:
        self._outgoing.copy_(self._buffer)
        if self._num_ranks > 1:
            dist.all_reduce(self._outgoing, group=self._group)
        return self._window(first_step, num_steps)

    def _finish_deferred(self) -> HeatWindow | None:
        """The window of the all-reduce posted a step ago (waited for: normally done), or None."""
        if self._deferred is None:
            return None
        work, first_step, num_steps = self._deferred
        self._deferred = None
        if work is not None:
            work.wait()
        return self._window(first_step, num_steps)

    def _window(self, first_step: int, num_steps: int) -> HeatWindow:
        """The HeatWindow of the summed buffer's first ``num_steps`` steps (host copies)."""
        num_layers, num_experts = self.num_layers, self._num_experts
        summed = self._outgoing.to("cpu", copy=True).numpy()
        counts = summed[: self._window_size].reshape(-1, num_layers, num_experts)[:num_steps]
        rank_load = summed[self._window_size :].reshape(num_layers, self._num_ranks)
        logger.debug("summed heat of %d steps over %d ranks", num_steps, self._num_ranks)
        return HeatWindow(counts=counts, rank_load=rank_load, first_step=first_step, num_steps=num_steps)


__all__ = ["HeatRecorder", "HeatWindow"]
