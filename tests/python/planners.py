"""Planners for the worker and manager tests: picklable callables ``PlanRequest -> PlanOutcome``
that the planner process imports by name (this module needs numpy only, so it starts fast)."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import numpy as np

from eplb_native.plan import Plan
from eplb_native.planning import PlanOutcome, PlanRequest, plan

logger = logging.getLogger("planners")


@dataclasses.dataclass(frozen=True)
class SlowPlanner:
    """``plan`` after ``delay_s`` seconds; logs the request's tag (its window's first count)."""

    delay_s: float

    def __call__(self, request: PlanRequest) -> PlanOutcome:
        logger.info("planning request tagged %d", int(request.window[0, 0, 0]))
        time.sleep(self.delay_s)
        return plan(request)


def raising_planner(request: PlanRequest) -> PlanOutcome:
    msg = "injected policy bug"
    raise RuntimeError(msg)


def broken_planner(request: PlanRequest) -> PlanOutcome:
    """A plan that loses expert 0 in every layer (it must be rejected)."""
    outcome = plan(request)
    table = outcome.new_phy2log.copy()
    table[table == 0] = 1
    return dataclasses.replace(outcome, layers=np.arange(table.shape[0]), new_phy2log=table)


@dataclasses.dataclass
class RotatedPlanner:
    """``plan``; from its ``rotate_from``-th call on (0: the warm-up's), the switched layers' new
    rows are rotated by one rank (``num_ranks`` slots): a valid plan, different from ``plan``'s."""

    rotate_from: int | None
    num_calls: int = 0

    def __call__(self, request: PlanRequest) -> PlanOutcome:
        outcome = plan(request)
        table = outcome.new_phy2log.copy()
        if self.rotate_from is not None and self.num_calls >= self.rotate_from:
            slots = table.shape[1] // request.num_ranks
            table[outcome.layers] = np.roll(table[outcome.layers], slots, axis=1)
        self.num_calls += 1
        return dataclasses.replace(outcome, new_phy2log=table)


@dataclasses.dataclass(frozen=True)
class HotReplicaPlanner:
    """For one rank: the redundant slots hold the hottest experts (one extra copy each), every
    expert once in slot order before them; switches the layers whose row differs."""

    def __call__(self, request: PlanRequest) -> PlanOutcome:
        assert request.current is not None
        load = request.window.sum(axis=0)  # [L, N]
        table = request.current.copy()
        num_experts = request.num_experts
        layers = []
        for layer_idx, row in enumerate(request.current):
            hot = np.argsort(-load[layer_idx], kind="stable")[: row.size - num_experts]
            new_row = np.concatenate([np.arange(num_experts), np.sort(hot)])
            if not np.array_equal(new_row, row):
                table[layer_idx] = new_row
                layers.append(layer_idx)
        par = np.ones(request.num_layers)  # one rank: every placement has PAR 1
        return PlanOutcome(Plan.from_phy2log(table, num_experts), np.asarray(layers, dtype=np.int64), table,
                           par, par, np.full(len(layers), np.nan), 0.0)


def _refuse_to_load() -> Any:
    msg = "no accelerator driver in this process"
    raise RuntimeError(msg)


class FailsToStart:
    """Unpickling it raises, as a planner whose module cannot be imported where it runs."""

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return _refuse_to_load, ()

    def __call__(self, request: PlanRequest) -> PlanOutcome:
        return plan(request)
