"""PlanExchange in one process: the fixed-size encoding carries a plan through unchanged, no
plan stays no plan, "not ready" is reported as such, and the stages must come in order."""

from __future__ import annotations

import numpy as np
import pytest

from eplb_native.runtime.plan_exchange import PlanExchange, SharedPlan

SHAPE = (3, 2, 4)  # L, D, S


def _exchange() -> PlanExchange:
    return PlanExchange(SHAPE, leader=0, source_group=None, check_group=None)


def test_plan_round_trips_through_the_encoding() -> None:
    rng = np.random.default_rng(0)
    table = rng.integers(0, 6, size=SHAPE).astype(np.int64)
    exchange = _exchange()
    for layers in ([2, 0], [1, 0, 2]):  # a shorter plan after a longer one leaves no trace
        par = (1.5, 2.25, 1.125, 1.25)
        exchange.post(SharedPlan(np.array(layers, dtype=np.int64), table, plan_ms=12.345, par=par))
        exchange.verify()
        pending, shared = exchange.result()
        assert not pending
        assert shared is not None
        assert shared.layers.tolist() == layers
        assert np.array_equal(shared.new_table, table)
        assert shared.plan_ms == pytest.approx(12.345)
        assert shared.par == par
    assert exchange.stage == "idle" and exchange.num_mismatches == 0


def test_no_plan_gives_none() -> None:
    exchange = _exchange()
    exchange.post(SharedPlan(np.array([1]), np.ones(SHAPE, dtype=np.int64), 1.0))
    exchange.verify()
    exchange.result()
    exchange.post(None)
    exchange.verify()
    assert exchange.result() == (False, None)


def test_a_plan_not_ready_is_reported_and_the_next_round_carries_the_plan() -> None:
    exchange = _exchange()
    exchange.post(None, pending=True)
    exchange.verify()
    assert exchange.result() == (True, None)
    exchange.post(SharedPlan(np.array([0]), np.ones(SHAPE, dtype=np.int64), 1.0))
    exchange.verify()
    pending, shared = exchange.result()
    assert not pending and shared is not None and shared.layers.tolist() == [0]


def test_stages_out_of_order_raise() -> None:
    exchange = _exchange()
    with pytest.raises(RuntimeError, match=r"^stage: .* needs 'broadcast'"):
        exchange.verify()
    exchange.post(None)
    with pytest.raises(RuntimeError, match=r"^stage: .* needs 'idle'"):
        exchange.post(None)
