"""The EPLB-ready MoE layer: logical routing, logical -> physical through this rank's map, the
fused operator on this rank's slots, and the all-to-all dispatch/combine between ranks."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from eplb_native.checks import check_int
from eplb_native.plan import Plan, layer_plan
from eplb_native.routing import ReplicaRouting
from eplb_native.runtime._dist import group_rank_and_size
from eplb_native.runtime.heat import HeatRecorder
from eplb_native.runtime.routing import ReplicaRouter

logger = logging.getLogger(__name__)

_FLOAT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


@dataclass(frozen=True)
class RankExperts:
    """One MoE layer's placement as seen by one rank, with the weights of its local slots.

    Immutable: ``EplbMoE.install`` copies new weights into these slot tensors in place and
    swaps this object for one with the new ``phy2log`` (the tensors stay the same objects).

    Attributes:
        phy2log: int64 [P], the logical expert of every physical slot of the layer.
        num_experts: N.
        w1: S tensors [H, 2I], gate columns [0, I) then up columns [I, 2I), slot order; the
            activation dtype, or int8 for W8A8.
        w2: S tensors [I, H], slot order, as ``w1``.
        w1_scale, w2_scale: W8A8 only (else None): S tensors [2I] and [H], the per-output-channel
            scales of ``w1`` / ``w2`` (float32 or the activation dtype), slot order.
        rank: this rank, 0..D-1.
        num_ranks: D.
    """

    phy2log: npt.NDArray[np.int64]
    num_experts: int
    w1: tuple[torch.Tensor, ...]
    w2: tuple[torch.Tensor, ...]
    w1_scale: tuple[torch.Tensor, ...] | None
    w2_scale: tuple[torch.Tensor, ...] | None
    rank: int
    num_ranks: int

    @classmethod
    def build(
        cls,
        phy2log_row: Plan | npt.ArrayLike,
        num_experts: int,
        w1: Sequence[torch.Tensor],
        w2: Sequence[torch.Tensor],
        *,
        rank: int,
        num_ranks: int,
        w1_scale: Sequence[torch.Tensor] | None = None,
        w2_scale: Sequence[torch.Tensor] | None = None,
    ) -> RankExperts:
        """Validates a placement row and this rank's slot weights.

        Args:
            phy2log_row: int [P], the layer's placement; P = D * S (or its ``layer_plan``).
            num_experts: N.
            w1, w2: this rank's S slot weights, ``w1[s]`` [H, 2I] and ``w2[s]`` [I, H], one
                dtype (bf16, fp16 or fp32; int8 with scales), contiguous, on one device.
            rank, num_ranks: this rank and D.
            w1_scale, w2_scale: W8A8: S scale tensors each, [2I] and [H] (both or neither).
        """
        rank = check_int(rank, "rank", minimum=0, below=num_ranks)
        plan = layer_plan(phy2log_row, num_experts, num_ranks)  # duplicates: legal at runtime
        num_slots = plan.slots_per_rank(num_ranks)
        _check_slot_weights(w1, w2, num_slots, w1_scale, w2_scale)
        w8a8 = w1_scale is not None and w2_scale is not None
        return cls(
            plan.phy2log[0], plan.num_experts, tuple(w1), tuple(w2),
            tuple(w1_scale) if w8a8 and w1_scale is not None else None,
            tuple(w2_scale) if w8a8 and w2_scale is not None else None, rank, num_ranks,
        )  # fmt: skip

    @property
    def num_slots(self) -> int:
        """S."""
        return len(self.w1)

    @property
    def w8a8(self) -> bool:
        """True for int8 weights with per-channel scales."""
        return self.w1_scale is not None

    @property
    def weight_kinds(self) -> list[list[torch.Tensor]]:
        """The slot tensors of each kind that moves with an expert: [w1, w2] (and, W8A8,
        [w1_scale, w2_scale]), each S tensors in slot order (what ``WeightLoader`` moves)."""
        kinds = [list(self.w1), list(self.w2)]
        if self.w1_scale is not None and self.w2_scale is not None:
            kinds += [list(self.w1_scale), list(self.w2_scale)]
        return kinds


def _check_slot_weights(
    w1: Sequence[torch.Tensor],
    w2: Sequence[torch.Tensor],
    num_slots: int,
    w1_scale: Sequence[torch.Tensor] | None,
    w2_scale: Sequence[torch.Tensor] | None,
) -> None:
    lists: list[tuple[Sequence[torch.Tensor] | None, str]] = [(w1, "w1"), (w2, "w2")]
    if (w1_scale is None) != (w2_scale is None):
        msg = f"{'w2_scale' if w2_scale is None else 'w1_scale'}: W8A8 needs both scale lists"
        raise ValueError(msg)
    lists += [(w1_scale, "w1_scale"), (w2_scale, "w2_scale")] if w1_scale is not None else []
    for weights, field in lists:
        if isinstance(weights, torch.Tensor) or not all(
            isinstance(w, torch.Tensor) for w in weights or []
        ):
            msg = f"{field}: expected a list of {num_slots} tensors (one per local slot)"
            raise TypeError(msg)
        if len(weights or []) != num_slots:
            msg = f"{field}: expected {num_slots} tensors (one per local slot), got {len(weights or [])}"
            raise ValueError(msg)
    dtype, device = w1[0].dtype, w1[0].device
    if w1_scale is not None and dtype != torch.int8:
        msg = f"w1: expected int8 weights (W8A8: scales given), got {dtype}"
        raise TypeError(msg)
    if w1_scale is None and dtype not in _FLOAT_DTYPES:
        msg = f"w1: expected bfloat16, float16 or float32 weights (int8 needs scales), got {dtype}"
        raise TypeError(msg)
    if w1[0].dim() != 2 or w1[0].shape[1] % 2:
        msg = f"w1: expected [H, 2I] tensors (gate | up), got shape {tuple(w1[0].shape)}"
        raise ValueError(msg)
    hidden, intermediate = int(w1[0].shape[0]), int(w1[0].shape[1]) // 2
    shapes: list[tuple[Sequence[torch.Tensor], str, tuple[int, ...]]] = [
        (w1, "w1", (hidden, 2 * intermediate)), (w2, "w2", (intermediate, hidden)),
    ]  # fmt: skip
    if w1_scale is not None and w2_scale is not None:
        shapes += [(w1_scale, "w1_scale", (2 * intermediate,)), (w2_scale, "w2_scale", (hidden,))]
    for weights, field, shape in shapes:
        kind_dtype = weights[0].dtype if field.endswith("scale") else dtype
        if field.endswith("scale") and kind_dtype not in _FLOAT_DTYPES:
            msg = f"{field}: expected float32, bfloat16 or float16 scales, got {kind_dtype}"
            raise TypeError(msg)
        for slot, weight in enumerate(weights):
            if weight.dtype != kind_dtype or weight.device != device:
                got = f"{weight.dtype} on {weight.device}"
                msg = f"{field}[{slot}]: expected {kind_dtype} on {device} (as {field}[0] / w1[0]), got {got}"
                raise TypeError(msg)
            if tuple(weight.shape) != shape:
                msg = f"{field}[{slot}]: expected shape {shape}, got {tuple(weight.shape)}"
                raise ValueError(msg)
            if not weight.is_contiguous():
                msg = f"{field}[{slot}]: expected a contiguous tensor"
                raise ValueError(msg)


def _copy_into_slots(slots: Sequence[torch.Tensor], new: Sequence[torch.Tensor]) -> None:
    """Copies ``new[s]`` into ``slots[s]`` in place. A source that is (part of) any slot's memory
    is read before any slot is written, so moves between slots need no ordering."""
    slot_memory = {t.untyped_storage().data_ptr() for t in slots}
    sources = [
        src.clone() if src is not dst and src.untyped_storage().data_ptr() in slot_memory else src
        for src, dst in zip(new, slots, strict=True)
    ]
    for src, dst in zip(sources, slots, strict=True):
        if src is not dst:
            dst.copy_(src)


class EplbMoE(nn.Module):
    """A routed-expert MoE block whose experts live on physical slots spread over ranks.

    Example:
        >>> import torch, eplb_native
        >>> from eplb_native.runtime import EplbMoE
        >>> N, H, I = 4, 8, 6
        >>> plan = eplb_native.default_placement(num_layers=1, num_experts=N, num_ranks=1)
        >>> moe = EplbMoE.from_logical_weights(
        ...     torch.randn(N, H), [torch.randn(H, 2 * I) for _ in range(N)],
        ...     [torch.randn(I, H) for _ in range(N)], plan, top_k=2)
        >>> moe(torch.randn(5, H)).shape
        torch.Size([5, 8])

    Routing follows Qwen3-MoE / Mixtral: ``softmax`` over the N logical experts in fp32, top-k,
    optionally renormalised to sum 1. Each (token, k) goes to the physical slot the layer's
    ``ReplicaRouter`` picks (``routing``: ``fixed`` or ``spread``, see ``eplb_native.routing``);
    with D > 1 ranks every token is sent once to each rank owning one of its slots
    (``all_to_all_single``), that rank runs ``eplb_native.ops.fused_moe_decode`` on its S slots
    (ids of other ranks' slots are -1, so skipped), and the partial outputs come back and are
    summed in rank order (fp32). Every rank of the group must call ``forward`` for every layer
    (it is a collective). Routing, the operator and the heat accumulation are fixed-shape and
    sync-free; the exchange between ranks is not (its sizes depend on the routing).

    State that a captured graph reads keeps its storage for the layer's lifetime: the routing
    tables, the slot weights (and W8A8 scales) and the heat buffer. ``install`` copies a new
    placement's values into them in place.
    """

    router_weight: torch.Tensor

    def __init__(
        self,
        router_weight: torch.Tensor,
        experts: RankExperts,
        *,
        top_k: int,
        renormalize: bool = True,
        moe_layer_idx: int = 0,
        heat: HeatRecorder | None = None,
        group: dist.ProcessGroup | None = None,
        routing: ReplicaRouting = "fixed",
    ) -> None:
        """
        Args:
            router_weight: [N, H], the router's linear weight (logits = x @ router_weight.T);
                its dtype is the activation dtype (the float weights' dtype; W8A8 scales are
                float32 or this dtype).
            experts: this rank's placement and slot weights.
            top_k: experts per token, 1..N.
            renormalize: divide the top-k probabilities by their sum (Qwen3 ``norm_topk_prob``;
                Mixtral always).
            moe_layer_idx: this block's MoE layer index (its row in the plan and the heat).
            heat: the recorder the operator accumulates this layer's slot counts into.
            group: the expert-parallel process group (None: default group, or single process).
            routing: which replica serves each (token, expert): ``fixed`` or ``spread``.
        """
        super().__init__()
        rank, num_ranks = group_rank_and_size(group)
        if (experts.rank, experts.num_ranks) != (rank, num_ranks):
            msg = (
                f"experts: built for rank {experts.rank} of {experts.num_ranks}, "
                f"this process is rank {rank} of {num_ranks}"
            )
            raise ValueError(msg)
        if not isinstance(router_weight, torch.Tensor) or router_weight.dtype not in _FLOAT_DTYPES:
            msg = "router_weight: expected a bfloat16, float16 or float32 tensor [N, H]"
            raise TypeError(msg)
        hidden = int(experts.w1[0].shape[0])
        if tuple(router_weight.shape) != (experts.num_experts, hidden):
            want = (experts.num_experts, hidden)
            msg = f"router_weight: expected shape {want}, got {tuple(router_weight.shape)}"
            raise ValueError(msg)
        if not experts.w8a8 and experts.w1[0].dtype != router_weight.dtype:
            msg = (f"router_weight: expected the expert weights' dtype {experts.w1[0].dtype}, "
                   f"got {router_weight.dtype}")
            raise TypeError(msg)
        top_k = check_int(top_k, "top_k", minimum=1, below=experts.num_experts + 1)
        if heat is not None:
            heat.buffer(moe_layer_idx)  # validates the layer index against the recorder
            if heat.num_slots != experts.num_slots:
                msg = (
                    f"heat: records {heat.num_slots} slots per rank, "
                    f"the layer has {experts.num_slots}"
                )
                raise ValueError(msg)
        self.register_buffer("router_weight", router_weight.detach().contiguous())
        self.top_k = top_k
        self.renormalize = renormalize
        self.moe_layer_idx = moe_layer_idx
        self.heat = heat
        self.group = group
        self.replica_router = ReplicaRouter(
            experts.phy2log, experts.num_experts, rank=rank, num_ranks=num_ranks,
            routing=routing, device=experts.w1[0].device,
        )  # fmt: skip
        self._experts = experts

    @classmethod
    def from_logical_weights(
        cls,
        router_weight: torch.Tensor,
        w1: Sequence[torch.Tensor],
        w2: Sequence[torch.Tensor],
        plan: Plan,
        *,
        top_k: int,
        renormalize: bool = True,
        moe_layer_idx: int = 0,
        heat: HeatRecorder | None = None,
        group: dist.ProcessGroup | None = None,
        routing: ReplicaRouting = "fixed",
        w1_scale: Sequence[torch.Tensor] | None = None,
        w2_scale: Sequence[torch.Tensor] | None = None,
    ) -> EplbMoE:
        """Builds this rank's block from all N logical experts' weights (``w1[e]`` [H, 2I],
        ``w2[e]`` [I, H]; int8 with ``w1_scale[e]`` [2I] and ``w2_scale[e]`` [H] for W8A8)
        and the placement ``plan`` (row ``moe_layer_idx`` is used); each local slot gets its
        own copy of its expert's tensors."""
        rank, num_ranks = group_rank_and_size(group)
        kinds: list[tuple[str, Sequence[torch.Tensor] | None]] = [("w1", w1), ("w2", w2)]
        if w1_scale is not None or w2_scale is not None:
            kinds += [("w1_scale", w1_scale), ("w2_scale", w2_scale)]
        for field, tensors in kinds:
            if tensors is None or len(tensors) != plan.num_experts:
                got = "none" if tensors is None else str(len(tensors))
                msg = f"{field}: expected {plan.num_experts} logical experts, got {got}"
                raise ValueError(msg)
        moe_layer_idx = check_int(moe_layer_idx, "moe_layer_idx", minimum=0, below=plan.num_layers)
        num_slots = plan.slots_per_rank(num_ranks)
        local = plan.phy2log[moe_layer_idx, rank * num_slots : (rank + 1) * num_slots]
        copies = {
            field: [tensors[int(e)].detach().clone(memory_format=torch.contiguous_format) for e in local]
            for field, tensors in kinds
            if tensors is not None
        }
        experts = RankExperts.build(
            plan.phy2log[moe_layer_idx], plan.num_experts, copies["w1"], copies["w2"], rank=rank,
            num_ranks=num_ranks, w1_scale=copies.get("w1_scale"), w2_scale=copies.get("w2_scale"),
        )  # fmt: skip
        return cls(
            router_weight,
            experts,
            top_k=top_k,
            renormalize=renormalize,
            moe_layer_idx=moe_layer_idx,
            heat=heat,
            group=group,
            routing=routing,
        )

    def extra_repr(self) -> str:
        experts = self._experts
        return (
            f"moe_layer_idx={self.moe_layer_idx}, num_experts={experts.num_experts}, "
            f"top_k={self.top_k}, renormalize={self.renormalize}, "
            f"rank={experts.rank}/{experts.num_ranks}, num_slots={experts.num_slots}, "
            f"routing={self.replica_router.routing}{', w8a8' if experts.w8a8 else ''}"
        )

    @property
    def experts(self) -> RankExperts:
        """This rank's placement and slot weights in force."""
        return self._experts

    def install(
        self,
        phy2log_row: npt.ArrayLike,
        w1: Sequence[torch.Tensor],
        w2: Sequence[torch.Tensor],
        w1_scale: Sequence[torch.Tensor] | None = None,
        w2_scale: Sequence[torch.Tensor] | None = None,
    ) -> None:
        """Replaces this layer's placement and local slot weights, in place.

        Validates everything first; on error nothing changes. Then copies the new slot tensors
        into the slot tensors in force (a tensor passed for its own slot is not copied), copies
        the new routing tables into theirs, and the heat recorder (if any) converts this layer
        with the new placement. Every rank must install the same ``phy2log_row`` before its
        next forward call of this layer.

        Args:
            phy2log_row: int [P], the new placement of this layer.
            w1, w2: this rank's S new slot weights (same shapes/dtype as before), slot order;
                slots that keep their expert may pass the tensors in force
                (``self.experts.w1[s]``), so replacing one slot copies one slot.
            w1_scale, w2_scale: W8A8 layers: the S new slot scales, as ``w1``/``w2``.
        """
        current = self._experts
        plan = layer_plan(phy2log_row, current.num_experts, current.num_ranks)  # built once
        experts = RankExperts.build(
            plan, current.num_experts, w1, w2, rank=current.rank,
            num_ranks=current.num_ranks, w1_scale=w1_scale, w2_scale=w2_scale,
        )  # fmt: skip
        if experts.w8a8 != current.w8a8:
            msg = f"w1_scale: the layer is {'' if current.w8a8 else 'not '}W8A8; pass scales accordingly"
            raise ValueError(msg)
        for field, old_kind, new_kind in zip(
            ("w1", "w2", "w1_scale", "w2_scale"), current.weight_kinds, experts.weight_kinds, strict=False
        ):
            old, new = old_kind[0], new_kind[0]
            if (old.shape, old.dtype, old.device) != (new.shape, new.dtype, new.device):
                msg = (
                    f"{field}: new slot tensors {tuple(new.shape)} {new.dtype} on {new.device} "
                    f"differ from the layer's {tuple(old.shape)} {old.dtype} on {old.device}"
                )
                raise ValueError(msg)
        for slots, new_slots in zip(current.weight_kinds, experts.weight_kinds, strict=True):
            _copy_into_slots(slots, new_slots)
        self.replica_router.load(plan)
        if self.heat is not None:
            self.heat.set_layer_placement(self.moe_layer_idx, plan)
        self._experts = replace(current, phy2log=experts.phy2log)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """
        Args:
            hidden_states: [..., H], the router weight's dtype, contiguous.

        Returns:
            [..., H], same dtype: the routed experts' weighted sum for each token.
        """
        experts = self._experts
        self._check_input(hidden_states, experts)
        hidden = hidden_states.shape[-1]
        x = hidden_states.reshape(-1, hidden)
        logits = F.linear(x, self.router_weight)  # [BS, N]
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
        scales, logical_ids = torch.topk(probs, self.top_k, dim=-1)  # [BS, K]
        if self.renormalize:
            scales = scales / scales.sum(dim=-1, keepdim=True)
        physical_ids = self.replica_router.route(logical_ids)  # [BS, K]
        if experts.num_ranks == 1:
            out = self._run_local(x, physical_ids.to(torch.int32), scales, experts)
        else:
            out = self._dispatch_run_combine(x, physical_ids, scales, experts)
        return out.reshape(hidden_states.shape)

    def _check_input(self, hidden_states: torch.Tensor, experts: RankExperts) -> None:
        if not isinstance(hidden_states, torch.Tensor):
            msg = f"hidden_states: expected a torch.Tensor, got {type(hidden_states).__name__}"
            raise TypeError(msg)
        dtype = self.router_weight.dtype
        if hidden_states.dtype != dtype:
            got = hidden_states.dtype
            msg = f"hidden_states: expected dtype {dtype} (the router weight's), got {got}"
            raise TypeError(msg)
        hidden = int(experts.w1[0].shape[0])
        if hidden_states.dim() < 2 or hidden_states.shape[-1] != hidden:
            msg = f"hidden_states: expected shape [..., {hidden}], got {tuple(hidden_states.shape)}"
            raise ValueError(msg)
        if not hidden_states.is_contiguous():
            msg = "hidden_states: expected a contiguous tensor"
            raise ValueError(msg)

    def _run_local(
        self, x: torch.Tensor, local_ids: torch.Tensor, scales: torch.Tensor, experts: RankExperts
    ) -> torch.Tensor:
        """The operator on this rank's slots: x [R, H], local_ids int32 [R, K] (-1: not here),
        scales fp32 [R, K] -> [R, H]; adds the slot counts to the heat buffer."""
        # Imported here: ops registers the operator (and loads the device library) on first use.
        from eplb_native.ops import fused_moe_decode

        moe_load = None if self.heat is None else self.heat.buffer(self.moe_layer_idx)
        out: torch.Tensor
        out, _ = fused_moe_decode(
            x, local_ids, scales.contiguous(), list(experts.w1), list(experts.w2), moe_load=moe_load,
            w1_scale=None if experts.w1_scale is None else list(experts.w1_scale),
            w2_scale=None if experts.w2_scale is None else list(experts.w2_scale),
        )  # fmt: skip
        return out

    def _dispatch_run_combine(
        self,
        x: torch.Tensor,
        physical_ids: torch.Tensor,
        scales: torch.Tensor,
        experts: RankExperts,
    ) -> torch.Tensor:
        """Sends each token once to every rank owning one of its K slots, runs the operator
        there, and sums the partial outputs that come back.

        Args:
            x: [BS, H] this rank's tokens.
            physical_ids: int64 [BS, K], global physical slot of each (token, k).
            scales: fp32 [BS, K], routing weights.
        """
        num_ranks, num_slots, top_k = experts.num_ranks, experts.num_slots, self.top_k
        dest_rank = torch.div(physical_ids, num_slots, rounding_mode="floor")  # [BS, K]
        ranks = torch.arange(num_ranks, device=x.device)
        sends = (dest_rank[:, :, None] == ranks).any(dim=1)  # [BS, D]: token t goes to rank r
        # One row per (rank, token) pair, grouped by destination rank, tokens ascending.
        row_rank, row_token = sends.t().nonzero(as_tuple=True)
        send_counts = sends.sum(dim=0)  # [D]
        recv_counts = torch.empty_like(send_counts)
        dist.all_to_all_single(recv_counts, send_counts, group=self.group)
        send_splits, recv_splits = send_counts.tolist(), recv_counts.tolist()
        num_recv = sum(recv_splits)

        is_local = dest_rank[row_token] == row_rank[:, None]  # [R_send, K]
        local_ids = physical_ids[row_token] - (row_rank * num_slots)[:, None]
        local_ids = torch.where(is_local, local_ids, -1).to(torch.int32)
        # ids and scales travel together: fp32 scales reinterpreted as int32 bits.
        meta = torch.cat([local_ids, scales[row_token].contiguous().view(torch.int32)], dim=1)
        recv_meta = torch.empty((num_recv, 2 * top_k), dtype=torch.int32, device=x.device)
        dist.all_to_all_single(recv_meta, meta, recv_splits, send_splits, group=self.group)
        recv_x = torch.empty((num_recv, x.shape[1]), dtype=x.dtype, device=x.device)
        dist.all_to_all_single(
            recv_x, x[row_token].contiguous(), recv_splits, send_splits, group=self.group
        )

        partial = self._run_local(
            recv_x,
            recv_meta[:, :top_k].contiguous(),
            recv_meta[:, top_k:].contiguous().view(torch.float32),
            experts,
        )
        returned = torch.empty((row_token.shape[0], x.shape[1]), dtype=x.dtype, device=x.device)
        dist.all_to_all_single(returned, partial, send_splits, recv_splits, group=self.group)
        out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        out.index_add_(0, row_token, returned.float())
        return out.to(x.dtype)
