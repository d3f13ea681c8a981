"""PlannerWorker: answers from a spawned process, survives a killed or raising policy (logged once,
restarted with back-off), and check_plan_result rejects plans that must not be applied."""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any

import numpy as np
import pytest

import eplb_native
from eplb_native.runtime.worker import PlannerWorker, PlanResult, PolicySpec, check_plan_result

NUM_LAYERS, NUM_EXPERTS, NUM_RANKS, NUM_REDUNDANT = 2, 8, 4, 4


def _table() -> np.ndarray:
    return eplb_native.default_placement(NUM_LAYERS, NUM_EXPERTS, NUM_RANKS, NUM_REDUNDANT).table(NUM_RANKS)


def _skewed_workload(table: np.ndarray) -> np.ndarray:
    workload = np.ones(table.shape, dtype=np.float64)  # [L, D, S] tokens per slot
    workload[:, 0, :] = 50.0  # rank 0 is hot
    return workload


class RaisingPolicy:
    """A policy that always raises (picklable by reference: module level)."""

    def rebalance(self, current_table: Any, workload: Any) -> Any:
        msg = "injected policy bug"
        raise RuntimeError(msg)


def raising_factory() -> RaisingPolicy:
    return RaisingPolicy()


def _wait_for(worker: PlannerWorker, table: np.ndarray, workload: np.ndarray, budget_s: float = 60.0) -> PlanResult:
    """Submits until the (possibly restarting) worker answers."""
    deadline = time.monotonic() + budget_s
    while time.monotonic() < deadline:
        if worker.submit(table, workload) is not None:
            result = worker.poll(timeout_s=budget_s)
            if result is not None:
                return result
        time.sleep(0.05)
    msg = "worker never answered"
    raise AssertionError(msg)


def test_worker_plans_off_process_and_recovers_from_a_kill(caplog: pytest.LogCaptureFixture) -> None:
    table = _table()
    workload = _skewed_workload(table)
    worker = PlannerWorker(PolicySpec("default_eplb"), min_backoff_s=0.2)
    try:
        assert worker.start(wait_s=60.0)
        result = _wait_for(worker, table, workload)
        assert result.changed
        assert result.layers.size > 0
        check_plan_result(result, table, NUM_EXPERTS)

        pid = worker.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        with caplog.at_level(logging.ERROR, logger="eplb_native.runtime.worker"):
            deadline = time.monotonic() + 10
            while worker.alive and time.monotonic() < deadline:
                time.sleep(0.01)
            # Dead: nothing taken now (the failure is logged once, the restart waits for back-off).
            assert worker.submit(table, workload) is None
            assert worker.submit(table, workload) is None
            errors = [r for r in caplog.records if "planner failed" in r.getMessage()]
            assert len(errors) == 1, [r.getMessage() for r in errors]
            again = _wait_for(worker, table, workload)
        assert np.array_equal(again.new_table, result.new_table), "same input, same plan after restart"
        assert worker.num_restarts == 1
        assert worker.num_failures == 1
    finally:
        worker.close()


def test_raising_policy_is_logged_once_and_serving_gets_no_plan(caplog: pytest.LogCaptureFixture) -> None:
    table = _table()
    worker = PlannerWorker(raising_factory, min_backoff_s=0.05, max_backoff_s=0.1)
    try:
        with caplog.at_level(logging.ERROR, logger="eplb_native.runtime.worker"):
            for _ in range(2):
                deadline = time.monotonic() + 60
                while worker.submit(table, _skewed_workload(table)) is None:
                    assert time.monotonic() < deadline
                    time.sleep(0.02)
                assert worker.poll(timeout_s=60.0) is None
        errors = [r.getMessage() for r in caplog.records if "planner failed" in r.getMessage()]
        assert len(errors) == 1
        assert "injected policy bug" in errors[0]
        assert worker.num_failures == 2
        assert worker.num_restarts == 1
    finally:
        worker.close()


def _result(new_table: np.ndarray, layers: list[int]) -> PlanResult:
    return PlanResult(0, True, np.asarray(layers, dtype=np.int64), new_table, 0.0)


def test_check_plan_result_accepts_a_valid_swap() -> None:
    table = _table()
    new = table.copy()
    new[1, 0, 0], new[1, 1, 0] = table[1, 1, 0], table[1, 0, 0]
    check_plan_result(_result(new, [1]), table, NUM_EXPERTS)


@pytest.mark.parametrize(
    ("edit", "layers", "field"),
    [
        (lambda t: t[:, :, :2], [0], "new_table"),  # wrong shape
        (lambda t: np.where(t == 3, 2, t), [0, 1], "phy2log"),  # expert 3 lost its replicas
        (lambda t: np.where(t == 3, 99, t), [0, 1], "new_table"),  # id out of range
        (lambda t: t[:, ::-1, :].copy(), [0], "new_table"),  # layer 1 changed, not listed
        (lambda t: t, [0, 0], "layers"),
        (lambda t: t, [2], "layers"),
    ],
)
def test_check_plan_result_rejects_invalid_plans(edit: Any, layers: list[int], field: str) -> None:
    table = _table()
    with pytest.raises(ValueError, match=f"^{field}:"):
        check_plan_result(_result(edit(table.copy()), layers), table, NUM_EXPERTS)
