"""WeightLoader: moves expert weights layer by layer while serving continues, and commits a layer
only when every rank has all of its weights.

Per step: ``pre_forward()`` hands the next layers to a background thread, which posts their
point-to-point transfers (``torch.distributed.batch_isend_irecv``) into preallocated staging
buffers, waits for them and then agrees with every rank on which layers arrived everywhere (one
small all-reduce on a group only that thread uses), all while the forward steps run. Each
``post_forward()`` while a batch is in flight posts a small all-reduce of this rank's flags
("finished here", and per layer "failed here") and reads the one it posted a step earlier
(normally complete by then); once every rank's flag says finished, that ``post_forward`` takes
the thread's answer (ready, not waited for), copies the agreed layers' staging buffers into the
expert slots and installs the new placement rows. So a transfer may span several forward steps
and no step waits for it; every rank commits a batch at the same step, at the earliest one step
after the step whose ``pre_forward`` posted it. A layer that failed or timed out on any rank is
abandoned on all ranks with its old weights and maps.

A failure reaches the other ranks through those flags, not through their timeouts: at the step
that reads "layer k failed on some rank" every rank stops waiting for it (the transfers still
pending on the transfer group are made to fail at once; the background thread also skips the
batch's layers after k), takes the vote and abandons it, about one step after the failure.
``timeout_s`` only bounds a transfer that stops without any rank failing (e.g. a dead peer).

Weights on a GPU/NPU use the side-stream mode instead of the thread: ``pre_forward()`` posts the
transfers on a side stream of the weights' device (on the device's process-group backend, e.g.
NCCL/HCCL), so they overlap the forward on the main stream; once every rank's works completed
(the same one-flag agreement), ``post_forward()`` finishes them, votes on a CPU group and copies
on the main stream after the side stream. Collectives are then
launched by one thread in the same order on every rank. NOTE: the side-stream mode has only run
on the CPU here (``side_stream=True``, torch's CPU stream stand-ins), never on a GPU or NPU.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import timedelta

import numpy as np
import numpy.typing as npt
import torch
import torch.distributed as dist

from eplb_native.checks import IntArray, as_int_array, check_layer_ids, check_positive_int
from eplb_native.plan import Plan
from eplb_native.runtime.transfer import LayerTransfers, plan_transfers

logger = logging.getLogger(__name__)

_NUM_TAGS = 1 << 20  # batches cycle through tags 0.._NUM_TAGS-1
_BREAK_TAG = _NUM_TAGS  # a receive no rank ever sends to

# install(layer_idx, table_row int64 [D, S]): switch the layer's expert_map, log2phy and weight
# list to the placement row (the slot tensors already hold the new weights).
InstallFn = Callable[[int, IntArray], None]


@dataclass(frozen=True)
class LayerUpdate:
    """The outcome of one layer's weight move.

    Attributes:
        layer_idx: MoE layer index.
        applied: True when the new placement is in force on every rank; False when the layer was
            abandoned (old weights and maps kept everywhere).
        num_copies: slots of this rank that got an expert it did not hold (remote + received).
        global_bytes: bytes all ranks moved over the network for this layer.
        transfer_ms: this layer's share of its batch's posting and waiting, wall ms (the batch's
            time split evenly over its layers, so shares add up).
        apply_ms: this layer's share of the batch's agreement, copy and install, wall ms.
    """

    layer_idx: int
    applied: bool
    num_copies: int
    global_bytes: int
    transfer_ms: float
    apply_ms: float


@dataclass
class _Batch:
    """Layers in flight: their transfers, new rows, and either the background thread's future
    (one flag per layer: its weights arrived on every rank) or, in side-stream mode, each
    layer's posted works (None: posting failed).

    ``flags``: the all-reduce of every rank's flags posted at the last ``post_forward``;
    ``failed_here``: the layers (batch positions) that failed on this rank so far;
    ``failed_anywhere``: the positions some rank reported failed (read from ``flags``).
    Thread mode: ``position`` is the layer the thread is at (``len(transfers)`` once done),
    ``stop_at`` makes it skip the layers from that position on; both under ``progress``.
    """

    transfers: list[LayerTransfers]
    rows: list[IntArray]
    tag: int
    started: float
    future: Future[list[bool]] | None = None
    posted: list[list[dist.Work] | None] | None = None
    flags: dist.Work | None = None
    failed_here: list[bool] = field(default_factory=list)
    failed_anywhere: tuple[int, ...] = ()
    position: int = 0
    stop_at: int | None = None
    progress: threading.Condition = field(default_factory=threading.Condition)


class WeightLoader:
    """Moves expert weights between ranks for the layers of an update, a few layers per step.

    Example (every rank, same calls at the same steps)::

        loader = WeightLoader(slot_weights, install, table, rank=dist.get_rank())
        loader.allocate()                      # staging buffers, counted by memory profiling
        loader.schedule(new_table, layers=[3, 0])
        while loader.pending:
            loader.pre_forward(); model(x); updates = loader.post_forward()

    Args:
        slot_weights: per MoE layer, per weight kind (e.g. w1, w2, and for W8A8 their
            per-channel scale lists: ``RankExperts.weight_kinds``), the S slot tensors
            ``[L][K][S]``; each kind has one shape and dtype in every layer and slot. An
            expert's kinds move together, bitwise. New weights are copied into these tensors in
            place.
        install: called as ``install(layer_idx, row)`` with row int64 [D, S] once the layer's
            slot tensors hold the new weights on this rank and on all others.
        table: int64 [L, D, S], the placement in force now (the slot tensors hold it).
        rank: this process's rank in the default group (0 without torch.distributed: then
            every move is a local copy and no vote is needed).
        ranks_per_node: ranks per node, for same-node sources (None: one node).
        max_layers_per_step: layers whose transfers are in flight during one forward step.
        timeout_s: seconds a transfer may take before its layer is abandoned.
        side_stream: post transfers on a side stream from the calling thread instead of a
            background thread (None: when the weights are not on the CPU).
    """

    def __init__(
        self,
        slot_weights: Sequence[Sequence[Sequence[torch.Tensor]]],
        install: InstallFn,
        table: npt.ArrayLike,
        rank: int,
        *,
        ranks_per_node: int | None = None,
        max_layers_per_step: int = 1,
        timeout_s: float = 30.0,
        side_stream: bool | None = None,
    ) -> None:
        self._table = np.array(table, dtype=np.int64)
        if self._table.ndim != 3:
            msg = f"table: expected int64 [L, D, S], got shape {self._table.shape}"
            raise ValueError(msg)
        num_layers, _, num_slots = self._table.shape
        self._slot_weights = [[list(kind) for kind in layer] for layer in slot_weights]
        self._kind_specs = _kind_specs(self._slot_weights, num_layers, num_slots)
        check_positive_int(max_layers_per_step, "max_layers_per_step")
        self._install = install
        self._rank = rank
        self._ranks_per_node = ranks_per_node
        self._max_layers_per_step = max_layers_per_step
        self._timeout_s = timeout_s
        # NOTE: transfers run on their own group (a gloo timeout closes its pairs, so a failed
        # group is replaced) and the commit vote on another, both used only by the background
        # thread, so neither mixes with the model's collectives on the default group. Creating
        # groups is collective: all ranks build the loader at the same point.
        self._distributed = dist.is_available() and dist.is_initialized()
        device = self._kind_specs[0][2]
        # Device weights move on the device's backend (the default group's, e.g. NCCL / HCCL).
        self._transfer_backend = "gloo" if device.type == "cpu" else None
        self._control_group = dist.new_group(backend="gloo") if self._distributed else None
        self._transfer_group = dist.new_group(backend=self._transfer_backend) if self._distributed else None
        # The flags "finished here" and, per batch position, "not failed here", all-reduced
        # (minimum) by the calling thread only.
        self._flag_group = dist.new_group(backend="gloo") if self._distributed else None
        self._flags = torch.zeros(1 + max_layers_per_step, dtype=torch.int32)
        self._device_module = torch.get_device_module(device)
        use_stream = device.type != "cpu" if side_stream is None else side_stream
        self._stream = self._device_module.Stream() if use_stream else None
        # Device backends' works say when they completed; gloo's point-to-point ones only once waited.
        self._works_report_completion = device.type != "cpu"
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eplb-loader")
        self._queue: deque[tuple[int, IntArray]] = deque()
        self._in_flight: _Batch | None = None
        self._staging: list[list[list[torch.Tensor]]] = []
        self._votes = torch.zeros(max_layers_per_step, dtype=torch.int32)  # commit vote buffer
        self._tag = 0

    @property
    def table(self) -> IntArray:
        """int64 [L, D, S], the placement in force (a copy)."""
        return self._table.copy()

    @property
    def pending(self) -> int:
        """Layers scheduled and not yet applied or abandoned (queued plus in flight)."""
        return len(self._queue) + (len(self._in_flight.rows) if self._in_flight else 0)

    @property
    def expert_bytes(self) -> int:
        """Bytes of one expert's weights (all kinds)."""
        return sum(int(np.prod(shape)) * torch.empty((), dtype=dtype).element_size()
                   for shape, dtype, _ in self._kind_specs)

    def staging_buffers(self) -> list[torch.Tensor]:
        """The preallocated staging tensors (for memory accounting and identity checks)."""
        return [t for batch in self._staging for kind in batch for t in kind]

    def allocate(self) -> None:
        """Allocates the staging buffers (max_layers_per_step x K x S slot tensors) once; call during memory profiling. Later calls keep the same buffers."""
        if self._staging:
            return
        num_slots = self._table.shape[2]
        self._staging = [
            [[torch.empty(shape, dtype=dtype, device=device) for _ in range(num_slots)]
             for shape, dtype, device in self._kind_specs]
            for _ in range(self._max_layers_per_step)
        ]

    def schedule(self, new_table: npt.ArrayLike, layers: Sequence[int]) -> None:
        """Queues ``layers`` (priority order) to move to their rows of ``new_table`` int64
        [L, D, S]; layers whose row is unchanged are skipped. Raises RuntimeError while a
        previous update is still pending, and ValueError, before anything is queued, unless
        ``layers`` are distinct layer ids and each of their rows places every expert of the
        current table (ids 0..N-1) at least once and nothing else."""
        if self.pending:
            msg = f"schedule: {self.pending} layers of the previous update are still pending"
            raise RuntimeError(msg)
        table = as_int_array(new_table, "new_table")
        if table.shape != self._table.shape:
            msg = f"new_table: expected shape {self._table.shape}, got {table.shape}"
            raise ValueError(msg)
        num_layers = table.shape[0]
        layer_ids = check_layer_ids(list(layers), num_layers)
        # The placement once these layers commit: every expert of the table in force still
        # placed, in every layer.
        num_experts = int(self._table.max()) + 1
        after = self._table.copy()
        after[layer_ids] = table[layer_ids]
        try:
            Plan.from_phy2log(after.reshape(num_layers, -1), num_experts)
        except ValueError as error:
            msg = f"new_table: {error} (the table in force has experts 0..{num_experts - 1})"
            raise ValueError(msg) from error
        for layer_idx in layer_ids:
            if not np.array_equal(table[layer_idx], self._table[layer_idx]):
                self._queue.append((int(layer_idx), table[layer_idx].copy()))

    def pre_forward(self) -> None:
        """Posts the next layers' transfers in the background: on the loader thread, or on the
        side stream in side-stream mode (no-op when idle or in flight)."""
        if self._in_flight is not None or not self._queue:
            return
        self.allocate()
        count = min(self._max_layers_per_step, len(self._queue))
        picked = [self._queue.popleft() for _ in range(count)]
        transfers = []
        for layer_idx, row in picked:
            old = self._table[layer_idx][None]
            planned = plan_transfers(old, row[None], self._rank, ranks_per_node=self._ranks_per_node)
            transfers.append(replace(planned[0], layer_idx=layer_idx))
        self._tag = (self._tag + 1) % _NUM_TAGS
        batch = _Batch(transfers, [row for _, row in picked], self._tag, time.perf_counter(),
                       failed_here=[False] * len(transfers))
        if self._stream is None:
            batch.future = self._executor.submit(self._exchange, batch)
            self._in_flight = batch
            return
        # The staging buffers are free once the main stream's earlier commit copies ran.
        self._stream.wait_stream(self._device_module.current_stream())
        with self._device_module.stream(self._stream):
            batch.posted = [self._post_or_none(batch, position) for position in range(len(transfers))]
        self._in_flight = batch

    def post_forward(self) -> list[LayerUpdate]:
        """Once the layers in flight finished on every rank, or some rank failed one of them
        (agreed one step after each check): takes the verdict on them (the loader thread's, or in side-stream mode the vote taken
        here; all ranks agree on it) and applies those that arrived everywhere; returns one
        LayerUpdate per layer of the batch (empty when idle or still in flight)."""
        batch = self._in_flight
        if batch is None or (self._distributed and not self._settled_everywhere(batch)):
            return []
        self._in_flight = None
        try:
            if batch.future is not None:
                self._stop_failed_layers(batch)
                agreed = batch.future.result()
            else:
                agreed = self._finish_on_stream(batch)
            voted = True
        except Exception:
            # Only the vote itself can raise here (a broken control group): no agreement exists,
            # so nothing is applied on this rank.
            logger.exception("EPLB commit vote raised; abandoning layers %s",
                             [t.layer_idx for t in batch.transfers])
            agreed, voted = [False] * len(batch.transfers), False
        transfer_ms = (time.perf_counter() - batch.started) * 1e3
        start = time.perf_counter()
        if voted and not all(agreed) and self._distributed:
            # Every rank saw the same failed vote, so every rank takes part in this collective.
            self._replace_transfer_group()
        updates = []
        for position, (transfers, row) in enumerate(zip(batch.transfers, batch.rows, strict=True)):
            if agreed[position]:
                self._commit(position, transfers, row)
            else:
                logger.warning("EPLB layer %d: weight transfer failed on some rank; update abandoned,"
                               " old placement stays", transfers.layer_idx)
            updates.append((transfers, agreed[position]))
        apply_ms = (time.perf_counter() - start) * 1e3
        share = 1.0 / len(updates)
        return [
            LayerUpdate(t.layer_idx, ok, t.num_copies if ok else 0,
                        t.global_bytes(self.expert_bytes) if ok else 0,
                        transfer_ms * share, apply_ms * share)
            for t, ok in updates
        ]

    def _settled_everywhere(self, batch: _Batch) -> bool:
        """True when the flags all-reduced since the last call say every rank finished ``batch``
        or some rank failed one of its layers (then ``batch.failed_anywhere`` lists their
        positions); the same answer on every rank, at the same step. Otherwise posts this rank's
        flags for the next call and returns False."""
        if batch.flags is not None:
            batch.flags.wait()  # posted a step ago: normally complete
            batch.flags = None
            ok = self._flags[1 : 1 + len(batch.transfers)].tolist()
            batch.failed_anywhere = tuple(position for position, flag in enumerate(ok) if not flag)
            if int(self._flags[0]) == 1 or batch.failed_anywhere:
                return True
        if batch.future is not None:
            finished = batch.future.done()
        elif self._works_report_completion:  # side-stream mode on a device (NCCL / HCCL works)
            assert batch.posted is not None
            overdue = time.perf_counter() - batch.started > self._timeout_s  # failed when finished
            finished = overdue or all(work.is_completed() for works in batch.posted if works for work in works)
        else:  # side-stream stand-in on the CPU: gloo's point-to-point works complete only when waited
            finished = True
        self._flags.fill_(1)
        self._flags[0] = int(finished)
        with batch.progress:
            for position, failed_here in enumerate(batch.failed_here):
                self._flags[1 + position] = int(not failed_here)
        batch.flags = dist.all_reduce(self._flags, op=dist.ReduceOp.MIN, group=self._flag_group, async_op=True)
        return False

    def _stop_failed_layers(self, batch: _Batch) -> None:
        """Thread mode, when some rank failed a layer of the batch: the thread skips the layers
        from the first failed one on, and once it is past the layers before it (their
        transfers complete: every rank posted them) the transfers it still waits for are made
        to fail now instead of at their timeout."""
        if not batch.failed_anywhere:
            return
        first = batch.failed_anywhere[0]
        with batch.progress:
            batch.stop_at = first
            batch.progress.wait_for(lambda: batch.position >= first, timeout=self._timeout_s)
            waiting = batch.position < len(batch.transfers)
        if waiting:
            self._break_transfer_group()

    def run_to_completion(self) -> list[LayerUpdate]:
        """Moves every queued layer now, stopping the world (the synchronous alternative)."""
        updates: list[LayerUpdate] = []
        while self.pending:
            self.pre_forward()
            updates.extend(self.post_forward())
        return updates

    def close(self) -> None:
        """Stops the background thread (abandons nothing: call when idle)."""
        self._executor.shutdown(wait=True)

    def _exchange(self, batch: _Batch) -> list[bool]:
        """Background thread: posts and waits for each layer's transfers, fills the staging
        buffers of local copies, then votes. One flag per layer: its weights are staged on every
        rank (the vote's minimum, identical on all ranks). Layers from ``batch.stop_at`` on
        are skipped (some rank failed one of them)."""
        deadline = time.monotonic() + self._timeout_s
        arrived = []
        for position, transfers in enumerate(batch.transfers):
            with batch.progress:
                batch.position = position
                batch.progress.notify_all()
                skip = batch.stop_at is not None and position >= batch.stop_at
            try:
                if skip:
                    arrived.append(False)
                    continue
                works = self._post_layer(position, transfers, batch.tag)
                self._finish_layer(position, transfers, works, deadline)
                arrived.append(True)
            except Exception as error:  # noqa: BLE001 -- any failure abandons the layer
                self._log_failure(transfers, error)
                arrived.append(False)
                with batch.progress:
                    batch.failed_here[position] = True
        with batch.progress:
            batch.position = len(batch.transfers)
            batch.progress.notify_all()
        return self._vote(arrived)

    def _finish_on_stream(self, batch: _Batch) -> list[bool]:
        """Side-stream mode, after forward: waits for each layer's works and finishes its
        staging on the side stream, waits for the side stream on the host, then votes. When some
        rank failed a layer, the layers that failed nowhere are waited for first (on the CPU
        every rank posted them; on a device the communicator is aborted first: a receive that
        never completes would block the side stream), then the failed ones' pending transfers
        are made to fail instead of waited for."""
        assert batch.posted is not None
        assert self._stream is not None
        deadline = batch.started + self._timeout_s  # perf_counter based, like ``started``
        failed = set(batch.failed_anywhere)
        if failed and self._works_report_completion:
            # NOTE: never run on a GPU/NPU; NCCL / HCCL need the abort to release the side stream.
            self._break_transfer_group()
            failed = set(range(len(batch.transfers)))
        arrived = []
        with self._device_module.stream(self._stream):
            for position, (transfers, works) in enumerate(zip(batch.transfers, batch.posted, strict=True)):
                if works is None or position in failed:
                    arrived.append(False)
                    continue
                try:
                    self._finish_layer(position, transfers, works, deadline, clock=time.perf_counter)
                    arrived.append(True)
                except Exception as error:  # noqa: BLE001 -- any failure abandons the layer
                    self._log_failure(transfers, error)
                    arrived.append(False)
        if failed and not self._works_report_completion:
            self._break_transfer_group()
        staged = self._device_module.Event()
        staged.record(self._stream)
        staged.synchronize()  # the host waits: the staged weights are in memory
        agreed = self._vote(arrived)
        self._device_module.current_stream().wait_stream(self._stream)  # commit copies after it
        return agreed

    def _post_or_none(self, batch: _Batch, position: int) -> list[dist.Work] | None:
        transfers = batch.transfers[position]
        try:
            return self._post_layer(position, transfers, batch.tag)
        except Exception as error:  # noqa: BLE001 -- any failure abandons the layer
            self._log_failure(transfers, error)
            batch.failed_here[position] = True
            return None

    def _log_failure(self, transfers: LayerTransfers, error: Exception) -> None:
        logger.warning("EPLB layer %d: transfer failed on rank %d: %s", transfers.layer_idx, self._rank, error)

    def _vote(self, arrived: list[bool]) -> list[bool]:
        """The minimum of every rank's flags, per layer (identical on all ranks)."""
        if not self._distributed:
            return arrived
        # Every rank reaches this vote once per batch (failures were caught before), on a group
        # only one thread uses, so the all-reduces of successive batches pair up.
        votes = self._votes[: len(arrived)]
        votes.copy_(torch.tensor(arrived, dtype=torch.int32))
        dist.all_reduce(votes, op=dist.ReduceOp.MIN, group=self._control_group)
        return [bool(v) for v in votes.tolist()]

    def _post_layer(self, position: int, transfers: LayerTransfers, tag: int) -> list[dist.Work]:
        """Posts the layer's sends and receives (into staging); returns their works."""
        weights = self._slot_weights[transfers.layer_idx]
        staging = self._staging[position]
        ops = []
        for send in transfers.sends:
            for kind in weights:
                ops.append(dist.P2POp(dist.isend, kind[send.src_slot], send.dst_rank,
                                      group=self._transfer_group, tag=tag))
        for receive in transfers.remote_receives:
            for kind in staging:
                ops.append(dist.P2POp(dist.irecv, kind[receive.slot], receive.src_rank,
                                      group=self._transfer_group, tag=tag))
        return dist.batch_isend_irecv(ops) if ops else []

    def _finish_layer(
        self, position: int, transfers: LayerTransfers, works: list[dist.Work], deadline: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Waits for the layer's works (by ``deadline`` on ``clock``), then stages its local and
        repeated copies."""
        weights = self._slot_weights[transfers.layer_idx]
        staging = self._staging[position]
        for work in works:
            remaining = max(deadline - clock(), 0.001)
            work.wait(timeout=timedelta(seconds=remaining))
        # Local copies read the old weights (slots are only written at commit), so cycles of
        # slot-to-slot moves need no ordering; "received" copies read the staged arrival.
        for receive in transfers.receives:
            if receive.source == "local":
                for kind_weights, kind_staging in zip(weights, staging, strict=True):
                    kind_staging[receive.slot].copy_(kind_weights[receive.src_slot])
        for receive in transfers.receives:
            if receive.source == "received":
                for kind_staging in staging:
                    kind_staging[receive.slot].copy_(kind_staging[receive.src_slot])

    def _commit(self, position: int, transfers: LayerTransfers, row: IntArray) -> None:
        weights = self._slot_weights[transfers.layer_idx]
        staging = self._staging[position]
        for receive in transfers.receives:
            for kind_weights, kind_staging in zip(weights, staging, strict=True):
                kind_weights[receive.slot].copy_(kind_staging[receive.slot])
        self._install(transfers.layer_idx, row)
        self._table[transfers.layer_idx] = row

    def _break_transfer_group(self) -> None:
        """Makes every transfer still pending on this rank's transfer group fail now (the group
        is replaced after the vote). gloo: a receive that times out closes all connections of
        its group, failing their pending operations, so one receive nobody sends to is waited
        for 1 ms; other backends: the group is aborted."""
        group = self._transfer_group
        if group is None or dist.get_world_size() < 2:
            return
        if self._transfer_backend != "gloo":
            group.abort()
            return
        peer = (self._rank + 1) % dist.get_world_size()
        try:
            probe = dist.irecv(torch.zeros(1), src=peer, group=group, tag=_BREAK_TAG)
            if probe is not None:
                probe.wait(timeout=timedelta(milliseconds=1))
        except Exception:  # noqa: BLE001 -- the expected timeout (or the group already closed)
            logger.debug("EPLB transfer group closed on rank %d", self._rank)

    def _replace_transfer_group(self) -> None:
        """A timed-out gloo transfer closes its connections: every rank (they all saw the failed
        vote) builds a fresh transfer group, and any late message lands in the old one."""
        self._transfer_group = dist.new_group(backend=self._transfer_backend)


def _kind_specs(
    slot_weights: list[list[list[torch.Tensor]]], num_layers: int, num_slots: int
) -> list[tuple[torch.Size, torch.dtype, torch.device]]:
    """(shape, dtype, device) of each weight kind; ValueError unless all layers and slots agree."""
    if len(slot_weights) != num_layers or not slot_weights[0]:
        msg = f"slot_weights: expected {num_layers} layers of [K][S] tensors, got {len(slot_weights)}"
        raise ValueError(msg)
    specs = [(kind[0].shape, kind[0].dtype, kind[0].device) for kind in slot_weights[0]]
    for layer_idx, layer in enumerate(slot_weights):
        if len(layer) != len(specs):
            msg = f"slot_weights: layer {layer_idx} has {len(layer)} weight kinds, layer 0 {len(specs)}"
            raise ValueError(msg)
        for kind_idx, kind in enumerate(layer):
            if len(kind) != num_slots or any(
                (t.shape, t.dtype, t.device) != specs[kind_idx] for t in kind
            ):
                msg = (f"slot_weights: layer {layer_idx} kind {kind_idx}: expected {num_slots} "
                       f"tensors of {specs[kind_idx]}")
                raise ValueError(msg)
    return specs


__all__ = ["InstallFn", "LayerUpdate", "WeightLoader"]
