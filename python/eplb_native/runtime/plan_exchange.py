"""PlanExchange: hands one update plan to every rank in non-blocking stages, one per step.

The plan comes from a planning leader (rank 0, or the first rank of every node when each node
plans from the identical gathered heat). ``post`` starts an asynchronous broadcast of a fixed-size
int64 encoding from the leader to its group (a plan, no plan, or "not ready yet"); ``verify`` (a
later step) waits for it and starts an asynchronous all-reduce of the encoding's checksum and of
a "not ready" flag over all ranks; ``result`` (a later step) waits for that and returns the plan
only when every rank holds the same one, or says that some leader's plan was not ready (all
ranks then try again together). A rank never applies a plan another rank does not hold; a
mismatch is logged and nothing is applied. Without torch.distributed (one process) every stage
is local.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist

from eplb_native.checks import IntArray

logger = logging.getLogger(__name__)

Stage = Literal["idle", "broadcast", "verify"]

_HEADER = 7  # status, number of layers k, plan time in us, then 4 float64 bit patterns (PAR)
_NONE, _PLAN, _PENDING = 0, 1, 2  # status: no plan, a plan, the leader's plan is not ready
_CHECKSUM_BITS = 62  # so that -checksum fits int64 (one MAX all-reduce gives max and min)


@dataclass(frozen=True)
class SharedPlan:
    """The plan every rank applies.

    Attributes:
        layers: int64 [k], the layers to move, highest priority first.
        new_table: int64 [L, D, S], the proposed placement.
        plan_ms: the leader's policy time, ms (not part of the checksum: timings differ by node).
        par: PAR of the planned window's summed load over the layers: (mean before, max
            before, mean after, max after); computed alike by every leader from the same
            window and plan, not part of the checksum.
    """

    layers: IntArray
    new_table: IntArray
    plan_ms: float
    par: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)


class PlanExchange:
    """Non-blocking hand-over of one plan from the planning leaders to every rank.

    Example (every rank, one stage per step)::

        exchange = PlanExchange((L, D, S), leader=0, source_group=group, check_group=group)
        exchange.post(plan if rank == 0 else None)   # step t: broadcast posted
        exchange.verify()                            # step t + 1: checksum all-reduce posted
        pending, shared = exchange.result()          # step t + 2: the plan, or None

    Args:
        shape: (L, D, S) of the placement table.
        leader: global rank that plans for this rank's source group.
        source_group: the group the leader broadcasts to (None: no broadcast, one process).
        check_group: the group of all ranks the checksum is compared over (None: one process).
    """

    def __init__(
        self,
        shape: tuple[int, int, int],
        *,
        leader: int,
        source_group: dist.ProcessGroup | None,
        check_group: dist.ProcessGroup | None,
    ) -> None:
        self._shape = shape
        num_layers = shape[0]
        self._leader = leader
        self._source_group = source_group
        self._check_group = check_group
        size = _HEADER + num_layers + int(np.prod(shape))
        self._buffer = torch.zeros(size, dtype=torch.int64)  # the encoding, preallocated
        self._check = torch.zeros(3, dtype=torch.int64)  # [checksum, -checksum, not ready]
        self._work: dist.Work | None = None
        self._decoded: SharedPlan | None = None
        self.stage: Stage = "idle"
        self.num_mismatches = 0

    def post(self, plan: SharedPlan | None, *, pending: bool = False) -> None:
        """Stage 1 (every rank): the leader encodes its plan (None: no plan; ``pending``: its
        plan is not ready yet), the others receive it; the broadcast runs in the background."""
        self._expect("idle")
        values = self._buffer.numpy()
        values[:] = 0
        if pending:
            values[0] = _PENDING
        elif plan is not None:
            num_layers = self._shape[0]
            layers = np.asarray(plan.layers, dtype=np.int64).reshape(-1)
            values[:3] = (_PLAN, layers.size, round(plan.plan_ms * 1e3))
            values[3:_HEADER] = np.asarray(plan.par, dtype=np.float64).view(np.int64)
            values[_HEADER : _HEADER + layers.size] = layers
            values[_HEADER + num_layers :] = np.asarray(plan.new_table, dtype=np.int64).reshape(-1)
        if self._source_group is not None:
            self._work = dist.broadcast(self._buffer, src=self._leader, group=self._source_group, async_op=True)
        self.stage = "broadcast"

    def verify(self) -> None:
        """Stage 2: waits for the broadcast (normally done), decodes it and starts comparing its
        checksum across all ranks in the background."""
        self._expect("broadcast")
        self._wait()
        values = self._buffer.numpy()
        self._decoded = None
        if values[0] == _PLAN:
            num_layers = self._shape[0]
            par = values[3:_HEADER].view(np.float64)
            self._decoded = SharedPlan(
                values[_HEADER : _HEADER + int(values[1])].copy(),
                values[_HEADER + num_layers :].reshape(self._shape).copy(),
                float(values[2]) / 1e3,
                (float(par[0]), float(par[1]), float(par[2]), float(par[3])),
            )
        digest = hashlib.blake2b(values[:2].tobytes() + values[_HEADER:].tobytes(), digest_size=8).digest()
        checksum = int.from_bytes(digest, "little") >> (64 - _CHECKSUM_BITS)
        self._check[0], self._check[1], self._check[2] = checksum, -checksum, int(values[0] == _PENDING)
        if self._check_group is not None:
            self._work = dist.all_reduce(self._check, op=dist.ReduceOp.MAX, group=self._check_group, async_op=True)
        self.stage = "verify"

    def result(self) -> tuple[bool, SharedPlan | None]:
        """Stage 3: waits for the comparison. (True, None) when some leader's plan was not ready
        (every rank sees the same); else (False, the plan) when every rank holds the same one,
        (False, None) when there is no plan or, after logging an error, the ranks differ."""
        self._expect("verify")
        self._wait()
        self.stage = "idle"
        decoded, self._decoded = self._decoded, None
        if int(self._check[2]):
            return True, None
        highest, lowest = int(self._check[0]), -int(self._check[1])
        if highest != lowest:
            self.num_mismatches += 1
            logger.error("EPLB plans differ across ranks (checksums %#x .. %#x); nothing applied",
                         lowest, highest)
            return False, None
        return False, decoded

    def _wait(self) -> None:
        work, self._work = self._work, None
        if work is not None:
            work.wait()

    def _expect(self, stage: Stage) -> None:
        if self.stage != stage:
            msg = f"stage: PlanExchange is in stage {self.stage!r}, this call needs {stage!r}"
            raise RuntimeError(msg)


__all__ = ["PlanExchange", "SharedPlan"]

