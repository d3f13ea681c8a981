"""Shared hypothesis strategies for the planner and runtime tests."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

import eplb_native


@st.composite
def plans(draw: st.DrawFn, max_layers: int = 3, max_ranks: int = 6, max_slots: int = 5):
    """(Plan, num_ranks): random valid placements with no expert twice on one rank."""
    num_layers = draw(st.integers(1, max_layers))
    num_ranks = draw(st.integers(1, max_ranks))
    num_slots = draw(st.integers(1, max_slots))
    num_physical = num_ranks * num_slots
    # N between P / D (each expert at most D replicas) and P.
    num_experts = draw(st.integers(-(-num_physical // num_ranks), num_physical))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(num_layers):
        rows.append(random_row(rng, num_experts, num_ranks, num_slots))
    plan = eplb_native.Plan.from_phy2log(np.stack(rows), num_experts)
    return plan, num_ranks


def random_row(
    rng: np.random.Generator, num_experts: int, num_ranks: int, num_slots: int
) -> np.ndarray:
    """One layer: every expert once, extra replicas on ranks that lack the expert."""
    num_physical = num_ranks * num_slots
    while True:
        counts = np.ones(num_experts, dtype=np.int64)
        for _ in range(num_physical - num_experts):
            candidates = np.flatnonzero(counts < num_ranks)
            counts[rng.choice(candidates)] += 1
        # Deal replicas, most replicated first, to the emptiest ranks that lack the expert.
        order = np.argsort(-counts, kind="stable")
        fill = np.zeros(num_ranks, dtype=np.int64)
        table = -np.ones((num_ranks, num_slots), dtype=np.int64)
        ok = True
        for expert in order:
            ranks = np.argsort(fill + rng.random(num_ranks) * 0.5, kind="stable")
            ranks = [r for r in ranks if fill[r] < num_slots][: counts[expert]]
            if len(ranks) < counts[expert]:
                ok = False
                break
            for rank in ranks:
                table[rank, fill[rank]] = expert
                fill[rank] += 1
        if ok:
            for rank in range(num_ranks):
                rng.shuffle(table[rank])
            return table.reshape(-1)
