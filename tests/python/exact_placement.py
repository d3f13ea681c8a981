"""Exact solver for tiny placement problems: the smallest achievable max rank load.

Test helper only (exponential time). Every expert gets 1..D replicas on distinct ranks, each
replica carrying load / replicas; each rank holds exactly S slots.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence


def _compositions(total: int, parts: int, cap: int) -> Iterator[tuple[int, ...]]:
    """Tuples of ``parts`` integers in 1..cap summing to ``total``."""
    if parts == 1:
        if 1 <= total <= cap:
            yield (total,)
        return
    for first in range(1, min(cap, total - parts + 1) + 1):
        for rest in _compositions(total - first, parts - 1, cap):
            yield (first, *rest)


def _multiset_choices(class_sizes: Sequence[int], k: int) -> Iterator[tuple[int, ...]]:
    """How many ranks to take from each class of interchangeable ranks, ``k`` in all."""
    if not class_sizes:
        if k == 0:
            yield ()
        return
    for take in range(min(class_sizes[0], k) + 1):
        for rest in _multiset_choices(class_sizes[1:], k - take):
            yield (take, *rest)


def exact_min_max_load(load: Sequence[float], num_ranks: int, num_slots: int) -> float:
    """Optimal max rank load of one layer ``load`` [N] on ``num_ranks`` x ``num_slots`` slots."""
    num_experts = len(load)
    num_physical = num_ranks * num_slots
    best = float("inf")
    order = sorted(range(num_experts), key=lambda e: -load[e])
    for counts in _compositions(num_physical, num_experts, num_ranks):
        shares = [load[e] / counts[i] for i, e in enumerate(order)]
        if max(shares) >= best:
            continue

        def place(i: int, state: tuple[tuple[int, float], ...], counts: tuple[int, ...] = counts,
                  shares: list[float] = shares) -> None:
            nonlocal best
            if i == num_experts:
                best = min(best, max(rank_load for _, rank_load in state))
                return
            # Ranks with equal (fill, load) are interchangeable for a new expert.
            classes: dict[tuple[int, float], int] = {}
            for rank_state in state:
                if rank_state[0] < num_slots:
                    classes[rank_state] = classes.get(rank_state, 0) + 1
            keys = sorted(classes)
            for take in _multiset_choices([classes[key] for key in keys], counts[i]):
                new_state = list(state)
                ok = True
                for key, n in zip(keys, take, strict=True):
                    for _ in range(n):
                        pos = new_state.index(key)
                        fill, rank_load = key
                        new_state[pos] = (fill + 1, round(rank_load + shares[i], 9))
                        if new_state[pos][1] >= best:
                            ok = False
                    if not ok:
                        break
                if ok:
                    # Mark taken ranks so index() finds the untouched ones next time.
                    place(i + 1, tuple(sorted(new_state)), counts, shares)

        place(0, tuple((0, 0.0) for _ in range(num_ranks)))
    return best
