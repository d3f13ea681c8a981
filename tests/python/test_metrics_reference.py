"""The C++-backed metrics against brute-force references written here: the lower bound on the
busiest rank by enumerating every replica allotment of a tiny layer, weight copies by comparing
each rank's sets of experts."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eplb_native.metrics import count_weight_copies, lower_bound_max_load, weight_copies_per_layer


def brute_force_bound(load: list[float], num_physical: int, num_ranks: int) -> float:
    """max(total / D, the smallest largest per-replica load over every allotment): each expert
    1..D replicas, at most ``num_physical`` in all."""
    best = math.inf
    for counts in itertools.product(range(1, num_ranks + 1), repeat=len(load)):
        if sum(counts) <= num_physical:
            best = min(best, max(w / k for w, k in zip(load, counts, strict=True)))
    return max(sum(load) / num_ranks, best)


def brute_force_copies(old: list[list[int]], new: list[list[int]], num_ranks: int) -> list[int]:
    """Per layer: the slots of ``new`` holding an expert (not -1) that is not in the set of
    experts ``old`` holds on that slot's rank."""
    copies = []
    for old_row, new_row in zip(old, new, strict=True):
        num_slots = len(old_row) // num_ranks
        count = 0
        for rank in range(num_ranks):
            held = {expert for expert in old_row[rank * num_slots : (rank + 1) * num_slots] if expert >= 0}
            count += sum(expert >= 0 and expert not in held
                         for expert in new_row[rank * num_slots : (rank + 1) * num_slots])
        copies.append(count)
    return copies


@st.composite
def bound_cases(draw: st.DrawFn) -> tuple[list[list[float]], int, int]:
    """Rows of a tiny load [R, N] (ties, zeros, fractions), P from N to beyond N * D, and D."""
    num_experts = draw(st.integers(1, 5))
    num_ranks = draw(st.integers(1, 4))
    num_physical = draw(st.integers(num_experts, num_experts * num_ranks + 2))
    value = st.one_of(st.sampled_from([0.0, 1.0, 2.0, 3.0, 6.0, 12.0]), st.floats(0, 100))
    rows = draw(st.lists(st.lists(value, min_size=num_experts, max_size=num_experts), min_size=1, max_size=3))
    return rows, num_physical, num_ranks


@settings(max_examples=150, deadline=None)
@given(bound_cases())
def test_lower_bound_matches_enumerated_allotments(case: tuple[list[list[float]], int, int]) -> None:
    rows, num_physical, num_ranks = case
    got = lower_bound_max_load(rows, num_physical, num_ranks)
    assert got.shape == (len(rows),)
    for row, bound in zip(rows, got, strict=True):
        assert bound == pytest.approx(brute_force_bound(row, num_physical, num_ranks), rel=1e-12, abs=0)


def test_lower_bound_keeps_the_load_shape_but_the_expert_axis() -> None:
    load = np.arange(24, dtype=float).reshape(2, 3, 4)
    got = lower_bound_max_load(load, 6, 2)
    assert got.shape == (2, 3)
    want = [brute_force_bound(list(row), 6, 2) for row in load.reshape(-1, 4)]
    np.testing.assert_allclose(got.ravel(), want, rtol=1e-12)
    assert lower_bound_max_load([4.0, 2.0], 3, 2).shape == ()


@st.composite
def copy_cases(draw: st.DrawFn) -> tuple[list[list[int]], list[list[int]], int]:
    """Two tables [L, P] of ids in [-1, N) (-1: empty slot), the second often the first with
    slots moved within ranks and a few replaced."""
    num_ranks = draw(st.integers(1, 4))
    num_slots = draw(st.integers(1, 4))
    num_layers = draw(st.integers(1, 3))
    num_physical = num_ranks * num_slots
    ids = st.integers(-1, draw(st.integers(1, num_physical)) - 1)
    row = st.lists(ids, min_size=num_physical, max_size=num_physical)
    old = draw(st.lists(row, min_size=num_layers, max_size=num_layers))
    if draw(st.booleans()):
        new = draw(st.lists(row, min_size=num_layers, max_size=num_layers))
    else:
        new = []
        for old_row in old:
            ranks = [draw(st.permutations(old_row[r * num_slots : (r + 1) * num_slots])) for r in range(num_ranks)]
            new_row = [expert for rank in ranks for expert in rank]
            for slot in draw(st.lists(st.integers(0, num_physical - 1), max_size=2)):
                new_row[slot] = draw(ids)
            new.append(new_row)
    return old, new, num_ranks


@settings(max_examples=150, deadline=None)
@given(copy_cases())
def test_weight_copies_match_a_set_count_per_rank(case: tuple[list[list[int]], list[list[int]], int]) -> None:
    old, new, num_ranks = case
    want = brute_force_copies(old, new, num_ranks)
    got = weight_copies_per_layer(old, new, num_ranks)
    assert got.dtype == np.int64
    assert got.tolist() == want
    assert count_weight_copies(old, new, num_ranks) == sum(want)


def test_empty_slots_hold_nothing_and_need_no_copy() -> None:
    # Rank 0 empties its slot 1; rank 1 fills its empty slot with expert 2 (one copy).
    assert weight_copies_per_layer([[0, 1, -1, 3]], [[0, -1, 2, 3]], 2).tolist() == [1]
    # Expert 0 moving into the rank's empty slot stays on its rank: no copy.
    assert count_weight_copies([[-1, 0]], [[0, -1]], 1) == 0


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: lower_bound_max_load([[1.0, -1.0]], 2, 1), "load"),
        (lambda: lower_bound_max_load([[1.0, math.nan]], 2, 1), "load"),
        (lambda: lower_bound_max_load([[1.0, 2.0]], 1, 1), "num_physical"),
        (lambda: lower_bound_max_load([[1.0, 2.0]], 2**62, 2**62), "num_physical"),
        (lambda: lower_bound_max_load([[1.0, 2.0]], 2, 0), "num_ranks"),
        (lambda: weight_copies_per_layer([[0, 1, 2]], [[0, 1, 2]], 2), "num_ranks"),
        (lambda: weight_copies_per_layer([[0, 1]], [[0, 1, 2]], 1), "new"),
        (lambda: weight_copies_per_layer([[0, -2]], [[0, 1]], 1), "old"),
        (lambda: weight_copies_per_layer([[0, 1]], [[-5, 1]], 1), "new"),
    ],
)
def test_bad_input_names_the_argument(call, field: str) -> None:
    with pytest.raises(ValueError, match=rf"^{field}:"):
        call()
