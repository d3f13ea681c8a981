"""Exact solver for small placement problems: the smallest achievable max rank load of a layer.

Test helper only (exponential time; layers of up to about 10 experts on 4 ranks x 4 slots
solve within a few seconds). Every expert gets 1..D replicas on distinct ranks, each replica
carrying load / replicas; each rank holds exactly S slots.

Method: the replica-count vectors ("allotments") are visited by increasing lower bound
(max(total / D, largest replica)); each is packed by depth-first search, largest replicas first,
over classes of interchangeable ranks (equal load and fill), with memoised states and a
capacity cut (the replicas left must fit under the best max load found so far). The search
stops once no remaining allotment's bound can beat the best packing found.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

# Loads are compared and memoised after rounding to this many decimals.
_DECIMALS = 9
_EPS = 1e-9

RankState = tuple[float, int]  # (load, slots filled) of one rank


def allotments(num_experts: int, num_ranks: int, num_slots: int) -> Iterator[tuple[int, ...]]:
    """Every replica-count vector: ``num_experts`` counts in 1..num_ranks summing to D * S."""

    def fill(experts: int, extra: int) -> Iterator[tuple[int, ...]]:
        if experts == 1:
            if extra <= num_ranks - 1:
                yield (extra + 1,)
            return
        for add in range(min(num_ranks - 1, extra) + 1):
            for rest in fill(experts - 1, extra - add):
                yield (add + 1, *rest)

    extra = num_ranks * num_slots - num_experts
    if num_experts > 0 and extra >= 0:
        yield from fill(num_experts, extra)


def _pack(shares: Sequence[float], counts: Sequence[int], num_ranks: int, num_slots: int,
          best: float) -> float:
    """Smallest max rank load below ``best`` placing ``counts[e]`` replicas of size
    ``shares[e]`` on distinct ranks with ``num_slots`` slots each; ``best`` when none is."""
    items = sorted(zip(shares, counts, strict=True), key=lambda item: -item[0])
    # Load still to place from item k on.
    remaining = [0.0] * (len(items) + 1)
    for k in range(len(items) - 1, -1, -1):
        remaining[k] = remaining[k + 1] + items[k][0] * items[k][1]
    seen: set[tuple[int, tuple[RankState, ...]]] = set()
    result = best

    def place(k: int, state: tuple[RankState, ...]) -> None:
        nonlocal result
        if k == len(items):
            result = min(result, max(load for load, _ in state))
            return
        if (k, state) in seen:
            return
        seen.add((k, state))
        room = sum(result - load for load, filled in state if filled < num_slots)
        if room < remaining[k] - _EPS:
            return  # what is left cannot fit under the best max load
        share, count = items[k]
        # Ranks that can take a replica, by class of interchangeable ranks.
        classes: dict[RankState, list[int]] = {}
        for rank, (load, filled) in enumerate(state):
            if filled < num_slots and load + share < result - _EPS:
                classes.setdefault((load, filled), []).append(rank)
        members = [classes[key] for key in sorted(classes)]

        def choose(cls: int, need: int, picked: list[int]) -> None:
            if need == 0:
                new = list(state)
                for rank in picked:
                    load, filled = new[rank]
                    new[rank] = (round(load + share, _DECIMALS), filled + 1)
                place(k + 1, tuple(sorted(new)))
                return
            if cls == len(members):
                return
            for take in range(min(need, len(members[cls])), -1, -1):
                choose(cls + 1, need - take, picked + members[cls][:take])

        choose(0, count, [])

    place(0, tuple((0.0, 0) for _ in range(num_ranks)))
    return result


def exact_min_max_load(load: Sequence[float], num_ranks: int, num_slots: int) -> float:
    """Optimal max rank load of one layer ``load`` [N] (tokens) on ``num_ranks`` x
    ``num_slots`` slots (N <= D * S <= N * D)."""
    num_experts = len(load)
    total = float(sum(load))
    bounded = sorted(
        (max(total / num_ranks, max(load[e] / counts[e] for e in range(num_experts))), counts)
        for counts in allotments(num_experts, num_ranks, num_slots)
    )
    best = math.inf
    for bound, counts in bounded:
        if bound >= best - _EPS:
            break
        shares = [load[e] / counts[e] for e in range(num_experts)]
        best = min(best, _pack(shares, counts, num_ranks, num_slots, best))
    return best
