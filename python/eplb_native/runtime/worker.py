"""PlannerWorker: plans in a separate process, off the serving critical path, and survives it.

The process (``python -m eplb_native.planner_process``) is a plain subprocess talking over
pipes, so it also starts from a daemonic process (an engine worker). Background threads of the
serving process send it requests, read its answers, heartbeats and log lines (re-emitted on
this process's loggers), and watch its deadlines: a worker that misses its heartbeat, takes
longer than ``plan_timeout_s`` for a request, dies, or fails to start is killed (its cause
logged once) and restarted with exponential back-off; the request it held is answered with a
``PlanFailure``. The newest request wins: ``submit`` never queues behind an older request, and
answers to older requests are dropped. Answers are checked (``check_plan_result``) before
anyone may apply them. No call of the serving thread waits unless it asks to (``wait``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eplb_native.checks import IntArray, check_layer_ids
from eplb_native.plan import Plan, validate_plan
from eplb_native.planner_process import narrow_counts, read_frame, write_frame
from eplb_native.planning import PlanOutcome, PlanRequest, plan

logger = logging.getLogger(__name__)


#: What the worker runs: a picklable callable (importable by name in a fresh interpreter).
Planner = Callable[[PlanRequest], PlanOutcome]


@dataclass(frozen=True)
class PlanResult:
    """The worker's answer to one request.

    Attributes:
        request_id: the id ``submit`` returned.
        outcome: what ``plan`` decided.
        worker_ms: the request's time in the worker (its check, planning and selection), ms.
    """

    request_id: int
    outcome: PlanOutcome
    worker_ms: float


@dataclass(frozen=True)
class PlanFailure:
    """No answer will come for request ``request_id``: ``reason`` (logged already)."""

    request_id: int
    reason: str


class _Child:
    """One planner process and the threads that talk to it."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self.started = time.monotonic()
        self.last_seen = self.started
        self.ready = False
        self.failure: str | None = None  # why it is being replaced
        self.stderr_tail: list[str] = []
        self.start_error: str | None = None  # the process's own account of a failed start
        self.outbox: tuple[int, dict[str, Any]] | None = None  # the newest request not yet written


class PlannerWorker:
    """A planner process that answers ``PlanRequest``s without blocking the caller.

    Example::

        worker = PlannerWorker()                   # eplb_native.planning.plan in the process
        worker.wait_ready(timeout_s=30)            # start-up (optional: submit starts it too)
        request_id = worker.submit(request)        # returns at once; the newest request wins
        answer = worker.poll(request_id)           # PlanResult, PlanFailure, or None (pending)
        worker.close()

    The process forwards its log records at the level ``eplb_native``'s logger has when it
    starts.

    Args:
        planner: picklable callable run in the process for each request (default ``plan``).
        heartbeat_s: the process's heartbeat period, s.
        heartbeat_timeout_s: silence after which the process is killed and restarted, s.
        plan_timeout_s: longest a request may wait for its answer before the process is killed
            and restarted, s.
        start_timeout_s: longest the process may take to become ready, s.
        min_backoff_s, max_backoff_s: restart delay after a failure, doubled per consecutive
            failure between these bounds.
    """

    def __init__(
        self,
        planner: Planner = plan,
        *,
        heartbeat_s: float = 0.5,
        heartbeat_timeout_s: float = 10.0,
        plan_timeout_s: float = 600.0,
        start_timeout_s: float = 120.0,
        min_backoff_s: float = 0.5,
        max_backoff_s: float = 60.0,
    ) -> None:
        if not 0 < heartbeat_s < heartbeat_timeout_s:
            msg = f"heartbeat_timeout_s: expected more than heartbeat_s={heartbeat_s}, got {heartbeat_timeout_s}"
            raise ValueError(msg)
        self._planner = planner
        self._heartbeat_s = heartbeat_s
        self._heartbeat_timeout_s = heartbeat_timeout_s
        self._plan_timeout_s = plan_timeout_s
        self._start_timeout_s = start_timeout_s
        self._min_backoff_s = min_backoff_s
        self._max_backoff_s = max_backoff_s
        self._backoff_s = min_backoff_s
        self._condition = threading.Condition()
        self._child: _Child | None = None
        self._restart_at = 0.0
        self._next_id = 0
        self._latest: int | None = None  # the newest request's id
        self._latest_sent: float | None = None  # when it was handed to the current process
        self._answer: PlanResult | PlanFailure | None = None  # to the newest request
        self._pending: tuple[int, dict[str, Any]] | None = None  # the newest, while no process runs
        self._last_error: str | None = None
        self._closed = False
        self.request_bytes = 0  # bytes of the last request written to the pipe
        self.num_failures = 0
        self.num_restarts = -1  # the first start is not a restart
        self._supervisor = threading.Thread(target=self._supervise, name="eplb-planner-watch", daemon=True)
        self._supervisor.start()

    @property
    def alive(self) -> bool:
        """True while a planner process runs."""
        with self._condition:
            return self._child is not None and self._child.process.poll() is None

    @property
    def ready(self) -> bool:
        """True while a started process has said it is ready."""
        with self._condition:
            return self._child is not None and self._child.ready and self._child.failure is None

    @property
    def pid(self) -> int | None:
        """The planner process's id while it runs."""
        with self._condition:
            return None if self._child is None else self._child.process.pid

    def wait_ready(self, timeout_s: float) -> bool:
        """Waits up to ``timeout_s`` until a process is ready (starting one if none runs)."""
        deadline = time.monotonic() + timeout_s
        with self._condition:
            self._condition.notify_all()
            while not (self._child is not None and self._child.ready and self._child.failure is None):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    return False
                self._condition.wait(min(remaining, 0.05))
            return True

    def submit(self, request: PlanRequest) -> int:
        """Hands ``request`` to the process (started if none runs) and returns its id at once.
        It replaces any request that has no answer yet: their answers will be dropped."""
        with self._condition:
            request_id = self._next_id
            self._next_id += 1
            self._latest = request_id
            self._answer = None
            self._latest_sent = None
            fields = {f.name: getattr(request, f.name) for f in dataclasses.fields(request)}
            if self._child is not None and self._child.failure is None:
                self._child.outbox = (request_id, fields)
                self._latest_sent = time.monotonic()
            else:
                self._pending = (request_id, fields)
            self._condition.notify_all()
            return request_id

    def poll(self, request_id: int) -> PlanResult | PlanFailure | None:
        """The answer to ``request_id`` when it came (a PlanFailure when none will come, also
        for a superseded request), else None. Never waits."""
        with self._condition:
            if request_id != self._latest:
                return PlanFailure(request_id, "superseded by a newer request")
            return self._answer

    def wait(self, request_id: int, timeout_s: float) -> PlanResult | PlanFailure | None:
        """As ``poll``, waiting up to ``timeout_s`` for the answer."""
        deadline = time.monotonic() + timeout_s
        with self._condition:
            while True:
                answer = self.poll(request_id)
                remaining = deadline - time.monotonic()
                if answer is not None or remaining <= 0:
                    return answer
                self._condition.wait(min(remaining, 0.05))

    def close(self) -> None:
        """Stops the process and the threads."""
        with self._condition:
            self._closed = True
            child, self._child = self._child, None
            self._condition.notify_all()
        if child is not None:
            _stop(child.process)
        self._supervisor.join(timeout=5.0)

    # -- background side ---------------------------------------------------------------------

    def _supervise(self) -> None:
        """Supervisor thread: starts and restarts the process, enforces its deadlines."""
        while True:
            with self._condition:
                if self._closed:
                    return
                self._check_deadlines()
                child = self._child
                start = child is None and time.monotonic() >= self._restart_at
            if start:
                self._start()
            with self._condition:
                if self._closed:
                    return
                self._condition.wait(0.05)

    def _start(self) -> None:
        env = dict(os.environ)
        paths = [path for path in sys.path if path and Path(path).is_dir()]
        env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "eplb_native.planner_process"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                start_new_session=True,  # a terminal's Ctrl-C reaches the server, not the planner
            )  # fmt: skip
        except OSError as error:
            with self._condition:
                self.num_failures += 1
                self._restart_at = time.monotonic() + self._backoff_s
                if self._pending is not None:
                    request_id, self._pending = self._pending[0], None
                    self._answer = PlanFailure(request_id, f"planner process could not start: {error}")
                self._log_failure(f"planner process could not start: {error}")
                self._backoff_s = min(self._backoff_s * 2, self._max_backoff_s)
                self._condition.notify_all()
            return
        child = _Child(process)
        level = logging.getLogger("eplb_native").getEffectiveLevel()
        with self._condition:
            if self._closed:
                _stop(process)
                return
            self._child = child
            self.num_restarts += 1
            if self._pending is not None:
                child.outbox, self._pending = self._pending, None
                self._latest_sent = time.monotonic()
        for target, name in ((self._receive, "receive"), (self._drain_stderr, "stderr")):
            threading.Thread(target=target, args=(child,), name=f"eplb-planner-{name}", daemon=True).start()
        assert process.stdin is not None
        with contextlib.suppress(OSError):  # a process that died at once: its receive thread says why
            write_frame(process.stdin, ("init", self._planner, level, self._heartbeat_s))
        threading.Thread(target=self._send, args=(child,), name="eplb-planner-send", daemon=True).start()

    def _send(self, child: _Child) -> None:
        """Sender thread of one process: writes its newest request when there is one."""
        stdin = child.process.stdin
        assert stdin is not None
        while True:
            with self._condition:
                while child.outbox is None and child.failure is None and not self._closed:
                    self._condition.wait()
                if child.failure is not None or self._closed:
                    return
                request_id, fields = child.outbox  # type: ignore[misc]
                child.outbox = None
            fields = {**fields, "window": narrow_counts(fields["window"])}
            try:
                size = write_frame(stdin, ("plan", request_id, fields))
            except (BrokenPipeError, OSError, ValueError):
                return  # the process went away: its receive thread or the supervisor reports it
            self.request_bytes = size

    def _receive(self, child: _Child) -> None:
        """Receive thread of one process: answers, heartbeats, log lines; reports its exit."""
        stdout = child.process.stdout
        assert stdout is not None
        while True:
            try:
                message = read_frame(stdout)
            except (EOFError, OSError, ValueError):
                break
            kind = message[0]
            if kind == "log":
                _, level, name, text = message
                logging.getLogger(name).log(level, "[planner %d] %s", child.process.pid, text)
            with self._condition:
                child.last_seen = time.monotonic()
                if kind == "ready":
                    child.ready = True
                    self._condition.notify_all()
                elif kind == "failed":
                    child.start_error = message[1]
                elif kind in ("result", "error") and message[1] == self._latest and self._answer is None:
                    if kind == "result":
                        self._answer = PlanResult(message[1], message[2], message[3])
                        self._backoff_s = self._min_backoff_s
                        self._last_error = None
                    else:
                        self._answer = PlanFailure(message[1], f"planner raised {message[2]}")
                        self._log_failure(f"the planner raised {message[2]}")
                    self._condition.notify_all()
        stdout.close()
        code = child.process.wait()
        with self._condition:
            if child.failure is None and child is self._child:
                phase = "running" if child.ready else "starting"
                cause = child.start_error or "; ".join(child.stderr_tail[-3:])
                self._fail(child, f"exited with code {code} while {phase}" + (f": {cause}" if cause else ""))

    def _drain_stderr(self, child: _Child) -> None:
        """Stderr thread of one process: its lines (tracebacks, prints) as warnings."""
        stderr = child.process.stderr
        assert stderr is not None
        for raw in iter(stderr.readline, b""):
            line = raw.decode(errors="replace").rstrip()
            if line:
                with self._condition:
                    child.stderr_tail = [*child.stderr_tail[-19:], line]
                logger.warning("[planner %d stderr] %s", child.process.pid, line)
        stderr.close()

    def _check_deadlines(self) -> None:
        """(Lock held.) Kills the process when it misses a deadline."""
        child = self._child
        if child is None or child.failure is not None:
            return
        now = time.monotonic()
        if not child.ready:
            if now - child.started > self._start_timeout_s:
                self._fail(child, f"was not ready within start_timeout_s={self._start_timeout_s:g} s")
        elif now - child.last_seen > self._heartbeat_timeout_s:
            self._fail(child, f"missed its heartbeat: silent for {now - child.last_seen:.1f} s "
                              f"(heartbeat_timeout_s={self._heartbeat_timeout_s:g})")
        elif (self._latest_sent is not None and self._answer is None
              and now - self._latest_sent > self._plan_timeout_s):  # fmt: skip
            self._fail(child, f"gave no answer within plan_timeout_s={self._plan_timeout_s:g} s")

    def _fail(self, child: _Child, reason: str) -> None:
        """(Lock held.) Replaces ``child``: killed, its request answered with a failure, a
        restart scheduled after the back-off."""
        child.failure = reason
        self.num_failures += 1
        _stop(child.process, graceful=False)
        if child is self._child:
            self._child = None
            self._restart_at = time.monotonic() + self._backoff_s
            if self._latest is not None and self._answer is None and self._latest_sent is not None:
                self._answer = PlanFailure(self._latest, f"planner process failed: {reason}")
            self._log_failure(f"planner process {child.process.pid} {reason}")
            self._backoff_s = min(self._backoff_s * 2, self._max_backoff_s)
        self._condition.notify_all()

    def _log_failure(self, reason: str) -> None:
        if reason != self._last_error:
            logger.error("EPLB planner failed: %s; serving continues with the current placement, "
                         "next start in %.1f s", reason, self._backoff_s)
        else:
            logger.debug("EPLB planner failed again: %s", reason)
        self._last_error = reason


def _stop(process: subprocess.Popen[bytes], graceful: bool = True) -> None:
    """Ends the planner process: its stdin closed (it exits), else killed."""
    if graceful and process.poll() is None:
        try:
            assert process.stdin is not None
            process.stdin.close()
            process.wait(timeout=5.0)
        except (OSError, subprocess.TimeoutExpired):
            pass
    if process.poll() is None:
        process.kill()
    if process.stdin is not None:  # the receive thread reaps the process
        with contextlib.suppress(OSError):
            process.stdin.close()


def check_plan_result(outcome: PlanOutcome, current: IntArray, num_ranks: int, num_experts: int) -> None:
    """Raises ValueError naming the field unless ``outcome`` may be applied to the placement
    ``current`` int64 [L, P]: ``new_phy2log`` has its shape and is a valid placement of
    ``num_experts`` experts on ``num_ranks`` ranks (``validate_plan``); ``layers`` are distinct
    ids in range and every row outside them is unchanged."""
    table = np.asarray(outcome.new_phy2log)
    if table.shape != current.shape or table.dtype.kind not in "iu":
        msg = f"new_phy2log: expected an int table of shape {current.shape}, got {table.dtype} {table.shape}"
        raise ValueError(msg)
    num_layers = table.shape[0]
    layers = check_layer_ids(outcome.layers, num_layers)
    untouched = np.setdiff1d(np.arange(num_layers), layers)
    if not np.array_equal(table[untouched], current[untouched]):
        msg = "new_phy2log: rows of layers outside 'layers' differ from the current placement"
        raise ValueError(msg)
    if table.min() < 0 or table.max() >= num_experts:
        msg = f"new_phy2log: expert ids must lie in [0, {num_experts}), got [{table.min()}, {table.max()}]"
        raise ValueError(msg)
    validate_plan(Plan.from_phy2log(table.astype(np.int64), num_experts), num_ranks, allow_duplicate_on_rank=True)


__all__ = ["PlanFailure", "PlanResult", "Planner", "PlannerWorker", "check_plan_result"]
