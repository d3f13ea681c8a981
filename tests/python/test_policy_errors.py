"""Bad input to rebalance_experts and to _core.plan_policy: ValueError naming the field."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eplb_native import _core
from eplb_native.plan import Plan, validate_plan
from eplb_native.policies import SwiftBalancerOptions, make_policy, rebalance_experts

GOOD = np.arange(1, 9, dtype=np.float64).reshape(1, 8)
GOOD_CURRENT = np.tile(np.arange(8) % 8, (1, 1)).astype(np.int64)


def _with(index: tuple[int, int], value: float) -> np.ndarray:
    load = GOOD.copy()
    load[index] = value
    return load


# (case id, policy, load, num_replicas, num_groups, num_nodes, num_ranks, current, field)
CASES: list[tuple[str, str, Any, int, int, int, int, Any, str]] = [
    ("nan", "default_eplb", _with((0, 3), np.nan), 8, 1, 1, 4, None, "load"),
    ("inf", "default_eplb", _with((0, 3), np.inf), 8, 1, 1, 4, None, "load"),
    ("negative", "default_eplb", _with((0, 3), -1.0), 8, 1, 1, 4, None, "load"),
    ("too_few_replicas", "default_eplb", GOOD, 4, 1, 1, 4, None, "num_replicas"),
    ("replicas_not_multiple", "default_eplb", GOOD, 10, 1, 1, 4, None, "num_replicas"),
    ("groups_not_dividing", "default_eplb", GOOD, 8, 3, 1, 4, None, "num_groups"),
    ("empty", "default_eplb", np.zeros((0, 8)), 8, 1, 1, 4, None, "load"),
    ("wrong_ndim", "default_eplb", GOOD[0], 8, 1, 1, 4, None, "load"),
    ("current_missing", "swift_balancer", GOOD, 8, 1, 1, 4, None, "current"),
    ("current_wrong_shape", "swift_balancer", GOOD, 8, 1, 1, 4, GOOD_CURRENT[:, :4], "current"),
    ("current_bad_id", "swift_balancer", GOOD, 8, 1, 1, 4, np.full((1, 8), 9), "current"),
    (
        "current_missing_expert",
        "swift_balancer",
        GOOD,
        8,
        1,
        1,
        4,
        np.zeros((1, 8), np.int64),
        "current",
    ),
    ("unknown_policy", "greedy", GOOD, 8, 1, 1, 4, None, "policy"),
]


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
@pytest.mark.parametrize("entry", ["python", "core"])
def test_bad_input_names_the_field(case: tuple[Any, ...], entry: str) -> None:
    _, policy, load, replicas, groups, nodes, ranks, current, field = case
    if entry == "python":
        with pytest.raises(ValueError, match=rf"^{field}:"):
            rebalance_experts(load, replicas, groups, nodes, ranks, policy=policy, current=current)
    else:
        with pytest.raises(ValueError, match=rf"^{field}:"):
            _core.plan_policy(policy, load, replicas, groups, nodes, ranks, current=current)


def test_ranks_alias_and_stateful_errors() -> None:
    with pytest.raises(ValueError, match=r"^num_ranks:"):
        rebalance_experts(GOOD, 8, 1, 1, 4, num_gpus=4)
    with pytest.raises(ValueError, match=r"^policy:"):
        make_policy("nope")
    with pytest.raises(ValueError, match=r"^workload:"):
        make_policy("default_eplb").rebalance(GOOD_CURRENT.reshape(1, 4, 2), np.ones((1, 4, 3)))
    with pytest.raises(ValueError, match=r"^current_table:"):
        make_policy("default_eplb").rebalance(np.zeros((1, 4, 2), np.int64) + 1, np.ones((1, 4, 2)))


@settings(max_examples=150, deadline=None)
@given(
    policy=st.sampled_from(["default_eplb", "swift_balancer", "random", "other"]),
    shape=st.lists(st.integers(0, 5), min_size=0, max_size=3),
    fill=st.sampled_from([1.0, 0.0, -1.0, np.nan, np.inf, 1e300]),
    sizes=st.tuples(*[st.integers(-2, 12)] * 4),
    current_shift=st.integers(-1, 2),
    threads=st.integers(0, 3),
)
def test_core_fuzz_raises_value_error_or_returns_valid_plan(  # type: ignore[no-untyped-def]
    policy, shape, fill, sizes, current_shift, threads
) -> None:
    replicas, groups, nodes, ranks = sizes
    load = np.random.default_rng(len(shape)).random(size=tuple(shape)) * 10
    if load.size:
        load.flat[0] = fill
    num_experts = shape[-1] if shape else 1
    current = (np.arange(max(replicas, 1)) % max(num_experts, 1) + current_shift).reshape(1, -1)
    current = np.repeat(current, shape[0] if len(shape) == 2 else 1, axis=0)
    try:
        core = _core.plan_policy(
            policy, load, replicas, groups, nodes, ranks, current=current, num_threads=threads
        )
    except ValueError:
        return
    validate_plan(Plan.from_core(core), ranks, allow_duplicate_on_rank=True)


def test_options_and_history_are_checked() -> None:
    with pytest.raises(ValueError, match=r"^options:"):
        rebalance_experts(GOOD, 8, 1, 1, 4, options=SwiftBalancerOptions())
    with pytest.raises(ValueError, match=r"^max_moves_per_layer:"):
        SwiftBalancerOptions(max_moves_per_layer=-1)
    with pytest.raises(ValueError, match=r"^history:"):
        rebalance_experts(GOOD, 8, 1, 1, 4, history=np.ones((2, 1, 7)))
    with pytest.raises(ValueError, match=r"^seed:"):
        rebalance_experts(GOOD, 8, 1, 1, 4, policy="random", seed=-1)
