"""How long does planning take? default_eplb (C++) against DeepSeek EPLB's algorithm in numpy.

    PYTHONPATH=python python benchmarks/bench_planning_time.py --out results.json

Cases: DeepSeek-V3-like (58 layers, 256 experts, 32 ranks x 9 slots, 8 groups, 4 nodes) and
Qwen3-235B-like (94 layers, 128 experts, 16 ranks x 9 slots). Loads are seeded Zipf-like token
counts. Before timing, every candidate's phy2log is checked equal to the baseline's. Add a
candidate by adding an entry to ``candidates()``.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import deepseek_eplb_numpy
from eplb_native import rebalance_experts


@dataclass(frozen=True)
class Case:
    name: str
    num_layers: int
    num_experts: int
    num_ranks: int
    slots_per_rank: int
    num_groups: int
    num_nodes: int

    @property
    def num_replicas(self) -> int:
        return self.num_ranks * self.slots_per_rank


CASES = (
    Case("deepseek_v3_like", 58, 256, 32, 9, 8, 4),
    Case("qwen3_235b_like", 94, 128, 16, 9, 1, 1),
)

Planner = Callable[[np.ndarray, Case], np.ndarray]


def candidates() -> dict[str, Planner]:
    """Name -> planner returning phy2log [L, P]; the first entry is the baseline."""
    return {
        "deepseek_eplb_numpy": lambda load, c: deepseek_eplb_numpy.rebalance_experts(
            load, c.num_replicas, c.num_groups, c.num_nodes, c.num_ranks
        ),
        "default_eplb_1_thread": lambda load, c: (
            rebalance_experts(
                load, c.num_replicas, c.num_groups, c.num_nodes, c.num_ranks, num_threads=1
            ).phy2log
        ),
        "default_eplb_2_threads": lambda load, c: (
            rebalance_experts(
                load, c.num_replicas, c.num_groups, c.num_nodes, c.num_ranks, num_threads=2
            ).phy2log
        ),
    }


def zipf_load(case: Case, seed: int) -> np.ndarray:
    """float64 [L, N] token counts: a Zipf(1.2) popularity profile, shuffled per layer, times
    4096 * 8 tokens, plus Poisson noise."""
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, case.num_experts + 1, dtype=np.float64)
    profile = ranks**-1.2 / (ranks**-1.2).sum()
    rows = [rng.permutation(profile) for _ in range(case.num_layers)]
    return rng.poisson(np.array(rows) * 4096 * 8).astype(np.float64)


def time_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(1e3 * (time.perf_counter() - start))
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    planners = candidates()
    baseline_name = next(iter(planners))
    for case in CASES:
        load = zipf_load(case, args.seed)
        reference = planners[baseline_name](load, case)
        for name, planner in planners.items():
            if not np.array_equal(planner(load, case), reference):
                msg = f"refcheck failed: {name} differs from {baseline_name} on {case.name}"
                raise SystemExit(msg)
        for name, planner in planners.items():
            ms = time_ms(functools.partial(planner, load, case), args.repeats)
            rows.append({"case": case.name, "candidate": name, "ms": ms, "refcheck": "identical"})
    base = {r["case"]: r["ms"] for r in rows if r["candidate"] == baseline_name}
    print(f"{'case':<18} {'candidate':<24} {'ms/call':>10} {'speedup':>9}")
    for row in rows:
        row["speedup"] = base[row["case"]] / row["ms"]
        print(
            f"{row['case']:<18} {row['candidate']:<24} {row['ms']:>10.2f} {row['speedup']:>8.1f}x"
        )
    if args.out:
        payload = {
            "cases": [asdict(c) for c in CASES],
            "seed": args.seed,
            "repeats": args.repeats,
            "rows": rows,
        }
        args.out.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
