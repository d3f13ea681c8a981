"""The planner process (``python -m eplb_native.planner_process``): plans the requests it reads
on stdin and writes answers, heartbeats and its log lines to stdout, all as frames.

Started by ``eplb_native.runtime.worker.PlannerWorker`` as a plain subprocess (so it also starts
from a daemonic process, where ``multiprocessing`` refuses children). The first frame names the
planner (a picklable callable ``PlanRequest -> PlanOutcome``, by default
``eplb_native.planning.plan``), the log level and the heartbeat period. Only the newest request
is planned: one that arrives while another is being planned replaces any still waiting. Needs
numpy only (no torch). Exits when stdin closes.

Frame: ``<Q payload bytes><I buffers>``, one ``<Q>`` length per buffer, the pickle (protocol
5) payload, then the buffers (numpy arrays, written and read without a pickled copy).
"""

from __future__ import annotations

import logging
import os
import pickle
import struct
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import IO, Any

import numpy as np

from eplb_native.planning import PlanRequest

logger = logging.getLogger(__name__)

_HEADER = struct.Struct("<QI")
_LENGTH = struct.Struct("<Q")


def write_frame(stream: IO[bytes], message: object) -> int:
    """Writes ``message`` as one frame and flushes; returns the bytes written."""
    buffers: list[pickle.PickleBuffer] = []
    payload = pickle.dumps(message, protocol=5, buffer_callback=buffers.append)
    raws = [buffer.raw() for buffer in buffers]
    header = _HEADER.pack(len(payload), len(raws)) + b"".join(_LENGTH.pack(raw.nbytes) for raw in raws)
    stream.write(header)
    stream.write(payload)
    for raw in raws:
        stream.write(raw)
    stream.flush()
    return len(header) + len(payload) + sum(raw.nbytes for raw in raws)


def read_frame(stream: IO[bytes]) -> Any:
    """The next frame's message; EOFError when the stream ends (also inside a frame)."""
    payload_size, num_buffers = _HEADER.unpack(_read_exactly(stream, _HEADER.size))
    sizes = [_LENGTH.unpack(_read_exactly(stream, _LENGTH.size))[0] for _ in range(num_buffers)]
    payload = _read_exactly(stream, payload_size)
    buffers = [_read_exactly(stream, size) for size in sizes]
    return pickle.loads(payload, buffers=buffers)


def _read_exactly(stream: IO[bytes], size: int) -> bytearray:
    data = bytearray(size)
    view = memoryview(data)
    filled = 0
    while filled < size:
        count = stream.readinto(view[filled:])  # type: ignore[attr-defined]
        if not count:
            msg = "planner pipe closed"
            raise EOFError(msg)
        filled += count
    return data


def narrow_counts(window: np.ndarray) -> np.ndarray:
    """``window`` in the smallest unsigned dtype holding its values when it holds int64 counts
    >= 0 (the pipe then carries at most half of the int64 bytes); other arrays unchanged."""
    if window.dtype != np.int64 or window.size == 0 or window.min() < 0:
        return window
    return window.astype(np.min_scalar_type(int(window.max())))


class _Channel:
    """Frames to the parent, written by several threads (one frame at a time)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def send(self, message: object) -> None:
        with self._lock:
            write_frame(self._stream, message)


class _ForwardHandler(logging.Handler):
    """Sends each log record to the parent as ("log", level, logger name, message)."""

    def __init__(self, channel: _Channel) -> None:
        super().__init__()
        self._channel = channel

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._channel.send(("log", record.levelno, record.name, record.getMessage()))
        except Exception:  # noqa: BLE001 -- a log line must never kill the planner
            self.handleError(record)


def _heartbeat(channel: _Channel, period_s: float) -> None:
    while True:
        time.sleep(period_s)
        channel.send(("heartbeat",))


class _Newest:
    """The newest request read and not yet taken (older ones are dropped)."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._request: tuple[int, dict[str, Any]] | None = None

    def put(self, request: tuple[int, dict[str, Any]]) -> None:
        with self._condition:
            if self._request is not None:
                logger.debug("planner: request %d replaced by the newer %d", self._request[0], request[0])
            self._request = request
            self._condition.notify()

    def take(self) -> tuple[int, dict[str, Any]]:
        with self._condition:
            while self._request is None:
                self._condition.wait()
            request, self._request = self._request, None
            return request


def _read_requests(stream: IO[bytes], newest: _Newest) -> None:
    """Reader thread: every ("plan", id, fields) frame into ``newest``; exits the process when
    the parent closes the pipe."""
    while True:
        try:
            message = read_frame(stream)
        except EOFError:
            os._exit(0)
        newest.put((message[1], message[2]))


def _plan_one(planner: Callable[[Any], Any], request_id: int, fields: dict[str, Any], channel: _Channel) -> None:
    start = time.perf_counter()
    try:
        window = np.asarray(fields.pop("window"))
        request = PlanRequest(window=window.astype(np.int64) if window.dtype.kind == "u" else window, **fields)
        outcome = planner(request)
    except Exception as error:  # noqa: BLE001 -- reported to the parent, which keeps serving
        channel.send(("error", request_id, f"{type(error).__name__}: {error}"))
        return
    channel.send(("result", request_id, outcome, (time.perf_counter() - start) * 1e3))


def main() -> None:
    """The planner process's main loop (see the module docstring)."""
    frames_out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints go to stderr, not the pipe
    sys.stdout = sys.stderr
    channel = _Channel(frames_out)
    frames_in = sys.stdin.buffer
    try:
        _, planner, level, heartbeat_s = read_frame(frames_in)
    except EOFError:
        return
    except Exception as error:  # noqa: BLE001 -- e.g. the planner's module does not import here
        traceback.print_exc()  # to stderr, which the parent logs line by line
        channel.send(("failed", f"{type(error).__name__}: {error}"))
        sys.exit(1)
    root = logging.getLogger()
    root.handlers = [_ForwardHandler(channel)]
    root.setLevel(level)
    threading.Thread(target=_heartbeat, args=(channel, heartbeat_s), name="eplb-heartbeat", daemon=True).start()
    newest = _Newest()
    threading.Thread(target=_read_requests, args=(frames_in, newest), name="eplb-requests", daemon=True).start()
    channel.send(("ready", os.getpid()))
    while True:
        request_id, fields = newest.take()
        _plan_one(planner, request_id, fields, channel)


if __name__ == "__main__":
    main()
