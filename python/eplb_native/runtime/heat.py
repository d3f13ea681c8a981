"""Expert heat recording: per-step token counts of this rank's slots, folded into episodes and
gathered from every rank into logical loads for the planner."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
import torch.distributed as dist

from eplb_native.config import HEAT_STAGES, EplbConfig, HeatStage
from eplb_native.layers import MoeLayerMap
from eplb_native.plan import Plan, expert_load_from_slot_load, validate_plan
from eplb_native.runtime._dist import all_gather_into_tensor, group_rank_and_size

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeatWindow:
    """Heat of every rank over one collection window, oldest episode first.

    Attributes:
        slot_load: int64 [T, L, P], tokens each physical slot processed in each episode.
        expert_load: float64 [T, L, N], tokens routed to each logical expert in each episode
            (all replicas summed, using the placement in force during that episode).
        num_steps: forward steps the window covers.
    """

    slot_load: npt.NDArray[np.int64]
    expert_load: npt.NDArray[np.float64]
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
        >>> heat.step().expert_load[:, 0].tolist()
        [[1.0, 2.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]]

    Each MoE layer owns one row of a preallocated int64 ``[L, S]`` counter, reused every step.
    The fused operator accumulates into it in place (pass ``buffer(layer)`` as ``moe_load``);
    layers that use another kernel call ``record(layer, topk_ids)``. ``step()`` adds the step's
    counts into the current episode of a ``[T, L, S]`` window (``episode_steps`` steps per
    episode, ``T = ceil(collection_interval / episode_steps)``) and, every
    ``collection_interval`` steps, gathers all ranks' windows with one all-gather and returns
    them as a ``HeatWindow``. Every rank must call ``step()`` at the same steps (it is a
    collective then). With ``step(defer_gather=True)`` the window's all-gather runs in the
    background instead and the window is returned by the next ``step()``, one step later, so
    no step waits on a collective posted in that same step. Works without torch.distributed
    (one rank).

    NOTE: an episode's slot counts are converted to logical loads with the placement in force
    when the episode closes; apply placement changes (``set_layer_placement``) at episode
    boundaries (``episode_steps=1`` makes every step one) or the changed layer's counts of
    that episode are attributed to the new placement.
    """

    def __init__(
        self,
        plan: Plan,
        *,
        collection_interval: int,
        episode_steps: int = 1,
        layer_map: MoeLayerMap | None = None,
        group: dist.ProcessGroup | None = None,
        device: torch.device | str = "cpu",
        collection_stage: HeatStage = "all",
    ) -> None:
        """
        Args:
            plan: the placement in force, L MoE layers of P physical slots.
            collection_interval: steps per gathered window (config
                ``expert_heat_collection_interval``), > 0.
            episode_steps: steps folded into one episode, > 0.
            layer_map: model layer -> MoE layer map (dense layers have no counter); default:
                every model layer is a MoE layer.
            group: the expert-parallel process group (None: the default group, or a single
                process when torch.distributed is not initialised).
            device: where the counters live (the device the MoE kernels run on).
            collection_stage: which forward passes count (config
                ``eplb_heat_collection_stage``): ``all``, or only ``prefill`` / ``decode``
                ones; the others' counts are dropped (``step(stage=...)`` says which it was).
        """
        for value, field in (
            (collection_interval, "collection_interval"),
            (episode_steps, "episode_steps"),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                msg = f"{field}: expected a positive integer, got {value!r}"
                raise ValueError(msg)
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
        self.episode_steps = episode_steps
        self.num_slots = num_physical // self._num_ranks
        num_episodes = math.ceil(collection_interval / episode_steps)
        shape = (num_layers, self.num_slots)
        self._step_counts = torch.zeros(shape, dtype=torch.int64, device=device)  # [L, S]
        self._window = torch.zeros(
            (num_episodes, *shape), dtype=torch.int64, device=device
        )  # [T, L, S]
        # Every rank's window, rank after rank: the all-gather's preallocated output, [D * T, L, S]
        # (gloo wants the ranks concatenated along dim 0, not stacked in a new one).
        self._gathered = torch.zeros(
            (self._num_ranks * num_episodes, *shape), dtype=torch.int64, device=device
        )
        # A deferred gather sends this copy while the window fills again, [T, L, S].
        self._outgoing = torch.zeros_like(self._window)
        # (work or None, episodes filled, their placements [T', L, P], steps): a deferred gather.
        self._deferred: tuple[dist.Work | None, int, npt.NDArray[np.int64], int] | None = None
        self._episode_phy2log = np.repeat(self._phy2log[None], num_episodes, axis=0)  # [T, L, P]
        self._episode_idx = 0
        self._steps_in_episode = 0
        self._steps_in_window = 0

    @classmethod
    def from_config(cls, config: EplbConfig, plan: Plan, **kwargs: object) -> HeatRecorder:
        """Window and episode lengths and the collection stage from ``config``; other
        arguments as the constructor."""
        return cls(
            plan,
            collection_interval=config.expert_heat_collection_interval,
            episode_steps=config.episode_steps,
            collection_stage=config.eplb_heat_collection_stage,
            **kwargs,  # type: ignore[arg-type]
        )

    @property
    def num_layers(self) -> int:
        return int(self._step_counts.shape[0])

    @property
    def num_episodes(self) -> int:
        """T, the episodes of one window."""
        return int(self._window.shape[0])

    @property
    def phy2log(self) -> npt.NDArray[np.int64]:
        """The placement the recorder converts with, int64 [L, P] (a copy)."""
        return self._phy2log.copy()

    def _check_layer(self, layer_idx: int) -> None:
        if (
            isinstance(layer_idx, bool)
            or not isinstance(layer_idx, int)
            or not 0 <= layer_idx < self.num_layers
        ):
            msg = f"layer_idx: expected an index in [0, {self.num_layers}), got {layer_idx!r}"
            raise ValueError(msg)

    def buffer(self, layer_idx: int) -> torch.Tensor:
        """MoE layer ``layer_idx``'s step counter, int64 [S], contiguous: the operator's
        ``moe_load`` (it adds each local slot's token count in place). Always the same memory."""
        self._check_layer(layer_idx)
        return self._step_counts[layer_idx]

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
        """
        self._check_layer(layer_idx)
        if not isinstance(topk_ids, torch.Tensor):
            msg = f"topk_ids: expected a torch.Tensor, got {type(topk_ids).__name__}"
            raise TypeError(msg)
        if topk_ids.dtype not in (torch.int32, torch.int64, torch.int16, torch.int8, torch.uint8):
            msg = f"topk_ids: expected an integer tensor, got dtype {topk_ids.dtype}"
            raise TypeError(msg)
        ids = topk_ids.reshape(-1).to(device=self._step_counts.device, dtype=torch.int64)
        local = ids[(ids >= 0) & (ids < self.num_slots)]
        self._step_counts[layer_idx] += torch.bincount(local, minlength=self.num_slots)

    def set_layer_placement(self, layer_idx: int, phy2log_row: npt.ArrayLike) -> None:
        """Installs a new placement for one MoE layer (see the class NOTE on timing).

        Args:
            layer_idx: the MoE layer index.
            phy2log_row: int64 [P], the logical expert of each physical slot.
        """
        self._check_layer(layer_idx)
        row = Plan.from_phy2log(np.asarray(phy2log_row)[None], self._num_experts)
        if row.num_physical != self._phy2log.shape[1]:
            msg = f"phy2log_row: expected {self._phy2log.shape[1]} slots, got {row.num_physical}"
            raise ValueError(msg)
        validate_plan(row, self._num_ranks, allow_duplicate_on_rank=True)
        self._phy2log[layer_idx] = row.phy2log[0]

    def step(self, *, defer_gather: bool = False, stage: str | None = None) -> HeatWindow | None:
        """Ends one forward step: folds its counts into the current episode and clears them.

        Returns the gathered window every ``collection_interval`` steps (then starts a new
        window), else None. A collective on those steps. With ``defer_gather`` the gather is
        only posted on that step and its window is returned by the next call instead (which
        waits for it: normally done during the forward step in between).

        ``stage`` (``"prefill"`` or ``"decode"``) says what the step was; required unless
        ``collection_stage`` is ``all``. A step of the other stage still counts as a step of
        the window (every rank gathers at the same steps) but its counts are dropped.
        """
        if self.collection_stage != "all":
            if stage not in ("prefill", "decode"):
                msg = (f"stage: expected 'prefill' or 'decode' (heat is collected on "
                       f"{self.collection_stage} steps only), got {stage!r}")
                raise ValueError(msg)
            if stage != self.collection_stage:
                self._step_counts.zero_()
        deferred = None
        if self._deferred is not None:
            # The previous window's gather, posted one step ago: wait (normally done) and convert.
            work, num_filled, episode_phy2log, num_steps = self._deferred
            self._deferred = None
            if work is not None:
                work.wait()
            deferred = self._window_from_gathered(num_filled, episode_phy2log, num_steps)
        self._window[self._episode_idx] += self._step_counts
        self._step_counts.zero_()
        self._steps_in_episode += 1
        self._steps_in_window += 1
        window_done = self._steps_in_window == self.collection_interval
        if self._steps_in_episode == self.episode_steps or window_done:
            self._episode_phy2log[self._episode_idx] = self._phy2log
            self._episode_idx += 1
            self._steps_in_episode = 0
        if not window_done:
            return deferred
        result = None
        if defer_gather:
            self._outgoing.copy_(self._window)
            num_filled = self._episode_idx
            work = None
            if self._num_ranks == 1:
                self._gathered.copy_(self._outgoing)
            else:
                work = all_gather_into_tensor(self._gathered, self._outgoing, self._group, async_op=True)
            self._deferred = (work, num_filled, self._episode_phy2log[:num_filled].copy(), self._steps_in_window)
        else:
            result = self.gather()
        self._window.zero_()
        self._episode_idx = 0
        self._steps_in_window = 0
        return deferred if result is None else result

    def gather(self) -> HeatWindow:
        """Gathers every rank's window so far (closed episodes, then the open one if it has
        steps) without resetting it. A collective: every rank calls it at the same step."""
        num_filled = self._episode_idx + (1 if self._steps_in_episode else 0)
        if self._num_ranks == 1:
            self._gathered.copy_(self._window)
        else:
            all_gather_into_tensor(self._gathered, self._window, self._group)
        episode_phy2log = self._episode_phy2log[:num_filled].copy()
        if self._steps_in_episode:
            episode_phy2log[-1] = self._phy2log  # the open episode: the placement in force now
        return self._window_from_gathered(num_filled, episode_phy2log, self._steps_in_window)

    def _window_from_gathered(
        self, num_filled: int, episode_phy2log: npt.NDArray[np.int64], num_steps: int
    ) -> HeatWindow:
        """The HeatWindow of the gathered buffer's first ``num_filled`` episodes, converted with
        their placements ``episode_phy2log`` int64 [num_filled, L, P]."""
        # [D, T, L, S] -> [T, L, D * S]: rank r's slot s is physical slot r * S + s.
        gathered = self._gathered.view(self._num_ranks, *self._window.shape)[:, :num_filled]
        gathered = gathered.permute(1, 2, 0, 3)
        slot_load = (
            gathered.reshape(num_filled, self.num_layers, self._num_ranks * self._window.shape[-1])
            .cpu()
            .numpy()
        )
        expert_load = np.zeros((num_filled, self.num_layers, self._num_experts), dtype=np.float64)
        start = 0
        while start < num_filled:  # one conversion per run of episodes with the same placement
            end = start + 1
            while end < num_filled and np.array_equal(episode_phy2log[end], episode_phy2log[start]):
                end += 1
            plan = Plan.from_phy2log(episode_phy2log[start], self._num_experts)
            expert_load[start:end] = expert_load_from_slot_load(plan, slot_load[start:end])
            start = end
        logger.debug("gathered heat of %d steps, %d episodes", num_steps, num_filled)
        return HeatWindow(slot_load=slot_load, expert_load=expert_load, num_steps=num_steps)
