"""Side-by-side planning time of two builds of eplb_native (before / after a change).

Each round runs one fresh process per build, alternating the order every round, and each
process times ``--calls`` calls of the same FlashLB plan (58 layers x 256 experts, 32 ranks x 9
slots, 64 episodes of the seeded synthetic workload; with ``--raw-steps`` from its 1024 raw
steps, 16 per episode) and reports its best; the result per build
is the median over rounds of those bests. Alternating processes cancels most of this VM's
minute-to-minute drift, which a comparison of two separate runs would not. The two builds'
plans are compared first: the script says whether they are identical.

    # a build of the old sources in /tmp/old (e.g. git worktree + scripts/dev_build.sh, then
    # copy python/ there), the current one in python/:
    python benchmarks/compare_builds.py /tmp/old/python python --threads 2 --rounds 16
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent

# Runs inside each build's process: prints the best time in ms, or the plan's hash.
CHILD = """
import hashlib, sys, time
import numpy as np
sys.path.insert(0, {benchmarks!r})
from workloads import deepseek_v3_like
from eplb_native.flashlb import FlashLBOptions, plan_flashlb
history = deepseek_v3_like(seed=0)
if {raw_steps}:
    episodes, options = history, FlashLBOptions()
else:
    episodes = history.reshape(64, 16, *history.shape[1:]).sum(axis=1)
    options = FlashLBOptions(episode_steps=1)
load = episodes.sum(axis=0)
def plan():
    return plan_flashlb(load, 288, 1, 1, 32, history=episodes, num_threads={threads},
                        options=options)
if {calls} == 0:
    print(hashlib.sha256(plan().phy2log.tobytes()).hexdigest())
else:
    best = float("inf")
    for _ in range({calls}):
        start = time.perf_counter()
        plan()
        best = min(best, time.perf_counter() - start)
    print(1e3 * best)
"""


def run(build: str, threads: int, calls: int, raw_steps: bool) -> str:
    """Output of CHILD in a fresh process importing eplb_native from ``build``."""
    code = CHILD.format(benchmarks=str(BENCHMARKS), threads=threads, calls=calls,
                        raw_steps=raw_steps)
    env = {**os.environ, "PYTHONPATH": build}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True)
    return done.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", help="folder holding the old build's eplb_native package")
    parser.add_argument("after", help="folder holding the new build's eplb_native package")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument("--calls", type=int, default=8, help="timed calls per process")
    parser.add_argument("--raw-steps", action="store_true",
                        help="plan from the 1024 raw steps instead of 64 episodes")
    args = parser.parse_args()

    builds = [args.before, args.after]
    hashes = {build: run(build, args.threads, 0, args.raw_steps) for build in builds}
    print("plans identical" if len(set(hashes.values())) == 1 else "plans DIFFER")
    best: dict[str, list[float]] = {build: [] for build in builds}
    for round_idx in range(args.rounds):
        for build in builds if round_idx % 2 == 0 else builds[::-1]:
            best[build].append(float(run(build, args.threads, args.calls, args.raw_steps)))
    for label, build in zip(("before", "after"), builds, strict=True):
        print(f"{label:<7} {build}: median of per-round bests {statistics.median(best[build]):.1f} "
              f"ms ({args.rounds} rounds, {args.threads} threads"
              f"{', raw steps' if args.raw_steps else ''})")


if __name__ == "__main__":
    main()
