"""Expert-parallel dispatch and combine around ``fused_moe_decode`` (the DispatchGmmCombineDecode
decomposition): every routed (token, k) pair travels to the rank that owns its expert, that rank
runs the fused operator on the pairs it received, and the expert outputs travel back to be summed
with the routing weights in k order.

Example (every rank of the group runs it; experts ``r*E .. r*E+E-1`` live on rank r)::

    out, expert_token_nums = fused_moe_decode_ep(x, topk_ids, topk_weights, w1, w2, moe_load=load)

Layout: D ranks, E local experts each, global expert id ``g`` on rank ``g // E`` as local expert
``g % E``. One row per routed pair is exchanged (``torch.distributed.all_to_all_single``, any
backend that holds the tensors: gloo for CPU, HCCL for Ascend NPUs through torch_npu), so a
rank's ``expert_token_nums`` counts exactly the pairs routed to its experts, and the combine
repeats the single-device arithmetic (``acc = acc + scale * f32(y)`` for k ascending, one
rounding at the end): the result equals ``fused_moe_decode`` run on one device holding all D*E
experts, bit for bit.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from eplb_native.checks import check_positive_int
from eplb_native.ops import fused_moe_decode
from eplb_native.runtime._dist import group_rank_and_size

logger = logging.getLogger(__name__)

# The process-group backend each device type's tensors need.
_BACKENDS = {"cpu": ("gloo", "mpi"), "npu": ("hccl",), "cuda": ("nccl",)}


@dataclass(frozen=True)
class DispatchHandle:
    """What :func:`combine` needs to send the expert outputs back and sum them.

    Attributes:
        pair_index: int64 [R_send], flat index ``t * K + k`` of every pair this rank sent, in
            send order (destination rank, then token, then k).
        send_splits: pairs sent to each rank, [D].
        recv_splits: pairs received from each rank, [D].
        num_tokens: BS of this rank.
        top_k: K.
        group: the expert-parallel process group (None: the default group).
    """

    pair_index: torch.Tensor
    send_splits: list[int]
    recv_splits: list[int]
    num_tokens: int
    top_k: int
    group: dist.ProcessGroup | None


@dataclass(frozen=True)
class Dispatched:
    """The pairs one rank received, ready for ``fused_moe_decode`` with K = 1.

    Attributes:
        x: [R_recv, H], dtype of the sender's x: the token of each received pair.
        expert_ids: int32 [R_recv, 1], the local expert of each pair.
        expert_scales: fp32 [R_recv, 1], ones: the operator returns each expert's output row
            itself (``round(0 + 1 * y) = y``); the routing weights are applied by the combine.
        expert_token_nums: int64 [E], pairs received per local expert.
        handle: for :func:`combine`.
    """

    x: torch.Tensor
    expert_ids: torch.Tensor
    expert_scales: torch.Tensor
    expert_token_nums: torch.Tensor
    handle: DispatchHandle


def _check_group(x: torch.Tensor, group: dist.ProcessGroup | None) -> tuple[int, int]:
    """(rank, D), after checking that the group's backend can carry tensors of x's device."""
    rank, num_ranks = group_rank_and_size(group)
    if num_ranks > 1:
        # "gloo", or per device type as in "cpu:gloo,cuda:nccl".
        backend = str(dist.get_backend(group)).lower()
        names = {part.rsplit(":", 1)[-1] for part in backend.split(",")}
        allowed = _BACKENDS.get(x.device.type, ())
        if not names & set(allowed):
            message = (
                f"group: {x.device.type} tensors need a {' or '.join(allowed) or 'matching'} "
                f"process group, got '{backend}'"
            )
            raise ValueError(message)
    return rank, num_ranks


def _all_to_all(
    rows: torch.Tensor,
    send_splits: list[int],
    recv_splits: list[int],
    group: dist.ProcessGroup | None,
) -> torch.Tensor:
    """Rows [sum(send_splits), ...] -> rows [sum(recv_splits), ...], rank-major on both sides;
    the rows themselves in a single process (torch.distributed not initialised)."""
    if not (dist.is_available() and dist.is_initialized()):
        return rows
    received = rows.new_empty((sum(recv_splits), *rows.shape[1:]))
    dist.all_to_all_single(received, rows.contiguous(), recv_splits, send_splits, group=group)
    return received


def dispatch(
    x: torch.Tensor,
    expert_ids: torch.Tensor,
    *,
    num_local_experts: int,
    x_active_mask: torch.Tensor | None = None,
    group: dist.ProcessGroup | None = None,
) -> Dispatched:
    """Sends every routed (token, k) pair to the rank owning its expert. A collective.

    Args:
        x: [BS, H] this rank's tokens (bf16/fp16/fp32), contiguous.
        expert_ids: int32/int64 [BS, K] global expert ids; ids outside [0, D*E) are not routed.
        num_local_experts: E, experts per rank.
        x_active_mask: bool [BS]; inactive tokens are not routed.
        group: the expert-parallel group (None: the default group, or a single process).
    """
    num_local_experts = check_positive_int(num_local_experts, "num_local_experts")
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        message = "x: expected a 2-D tensor [BS, H]"
        raise ValueError(message)
    if (
        not isinstance(expert_ids, torch.Tensor)
        or expert_ids.dim() != 2
        or expert_ids.shape[0] != x.shape[0]
        or expert_ids.dtype not in (torch.int32, torch.int64)
    ):
        got = getattr(expert_ids, "shape", None)
        message = f"expert_ids: expected int32/int64 [{x.shape[0]}, K], got {got}"
        raise ValueError(message)
    if x_active_mask is not None and (
        x_active_mask.dtype != torch.bool or tuple(x_active_mask.shape) != (x.shape[0],)
    ):
        message = f"x_active_mask: expected bool [{x.shape[0]}]"
        raise ValueError(message)
    _, num_ranks = _check_group(x, group)
    num_tokens, top_k = expert_ids.shape
    ids = expert_ids.long()
    valid = (ids >= 0) & (ids < num_ranks * num_local_experts)
    if x_active_mask is not None:
        valid &= x_active_mask[:, None]
    flat_valid = valid.reshape(-1)
    dest = torch.div(ids, num_local_experts, rounding_mode="floor").reshape(-1)
    # Send order: destination rank, then (token, k); invalid pairs sort last and are dropped.
    keys = torch.where(flat_valid, dest, num_ranks)
    order = torch.argsort(keys, stable=True)
    num_sent = int(flat_valid.sum())
    pair_index = order[:num_sent]
    send_counts = torch.bincount(keys[pair_index], minlength=num_ranks)
    recv_counts = _all_to_all(send_counts, [1] * num_ranks, [1] * num_ranks, group)
    send_splits, recv_splits = send_counts.tolist(), recv_counts.tolist()

    local_ids = (ids.reshape(-1)[pair_index] % num_local_experts).to(torch.int32)
    recv_x = _all_to_all(x[pair_index // top_k], send_splits, recv_splits, group)
    recv_ids = _all_to_all(local_ids, send_splits, recv_splits, group)
    counts = torch.bincount(recv_ids.long(), minlength=num_local_experts)
    handle = DispatchHandle(pair_index, send_splits, recv_splits, num_tokens, top_k, group)
    return Dispatched(
        x=recv_x,
        expert_ids=recv_ids.view(-1, 1),
        expert_scales=torch.ones((recv_x.shape[0], 1), dtype=torch.float32, device=x.device),
        expert_token_nums=counts,
        handle=handle,
    )


def combine(
    expert_out: torch.Tensor, expert_scales: torch.Tensor, handle: DispatchHandle
) -> torch.Tensor:
    """Sends the expert outputs back and takes each token's weighted sum. A collective.

    For token t: ``acc = 0; acc = acc + scale[t, k] * f32(y[t, k])`` for routed k ascending,
    then ``out[t] = round(acc)`` to the dtype of ``expert_out`` (zeros for tokens with no routed
    pair), the single-device operator's combine.

    Args:
        expert_out: [R_recv, H], the output row of every pair this rank received (dispatch order).
        expert_scales: fp32 [BS, K], this rank's routing weights.
        handle: from the :func:`dispatch` of this call.

    Returns:
        [BS, H], dtype of ``expert_out``.
    """
    if tuple(expert_scales.shape) != (handle.num_tokens, handle.top_k):
        want = [handle.num_tokens, handle.top_k]
        message = f"expert_scales: expected {want}, got {list(expert_scales.shape)}"
        raise ValueError(message)
    if expert_out.dim() != 2 or expert_out.shape[0] != sum(handle.recv_splits):
        message = f"expert_out: expected [{sum(handle.recv_splits)}, H] (one row per received pair)"
        raise ValueError(message)
    returned = _all_to_all(expert_out, handle.recv_splits, handle.send_splits, handle.group)
    num_pairs = handle.num_tokens * handle.top_k
    hidden = expert_out.shape[1]
    routed = torch.zeros(num_pairs, dtype=torch.bool, device=expert_out.device)
    routed[handle.pair_index] = True
    rows = torch.zeros((num_pairs, hidden), dtype=expert_out.dtype, device=expert_out.device)
    rows[handle.pair_index] = returned
    routed = routed.view(handle.num_tokens, handle.top_k)
    rows = rows.view(handle.num_tokens, handle.top_k, hidden)
    acc = torch.zeros((handle.num_tokens, hidden), dtype=torch.float32, device=expert_out.device)
    for k in range(handle.top_k):
        weighted = expert_scales[:, k : k + 1] * rows[:, k].float()
        acc = torch.where(routed[:, k : k + 1], acc + weighted, acc)
    return acc.to(expert_out.dtype)


def fused_moe_decode_ep(
    x: torch.Tensor,
    expert_ids: torch.Tensor,
    expert_scales: torch.Tensor,
    w1: Sequence[torch.Tensor],
    w2: Sequence[torch.Tensor],
    *,
    x_active_mask: torch.Tensor | None = None,
    moe_load: torch.Tensor | None = None,
    load_counter: torch.Tensor | None = None,
    w1_scale: Sequence[torch.Tensor] | None = None,
    w2_scale: Sequence[torch.Tensor] | None = None,
    group: dist.ProcessGroup | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dispatch, ``fused_moe_decode`` on this rank's experts, combine. A collective.

    Args:
        x: [BS, H] this rank's tokens.
        expert_ids: int32 [BS, K] global expert ids in [0, D*E); others are not routed.
        expert_scales: fp32 [BS, K] routing weights.
        w1, w2: this rank's E local experts' weights ([H, 2I] and [I, H], as for
            ``fused_moe_decode``; int8 with ``w1_scale``/``w2_scale`` for W8A8).
        x_active_mask: bool [BS].
        moe_load, load_counter: this rank's expert-load accumulators (``fused_moe_decode``),
            updated with the pairs it received.
        group: the expert-parallel group.

    Returns:
        out: [BS, H] dtype of x, equal to the single-device operator over all D*E experts;
        expert_token_nums: int64 [E], the pairs this rank's experts received in this call.
    """
    received = dispatch(
        x,
        expert_ids,
        num_local_experts=len(w1),
        x_active_mask=x_active_mask,
        group=group,
    )
    rows, ids, scales, mask = received.x, received.expert_ids, received.expert_scales, None
    if rows.shape[0] == 0:
        # Nothing arrived: one inactive row keeps the call (and a ring's counter step) on the
        # operator's path, whose device kernels need at least one row.
        rows, ids, scales = (
            rows.new_zeros((1, x.shape[1])),
            ids.new_zeros((1, 1)),
            scales[:0].new_ones((1, 1)),
        )
        mask = torch.zeros(1, dtype=torch.bool, device=x.device)
    expert_out, expert_token_nums = fused_moe_decode(
        rows,
        ids,
        scales,
        w1,
        w2,
        mask,
        moe_load,
        load_counter,
        w1_scale,
        w2_scale,
    )
    expert_out = expert_out[: received.x.shape[0]]
    return combine(expert_out, expert_scales, received.handle), expert_token_nums
