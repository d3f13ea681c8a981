"""How long does planning take? default_eplb and flashlb (C++) against DeepSeek EPLB's
algorithm in numpy, in one run.

    python benchmarks/bench_planning_time.py --out results.json

Cases: DeepSeek-V3-like (58 layers, 256 experts, 32 ranks x 9 slots, 8 groups, 4 nodes) and
Qwen3-235B-like (94 layers, 128 experts, 16 ranks x 9 slots). Loads: the seeded synthetic
per-step series of ``workloads.deepseek_v3_like`` (1024 steps with drift) folded into 64
episodes of 16 steps; every policy plans from their sum, flashlb also from the 64 episodes.
Before timing, the default_eplb candidates' phy2log is checked equal to the numpy baseline's,
and every flashlb plan is validated. Add a candidate by adding an entry to ``candidates()``.
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
from workloads import deepseek_v3_like

from eplb_native import FlashLBOptions, Plan, rebalance_experts, validate_plan


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

#: (episodes [E, L, N], case) -> phy2log [L, P]
Planner = Callable[[np.ndarray, Case], np.ndarray]
EPISODE_OPTIONS = FlashLBOptions(episode_steps=1)  # the history given is already episodes


def _default_eplb(threads: int) -> Planner:
    def plan(episodes: np.ndarray, c: Case) -> np.ndarray:
        load = episodes.sum(axis=0)
        return rebalance_experts(
            load, c.num_replicas, c.num_groups, c.num_nodes, c.num_ranks, num_threads=threads
        ).phy2log

    return plan


def _flashlb(threads: int) -> Planner:
    def plan(episodes: np.ndarray, c: Case) -> np.ndarray:
        load = episodes.sum(axis=0)
        return rebalance_experts(
            load, c.num_replicas, c.num_groups, c.num_nodes, c.num_ranks, policy="flashlb",
            history=episodes, num_threads=threads, options=EPISODE_OPTIONS,
        ).phy2log  # fmt: skip

    return plan


def candidates() -> dict[str, tuple[Planner, bool]]:
    """Name -> (planner, must equal the baseline); the first entry is the baseline."""
    return {
        "deepseek_eplb_numpy": (
            lambda episodes, c: deepseek_eplb_numpy.rebalance_experts(
                episodes.sum(axis=0), c.num_replicas, c.num_groups, c.num_nodes, c.num_ranks
            ),
            True,
        ),
        "default_eplb_1_thread": (_default_eplb(1), True),
        "default_eplb_2_threads": (_default_eplb(2), True),
        "flashlb_1_thread": (_flashlb(1), False),
        "flashlb_2_threads": (_flashlb(2), False),
    }


def episodes_of(case: Case, seed: int) -> np.ndarray:
    """float64 [64, L, N]: 1024 synthetic steps (workloads.deepseek_v3_like) in 16-step episodes."""
    steps = deepseek_v3_like(
        num_steps=1024, num_layers=case.num_layers, num_experts=case.num_experts, seed=seed
    )
    return steps.reshape(64, 16, case.num_layers, case.num_experts).sum(axis=1)


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
        episodes = episodes_of(case, args.seed)
        reference = planners[baseline_name][0](episodes, case)
        checks = {}
        for name, (planner, must_match) in planners.items():
            phy2log = planner(episodes, case)
            if must_match and not np.array_equal(phy2log, reference):
                msg = f"refcheck failed: {name} differs from {baseline_name} on {case.name}"
                raise SystemExit(msg)
            if not must_match:
                validate_plan(Plan.from_phy2log(phy2log, case.num_experts), case.num_ranks)
            checks[name] = "identical" if must_match else "valid plan"
        for name, (planner, _) in planners.items():
            ms = time_ms(functools.partial(planner, episodes, case), args.repeats)
            rows.append({"case": case.name, "candidate": name, "ms": ms, "refcheck": checks[name]})
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
