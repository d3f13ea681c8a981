"""Transfer planning: which weight copies move a layer from one placement to the next (pure).

Every rank derives its own receives and sends from one global computation over the two
placement tables, so a sender and its receiver always agree without talking to each other.
No torch here: the plan is numpy in, dataclasses out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from eplb_native.checks import check_int, check_layer_ids, check_positive_int

logger = logging.getLogger(__name__)

ReceiveSource = Literal["local", "remote", "received"]


@dataclass(frozen=True)
class Receive:
    """One slot of this rank that gets a new expert.

    Attributes:
        slot: local slot (0..S-1) that will hold ``expert``.
        expert: logical expert id.
        source: ``"local"``: copied from old slot ``src_slot`` of this rank (no communication);
            ``"remote"``: received from rank ``src_rank``, which sends its old slot ``src_slot``;
            ``"received"``: copied from local slot ``src_slot``'s freshly received weights (the
            expert arrives once per rank, further slots copy it).
        src_rank: the rank the weights come from (this rank unless ``source == "remote"``).
        src_slot: the slot on ``src_rank`` the weights are read from.
    """

    slot: int
    expert: int
    source: ReceiveSource
    src_rank: int
    src_slot: int


@dataclass(frozen=True)
class Send:
    """Old slot ``src_slot`` of this rank sends the weights of ``expert`` to rank ``dst_rank``."""

    dst_rank: int
    expert: int
    src_slot: int


@dataclass(frozen=True)
class LayerTransfers:
    """The weight movements of one layer as seen by one rank.

    ``receives`` is sorted by slot; the remote ones, taken in (src_rank, expert) order, match
    the sender's ``sends`` taken in (dst_rank, expert) order: post point-to-point operations in
    those orders (``remote_receives`` / ``sends`` are already sorted so) and they pair up.

    Attributes:
        layer_idx: MoE layer index.
        rank: the rank this view is for.
        receives: the slots of this rank whose expert changes, sorted by slot.
        sends: the weights this rank sends, sorted by (dst_rank, expert).
        num_global_remote: expert weights sent over the network in this layer, all ranks.
    """

    layer_idx: int
    rank: int
    receives: tuple[Receive, ...]
    sends: tuple[Send, ...]
    num_global_remote: int

    @property
    def remote_receives(self) -> tuple[Receive, ...]:
        """The network receives of this rank, sorted by (src_rank, expert)."""
        remote = [r for r in self.receives if r.source == "remote"]
        return tuple(sorted(remote, key=lambda r: (r.src_rank, r.expert)))

    @property
    def num_copies(self) -> int:
        """Slots of this rank that get an expert it did not hold before (remote + received);
        summed over ranks this equals ``eplb_native.count_weight_copies`` for the layer."""
        return sum(1 for r in self.receives if r.source != "local")

    @property
    def is_empty(self) -> bool:
        """True when this rank neither receives nor sends anything in this layer."""
        return not self.receives and not self.sends

    def bytes_received(self, expert_bytes: int) -> int:
        """Bytes this rank receives over the network, given the bytes of one expert's weights."""
        return sum(1 for r in self.receives if r.source == "remote") * expert_bytes

    def bytes_sent(self, expert_bytes: int) -> int:
        """Bytes this rank sends over the network, given the bytes of one expert's weights."""
        return len(self.sends) * expert_bytes

    def global_bytes(self, expert_bytes: int) -> int:
        """Bytes moved over the network by all ranks in this layer."""
        return self.num_global_remote * expert_bytes


def plan_transfers(
    old_table: npt.ArrayLike,
    new_table: npt.ArrayLike,
    rank: int,
    *,
    ranks_per_node: int | None = None,
    layers: npt.ArrayLike | None = None,
) -> list[LayerTransfers]:
    """Plans the weight copies that turn placement ``old_table`` into ``new_table``.

    For each slot whose expert changes: a local copy when the rank already holds the expert in
    another slot; otherwise one network receive per (rank, expert) from a rank holding it in
    ``old_table``, preferring the same node, then the candidate with the fewest sends so far in
    the layer (ties: lowest rank); further slots of the same rank needing that expert copy the
    received weights locally. Deterministic: every rank computes the same global plan.

    Args:
        old_table: int64 [L, D, S], expert of each slot now.
        new_table: int64 [L, D, S], expert of each slot after the update.
        rank: the rank whose view is returned (0..D-1).
        ranks_per_node: ranks per node (None: all ranks on one node).
        layers: int [K], the distinct layers to plan (None: all L), in the order returned.

    Returns:
        One LayerTransfers per planned layer, in ``layers`` order.

    Raises:
        ValueError naming the argument for mismatched shapes, a rank or node size out of
        range, or a new expert that no rank holds in ``old_table``.
    """
    old = _as_table(old_table, "old_table")
    new = _as_table(new_table, "new_table")
    if old.shape != new.shape:
        msg = f"new_table: shape {new.shape} does not match old_table {old.shape}"
        raise ValueError(msg)
    num_layers, num_ranks, _ = old.shape
    rank = check_int(rank, "rank", minimum=0, below=num_ranks)
    node_size = num_ranks if ranks_per_node is None else check_positive_int(ranks_per_node, "ranks_per_node")
    layer_ids = np.arange(num_layers, dtype=np.int64) if layers is None else check_layer_ids(layers, num_layers)
    return [
        _plan_layer(old[layer_idx], new[layer_idx], int(layer_idx), rank, node_size)
        for layer_idx in layer_ids
    ]


def _as_table(values: npt.ArrayLike, field: str) -> npt.NDArray[np.int64]:
    array = np.asarray(values)
    if array.dtype.kind not in "iu" or array.ndim != 3 or array.size == 0:
        msg = f"{field}: expected a non-empty integer array [L, D, S], got {array.dtype} {array.shape}"
        raise ValueError(msg)
    if array.min() < 0:
        msg = f"{field}: negative expert id {int(array.min())}"
        raise ValueError(msg)
    return np.ascontiguousarray(array, dtype=np.int64)


def _plan_layer(
    old: npt.NDArray[np.int64], new: npt.NDArray[np.int64], layer_idx: int, rank: int, node_size: int
) -> LayerTransfers:
    """One layer: old, new int64 [D, S]. Walks ranks and slots in order (the global plan)."""
    num_ranks = old.shape[0]
    # holders[e] = ranks holding e in old, ascending; first_slot[(r, e)] = its first old slot.
    holders: dict[int, list[int]] = {}
    first_slot: dict[tuple[int, int], int] = {}
    for src in range(num_ranks):
        for slot, expert in enumerate(old[src].tolist()):
            if (src, expert) not in first_slot:
                first_slot[(src, expert)] = slot
                holders.setdefault(expert, []).append(src)
    send_count = [0] * num_ranks
    my_receives: list[Receive] = []
    my_sends: list[Send] = []
    num_global_remote = 0
    for dst in range(num_ranks):
        arrived: dict[int, int] = {}  # expert -> slot of dst that received it
        for slot, expert in enumerate(new[dst].tolist()):
            if old[dst, slot] == expert:
                continue
            local_slot = first_slot.get((dst, expert))
            if local_slot is not None:
                receive = Receive(slot, expert, "local", dst, local_slot)
            elif expert in arrived:
                receive = Receive(slot, expert, "received", dst, arrived[expert])
            else:
                src = _pick_source(holders.get(expert), dst, node_size, send_count, expert, layer_idx)
                send_count[src] += 1
                num_global_remote += 1
                arrived[expert] = slot
                receive = Receive(slot, expert, "remote", src, first_slot[(src, expert)])
                if src == rank:
                    my_sends.append(Send(dst, expert, receive.src_slot))
            if dst == rank:
                my_receives.append(receive)
    my_sends.sort(key=lambda s: (s.dst_rank, s.expert))
    return LayerTransfers(layer_idx, rank, tuple(my_receives), tuple(my_sends), num_global_remote)


def _pick_source(
    candidates: list[int] | None,
    dst: int,
    node_size: int,
    send_count: list[int],
    expert: int,
    layer_idx: int,
) -> int:
    """Same node first, then the fewest sends so far, then the lowest rank."""
    if not candidates:
        msg = f"new_table: layer {layer_idx}: expert {expert} is held by no rank in old_table"
        raise ValueError(msg)
    node = dst // node_size
    return min(candidates, key=lambda src: (src // node_size != node, send_count[src], src))


__all__ = ["LayerTransfers", "Receive", "Send", "plan_transfers"]
