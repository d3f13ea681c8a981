"""PlannerWorker: plans in a separate process (also from a daemonic one), forwards its log lines,
never queues behind a request (the newest wins), detects a killed, stopped or raising process
and one that cannot start (cause logged, restarted with back-off), sends requests no larger than
their int64 counts; check_plan_result rejects plans that must not be applied."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import time
from typing import Any

import numpy as np
import pytest
from planners import FailsToStart, SlowPlanner, raising_planner

import eplb_native
from eplb_native.planning import PlanOutcome, PlanRequest, plan
from eplb_native.runtime.worker import PlanFailure, PlannerWorker, PlanResult, check_plan_result

NUM_LAYERS, NUM_EXPERTS, NUM_RANKS, NUM_REDUNDANT = 2, 8, 4, 4


def _current() -> np.ndarray:
    return eplb_native.default_placement(NUM_LAYERS, NUM_EXPERTS, NUM_RANKS, NUM_REDUNDANT).phy2log


def _request(tag: int = 50, steps: int = 4) -> PlanRequest:
    """Experts 0 and 1 (both on rank 0) hot; ``tag`` is the first count (SlowPlanner logs it)."""
    window = np.full((steps, NUM_LAYERS, NUM_EXPERTS), 5, dtype=np.int64)
    window[:, :, :2] = 60
    window[0, 0, 0] = tag
    return PlanRequest(window, NUM_RANKS, "default_eplb", current=_current())


def _answer(worker: PlannerWorker, request: PlanRequest, timeout_s: float = 60.0) -> Any:
    return worker.wait(worker.submit(request), timeout_s)


def _wait_for_restart(worker: PlannerWorker, old_pid: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while worker.pid in (old_pid, None) or not worker.ready:
        assert time.monotonic() < deadline, "the worker was not restarted"
        time.sleep(0.02)


def test_the_worker_plans_what_plan_plans_and_recovers_from_a_kill(caplog: pytest.LogCaptureFixture) -> None:
    request = _request()
    worker = PlannerWorker(min_backoff_s=0.2)
    try:
        result = _answer(worker, request)
        assert isinstance(result, PlanResult)
        assert result.outcome.layers.size > 0
        np.testing.assert_array_equal(result.outcome.new_phy2log, plan(request).new_phy2log)
        pid = worker.pid
        assert pid is not None
        with caplog.at_level(logging.ERROR, logger="eplb_native.runtime.worker"):
            os.kill(pid, signal.SIGKILL)
            _wait_for_restart(worker, pid)
            again = _answer(worker, request)
        assert isinstance(again, PlanResult), again
        np.testing.assert_array_equal(again.outcome.new_phy2log, result.outcome.new_phy2log)
        errors = [r.getMessage() for r in caplog.records if "planner failed" in r.getMessage()]
        assert len(errors) == 1 and f"planner process {pid} exited with code -9 while running" in errors[0], errors
        assert (worker.num_restarts, worker.num_failures) == (1, 1)
    finally:
        worker.close()


def test_a_stopped_worker_misses_its_heartbeat_and_is_replaced(caplog: pytest.LogCaptureFixture) -> None:
    worker = PlannerWorker(heartbeat_s=0.1, heartbeat_timeout_s=1.0, min_backoff_s=0.1)
    try:
        assert worker.wait_ready(60.0)
        stopped = worker.pid
        assert stopped is not None
        with caplog.at_level(logging.ERROR, logger="eplb_native.runtime.worker"):
            os.kill(stopped, signal.SIGSTOP)
            request_id = worker.submit(_request())
            assert worker.poll(request_id) is None  # never blocks
            start = time.monotonic()
            failure = worker.wait(request_id, 30.0)
            detected_s = time.monotonic() - start
        assert isinstance(failure, PlanFailure) and "missed its heartbeat" in failure.reason, failure
        assert detected_s < 10.0
        assert any(f"planner process {stopped} missed its heartbeat" in r.getMessage() for r in caplog.records)
        result = _answer(worker, _request())  # a fresh process answers the next request
        assert isinstance(result, PlanResult)
        assert worker.pid != stopped and worker.num_restarts == 1
    finally:
        worker.close()


def test_the_newest_request_wins_and_log_lines_reach_this_process(caplog: pytest.LogCaptureFixture) -> None:
    worker = PlannerWorker(SlowPlanner(delay_s=1.0))
    try:
        assert worker.wait_ready(60.0)
        with caplog.at_level(logging.INFO, logger="planners"):
            first = worker.submit(_request(tag=101))
            time.sleep(0.3)  # the process is busy with the first request now
            second = worker.submit(_request(tag=102))
            third = worker.submit(_request(tag=103))
            answer = worker.wait(third, 60.0)
            time.sleep(0.2)
        assert isinstance(answer, PlanResult) and answer.request_id == third
        for older in (first, second):
            superseded = worker.poll(older)
            assert isinstance(superseded, PlanFailure) and "superseded" in superseded.reason
        # The process planned the first request and then only the newest: 102 never queued.
        tags = [r.getMessage() for r in caplog.records if r.name == "planners"]
        assert [tag.split()[-1] for tag in tags] == ["101", "103"], tags
        assert all(tag.startswith("[planner ") for tag in tags)
    finally:
        worker.close()


def test_a_raising_planner_is_logged_once_and_serving_gets_no_plan(caplog: pytest.LogCaptureFixture) -> None:
    worker = PlannerWorker(raising_planner)
    try:
        with caplog.at_level(logging.ERROR, logger="eplb_native.runtime.worker"):
            for _ in range(2):
                failure = _answer(worker, _request())
                assert isinstance(failure, PlanFailure) and "injected policy bug" in failure.reason
        errors = [r.getMessage() for r in caplog.records if "planner failed" in r.getMessage()]
        assert len(errors) == 1 and "RuntimeError: injected policy bug" in errors[0], errors
        assert worker.num_restarts == 0  # the process itself is fine
    finally:
        worker.close()


def test_a_start_up_failure_is_reported_with_its_cause_within_seconds(caplog: pytest.LogCaptureFixture) -> None:
    worker = PlannerWorker(FailsToStart(), min_backoff_s=30.0)
    try:
        with caplog.at_level(logging.ERROR, logger="eplb_native.runtime.worker"):
            start = time.monotonic()
            request_id = worker.submit(_request())
            failure = worker.wait(request_id, 30.0)
            elapsed_s = time.monotonic() - start
        assert isinstance(failure, PlanFailure), failure
        assert elapsed_s < 10.0
        (error,) = [r.getMessage() for r in caplog.records if "planner failed" in r.getMessage()]
        assert "exited with code 1 while starting" in error
        assert "RuntimeError: no accelerator driver in this process" in error
    finally:
        worker.close()


def test_the_request_is_at_most_the_size_of_its_int64_counts() -> None:
    # A window of 600 steps x 8 layers x 64 experts, with the table in force (192 slots).
    rng = np.random.default_rng(0)
    window = rng.poisson(40.0, size=(600, 8, 64)).astype(np.int64)
    current = eplb_native.default_placement(8, 64, 16, 128).phy2log
    request = PlanRequest(window, 16, "swift_balancer", current=current)
    worker = PlannerWorker()
    try:
        result = _answer(worker, request)
        assert isinstance(result, PlanResult)
        assert 0 < worker.request_bytes <= window.nbytes, (worker.request_bytes, window.nbytes)
        np.testing.assert_array_equal(result.outcome.new_phy2log, plan(request).new_phy2log)
    finally:
        worker.close()


def _plan_in_a_daemon(queue: Any) -> None:
    worker = PlannerWorker()
    try:
        result = worker.wait(worker.submit(_request()), 60.0)
        queue.put(result.outcome.new_phy2log if isinstance(result, PlanResult) else repr(result))
    finally:
        worker.close()


def test_the_worker_starts_inside_a_daemonic_process() -> None:
    context = mp.get_context("fork")
    queue = context.Queue()
    process = context.Process(target=_plan_in_a_daemon, args=(queue,), daemon=True)
    process.start()
    answer = queue.get(timeout=120)
    process.join(timeout=30)
    assert isinstance(answer, np.ndarray), answer
    np.testing.assert_array_equal(answer, plan(_request()).new_phy2log)


def _outcome(new_phy2log: np.ndarray, layers: list[int]) -> PlanOutcome:
    base = plan(_request())
    return PlanOutcome(base.proposal, np.asarray(layers, dtype=np.int64), new_phy2log, base.par_before,
                       base.par_after, np.full(len(layers), np.nan), 0.0)


def test_check_plan_result_accepts_a_valid_swap() -> None:
    current = _current()
    new = current.copy()
    new[1, 0], new[1, 3] = current[1, 3], current[1, 0]
    check_plan_result(_outcome(new, [1]), current, NUM_RANKS, NUM_EXPERTS)


@pytest.mark.parametrize(
    ("edit", "layers", "field"),
    [
        (lambda t: t[:, :6], [0], "new_phy2log"),  # wrong shape
        (lambda t: np.where(t == 3, 2, t), [0, 1], "phy2log"),  # expert 3 lost its replicas
        (lambda t: np.where(t == 3, 99, t), [0, 1], "new_phy2log"),  # id out of range
        (lambda t: t[:, ::-1].copy(), [0], "new_phy2log"),  # layer 1 changed, not listed
        (lambda t: t, [0, 0], "layers"),
        (lambda t: t, [2], "layers"),
    ],
)
def test_check_plan_result_rejects_invalid_plans(edit: Any, layers: list[int], field: str) -> None:
    current = _current()
    with pytest.raises(ValueError, match=f"^{field}:"):
        check_plan_result(_outcome(edit(current.copy()), layers), current, NUM_RANKS, NUM_EXPERTS)
