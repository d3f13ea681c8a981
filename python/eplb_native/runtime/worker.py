"""PlannerWorker: runs the placement policy in a spawned process, off the serving critical path.

The serving process submits (placement table, heat) and polls for the answer without blocking.
A worker that dies or raises never stops serving: the error is logged once, the request is
dropped, and the process is restarted with exponential back-off. Answers are checked
(``check_plan_result``) before anyone may apply them.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from eplb_native.plan import Plan, validate_plan

logger = logging.getLogger(__name__)

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


class RebalancePolicy(Protocol):
    """What the worker runs: ``eplb_native.policies.EplbPolicy`` or anything shaped like it."""

    def rebalance(self, current_table: Any, workload: Any) -> tuple[bool, IntArray, IntArray]:
        """(changed, layers_by_priority int64 [k], new_table int64 [L, D, S])."""
        ...


# A picklable zero-argument callable that builds the policy inside the worker process.
PolicyFactory = Callable[[], RebalancePolicy]


@dataclass(frozen=True)
class PolicySpec:
    """A picklable recipe for ``eplb_native.policies.make_policy`` (the default factory).

    Attributes:
        name: registry name of the policy.
        num_groups, num_nodes: topology knobs of hierarchical policies.
        options: the policy's options dataclass, or None.
        num_threads: planner threads (0: all cores).
        seed: seed of randomised policies.
    """

    name: str
    num_groups: int = 1
    num_nodes: int = 1
    options: Any = None
    num_threads: int = 0
    seed: int = 0

    def __call__(self) -> RebalancePolicy:
        from eplb_native.policies import make_policy

        return make_policy(self.name, self.num_groups, self.num_nodes, self.options,
                           self.num_threads, self.seed)


@dataclass(frozen=True)
class PlanResult:
    """The worker's answer to one request.

    Attributes:
        request_id: the id ``submit`` returned.
        changed: the policy wants layers moved.
        layers: int64 [k], the layers to move, highest priority first.
        new_table: int64 [L, D, S], the proposed placement (unchanged rows for other layers).
        plan_ms: policy wall time in the worker, ms.
    """

    request_id: int
    changed: bool
    layers: IntArray
    new_table: IntArray
    plan_ms: float


def check_plan_result(result: PlanResult, current_table: IntArray, num_experts: int) -> None:
    """Raises ValueError naming the field unless ``result`` is a plan that may be applied:
    ``new_table`` has the shape of ``current_table`` int64 [L, D, S] and is a valid placement of
    ``num_experts`` experts (``validate_plan``); ``layers`` are distinct ids in range and every
    row outside them is unchanged."""
    table = np.asarray(result.new_table)
    if table.shape != current_table.shape or table.dtype.kind not in "iu":
        msg = f"new_table: expected an int table of shape {current_table.shape}, got {table.dtype} {table.shape}"
        raise ValueError(msg)
    num_layers, num_ranks, num_slots = table.shape
    layers = np.asarray(result.layers, dtype=np.int64).reshape(-1)
    if layers.size and (layers.min() < 0 or layers.max() >= num_layers or np.unique(layers).size != layers.size):
        msg = f"layers: expected distinct layer ids in [0, {num_layers}), got {layers.tolist()}"
        raise ValueError(msg)
    untouched = np.setdiff1d(np.arange(num_layers), layers)
    if not np.array_equal(table[untouched], current_table[untouched]):
        msg = "new_table: rows of layers outside 'layers' differ from the current placement"
        raise ValueError(msg)
    phy2log = table.reshape(num_layers, num_ranks * num_slots).astype(np.int64)
    if phy2log.min() < 0 or phy2log.max() >= num_experts:
        msg = f"new_table: expert ids must lie in [0, {num_experts}), got [{phy2log.min()}, {phy2log.max()}]"
        raise ValueError(msg)
    validate_plan(Plan.from_phy2log(phy2log, num_experts), num_ranks, allow_duplicate_on_rank=True)


def _serve(factory: PolicyFactory, requests: Any, results: Any) -> None:
    """Worker process main loop: one request in, one answer (or an error string) out."""
    policy = factory()
    results.put(_READY)
    while True:
        request = requests.get()
        if request is None:
            return
        request_id, current_table, workload = request
        start = time.perf_counter()
        try:
            changed, layers, new_table = policy.rebalance(current_table, workload)
            elapsed_ms = (time.perf_counter() - start) * 1e3
            results.put(PlanResult(request_id, bool(changed), np.asarray(layers, dtype=np.int64),
                                   np.asarray(new_table, dtype=np.int64), elapsed_ms))
        except Exception as error:  # noqa: BLE001 -- reported to the serving process
            results.put((request_id, f"{type(error).__name__}: {error}"))


_READY = "ready"


class PlannerWorker:
    """A planner process that answers (table, heat) requests without blocking the caller.

    Example::

        worker = PlannerWorker(PolicySpec("swift_balancer"))
        worker.start(wait_s=30)                     # spawn, build the policy, answer a ping
        request_id = worker.submit(table, workload)  # int64 [L, D, S], float64 [(T,) L, D, S]
        result = worker.poll()                       # PlanResult or None (not ready / failed)
        worker.close()

    Args:
        factory: picklable zero-argument callable building the policy in the worker process.
        min_backoff_s, max_backoff_s: restart delay after a failure, doubled per consecutive
            failure between these bounds.
    """

    def __init__(
        self, factory: PolicyFactory, *, min_backoff_s: float = 0.5, max_backoff_s: float = 60.0
    ) -> None:
        self._factory = factory
        self._context = mp.get_context("spawn")
        self._process: Any = None
        self._requests: Any = None
        self._results: Any = None
        self._next_id = 0
        self._waiting: int | None = None
        self._min_backoff_s = min_backoff_s
        self._max_backoff_s = max_backoff_s
        self._backoff_s = min_backoff_s
        self._restart_at = 0.0
        self._last_error: str | None = None
        self.num_failures = 0
        self.num_restarts = -1  # the first start is not a restart

    @property
    def alive(self) -> bool:
        """True while the worker process runs."""
        return self._process is not None and self._process.is_alive()

    @property
    def pid(self) -> int | None:
        """The worker's process id while it runs."""
        return self._process.pid if self.alive else None

    @property
    def busy(self) -> bool:
        """True while a submitted request has no answer yet."""
        return self._waiting is not None

    def start(self, wait_s: float = 0.0) -> bool:
        """Starts the process unless it runs or its back-off has not elapsed; with ``wait_s`` > 0
        also waits until it has built the policy (a ping round trip). Returns ``alive``."""
        if self.alive:
            return True
        if time.monotonic() < self._restart_at:
            return False
        self._requests = self._context.Queue()
        self._results = self._context.Queue()
        self._process = self._context.Process(
            target=_serve, args=(self._factory, self._requests, self._results),
            name="eplb-planner", daemon=True,
        )  # fmt: skip
        self._process.start()
        self._waiting = None
        self.num_restarts += 1
        if wait_s > 0:
            try:
                self._results.get(timeout=wait_s)  # _READY once the policy is built
            except queue.Empty:
                self._fail(f"planner did not start within {wait_s} s")
        return self.alive

    def submit(self, current_table: IntArray, workload: FloatArray) -> int | None:
        """Hands a request to the worker (restarting it first if it died and the back-off has
        elapsed). Returns its id, or None when no worker can take it now or one is busy."""
        self._check_health()
        if self.busy or not self.start():
            return None
        request_id = self._next_id
        self._next_id += 1
        self._requests.put((request_id, np.asarray(current_table), np.asarray(workload)))
        self._waiting = request_id
        return request_id

    def poll(self, timeout_s: float = 0.0) -> PlanResult | None:
        """The answer to the pending request if it is ready within ``timeout_s``; None when not
        ready, when nothing is pending, or when the worker failed (logged once, restarted later)."""
        if self._waiting is None:
            return None
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            try:
                if remaining > 0:
                    answer = self._results.get(timeout=min(remaining, 0.05))
                else:
                    answer = self._results.get_nowait()
            except queue.Empty:
                if not self._check_health() or time.monotonic() >= deadline:
                    return None
                continue
            if isinstance(answer, PlanResult) and answer.request_id == self._waiting:
                self._waiting = None
                self._backoff_s = self._min_backoff_s
                self._last_error = None
                return answer
            if isinstance(answer, tuple) and answer[0] == self._waiting:
                self._fail(f"policy raised: {answer[1]}")
                return None
            # Otherwise a late answer to a cancelled request, or the ready signal: dropped.

    def cancel(self) -> None:
        """Forgets the pending request (its late answer is discarded)."""
        self._waiting = None

    def close(self) -> None:
        """Stops the worker process."""
        if self._process is None:
            return
        if self._process.is_alive():
            self._requests.put(None)
            self._process.join(timeout=5.0)
            if self._process.is_alive():
                self._process.kill()
                self._process.join()
        self._process = None

    def _check_health(self) -> bool:
        """False (and the failure recorded) when a started worker has died."""
        if self._process is not None and not self._process.is_alive():
            self._fail(f"planner process exited with code {self._process.exitcode}")
            return False
        return True

    def _fail(self, error: str) -> None:
        self.num_failures += 1
        self._waiting = None
        if error != self._last_error:
            logger.error("EPLB planner failed (%s); serving continues with the current placement, "
                         "retry in %.1f s", error, self._backoff_s)
        else:
            logger.debug("EPLB planner failed again: %s", error)
        self._last_error = error
        if self._process is not None:
            if self._process.is_alive():
                self._process.kill()
            self._process.join()
            self._process = None
            self._restart_at = time.monotonic() + self._backoff_s
        self._backoff_s = min(self._backoff_s * 2, self._max_backoff_s)


__all__ = ["PlanResult", "PlannerWorker", "PolicyFactory", "PolicySpec", "RebalancePolicy", "check_plan_result"]
