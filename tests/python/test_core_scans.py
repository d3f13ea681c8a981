"""The core passes that replaced numpy formulas on the planning call's path, against those
formulas: per-step layer balance (bit for bit), the load value scan, and the placement-rule
check."""

from __future__ import annotations

import numpy as np
import pytest

from eplb_native import _core
from eplb_native.checks import check_load
from eplb_native.flashlb import layer_balance
from eplb_native.metrics import peak_to_average
from eplb_native.plan import Plan, placement_violations, rank_loads


def random_plan(rng: np.random.Generator, num_layers: int, num_experts: int, num_physical: int) -> Plan:
    rows = [
        np.concatenate([rng.permutation(num_experts), rng.integers(0, num_experts, num_physical - num_experts)])
        for _ in range(num_layers)
    ]
    return Plan.from_phy2log(np.stack(rows), num_experts)


@pytest.mark.parametrize("num_ranks", [1, 3, 5, 8, 9, 32, 33, 130, 200])
def test_layer_balance_equals_numpy_bit_for_bit(num_ranks: int) -> None:
    rng = np.random.default_rng(num_ranks)
    for trial in range(20):
        num_layers = int(rng.integers(1, 5))
        num_experts = int(rng.integers(1, 40))
        slots = max(int(rng.integers(1, 4)), -(-num_experts // num_ranks))
        plan = random_plan(rng, num_layers, num_experts, num_ranks * slots)
        steps = int(rng.integers(1, 9))
        load = rng.random((steps, num_layers, num_experts)) * [1.0, 1e3, 1e-300, 7.0][trial % 4]
        load[rng.random(load.shape) < 0.3] = 0.0
        load[0] = 0.0  # a step with no load: balance 1.0
        expected = 1.0 / peak_to_average(rank_loads(plan, load, num_ranks))  # [T, L]
        for threads in (1, 2):
            got = _core.layer_balance(plan.core, load, num_ranks, threads)
            np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(layer_balance(plan, load, num_ranks), expected.mean(axis=0))
        np.testing.assert_array_equal(layer_balance(plan, load[-1], num_ranks), expected[-1])


def test_layer_balance_errors_name_the_field() -> None:
    plan = Plan.from_phy2log(np.array([[0, 1, 2, 3, 0, 1]]), 4)
    with pytest.raises(ValueError, match=r"^load: expected"):
        _core.layer_balance(plan.core, np.ones((2, 2, 4)), 2)
    with pytest.raises(ValueError, match=r"^num_ranks"):
        _core.layer_balance(plan.core, np.ones((2, 1, 4)), 4)
    with pytest.raises(ValueError, match=r"^num_ranks"):
        layer_balance(plan, np.ones((2, 1, 4)), 0)


def test_scan_load_values_agrees_with_numpy() -> None:
    rng = np.random.default_rng(0)
    for size in (1, 7, 8, 9, 100, 1001):
        values = rng.random(size) * 1e3
        valid, total = _core.scan_load_values(values)
        assert valid
        assert total == pytest.approx(values.sum(), rel=1e-12)
        for bad in (np.nan, np.inf, -np.inf, -1e-300):
            for at in {0, size // 2, size - 1}:
                broken = values.copy()
                broken[at] = bad
                assert not _core.scan_load_values(broken)[0]
    assert _core.scan_load_values(np.array([-0.0, 1.0]))[0]  # -0.0 >= 0
    assert _core.scan_load_values(np.full((2, 3), 1e308)) == (True, np.inf)


def test_check_load_names_the_first_bad_value() -> None:
    load = np.ones((2, 3, 4))
    load[1, 2, 3] = np.nan
    load[1, 2, 1] = -1.0
    with pytest.raises(ValueError, match=r"^w: NaN at index \(1, 2, 3\)"):
        check_load(load, "w", allow_steps=True)
    load[1, 2, 3] = np.inf
    with pytest.raises(ValueError, match=r"^w: inf at index \(1, 2, 3\)"):
        check_load(load, "w", allow_steps=True)
    load[1, 2, 3] = 1.0
    with pytest.raises(ValueError, match=r"^w: negative value at index \(1, 2, 1\)"):
        check_load(load, "w", allow_steps=True)
    with pytest.raises(ValueError, match=r"^w: the values sum beyond 1e300"):
        check_load(np.full((2, 2), 4e299), "w")


def numpy_violations(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """int64 [L, 3]: the first missing expert, rank holding an expert twice, rank moving an
    expert that stays (-1: none), by the numpy formulation of the three rules."""
    num_layers = old.shape[0]
    size = int(max(old.max(initial=0), new.max(initial=0))) + 1
    present_old = np.zeros((num_layers, size + 1), dtype=bool)
    present_new = np.zeros((num_layers, size + 1), dtype=bool)
    rows = np.arange(num_layers)[:, None]
    present_old[rows, np.where(old < 0, size, old).reshape(num_layers, -1)] = True
    present_new[rows, np.where(new < 0, size, new).reshape(num_layers, -1)] = True
    missing = present_old[:, :size] & ~present_new[:, :size]
    in_new = (new[..., :, None] == new[..., None, :]).sum(axis=-1)
    in_old = (new[..., :, None] == old[..., None, :]).sum(axis=-1)
    twice = ((in_new > 1) & (in_new > in_old) & (new >= 0)).any(axis=-1)
    moved = ((in_old > 0) & (new >= 0) & (new != old)).any(axis=-1)

    def first(flags: np.ndarray) -> np.ndarray:
        return np.where(flags.any(axis=1), flags.argmax(axis=1), -1)

    return np.stack([first(missing), first(twice), first(moved)], axis=1)


def test_placement_violations_agree_with_numpy_rules() -> None:
    rng = np.random.default_rng(0)
    broken = 0
    for _ in range(1000):
        shape = tuple(int(x) for x in rng.integers(1, 5, 3))
        experts = int(rng.integers(1, 8))
        old = rng.integers(-2, experts, shape)
        new = old.copy()
        for _ in range(int(rng.integers(0, 4))):
            new[tuple(int(rng.integers(n)) for n in shape)] = rng.integers(-1, experts + 2)
        if rng.random() < 0.2:
            new = rng.integers(-1, experts, shape)
        expected = numpy_violations(old, new)
        np.testing.assert_array_equal(_core.placement_violations(old, new), expected)
        broken += bool(placement_violations(old, new))
    assert broken > 100


def test_placement_violations_core_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match=r"^new_table"):
        _core.placement_violations(np.zeros((1, 2, 3), dtype=np.int64), np.zeros((1, 3, 2), dtype=np.int64))
