"""Side-by-side planning time of two builds of eplb_native (before / after a change).

Each round runs one fresh process per build, alternating the order every round, and each
process times ``--calls`` calls of the same FlashLB plan (58 layers x 256 experts, 32 ranks x 9
slots, 64 episodes of the seeded synthetic workload; with ``--raw-steps`` from its 1024 raw
steps, 16 per episode) and reports its best; the result per build
is the median over rounds of those bests. Alternating processes cancels most of this VM's
minute-to-minute drift, which a comparison of two separate runs would not.

The two builds' plans are compared first, case by case (``PLAN_CASES``): every policy
(default_eplb hierarchical and global, swift_balancer, flashlb, random) through
``planning.plan`` from scratch and from a current table, and through the stateful
``make_policy(name).rebalance(table, workload)`` twice in a row, on two workloads (the timed
one and a small 64-expert one whose near ties exercise the tie rules). Each case prints
"same" or "DIFFERS"; the script exits with status 1 when any plan differs.

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


# Runs inside each build's process: prints one line "case hash" per planning case.
PLAN_CASES = """
import hashlib, sys
import numpy as np
sys.path.insert(0, {benchmarks!r})
from workloads import deepseek_v3_like
from eplb_native import FlashLBOptions, make_policy
from eplb_native.planning import PlanRequest, SwiftBalancerOptions, plan
def digest(table):
    return hashlib.sha256(np.ascontiguousarray(table, dtype=np.int64).tobytes()).hexdigest()[:16]
# (label, steps [T, L, N], P, D, G, H)
workloads = [
    ("dsv3", deepseek_v3_like(num_steps=256, seed=0), 288, 32, 8, 4),
    ("small", deepseek_v3_like(num_steps=64, num_layers=6, num_experts=64, seed=1), 80, 8, 4, 2),
]
flash = {{
    "": FlashLBOptions(),
    "one_episode": FlashLBOptions(episode_steps=1 << 20),
    "incremental": FlashLBOptions(incremental=True, max_moves_per_layer=6),
    "keep_margin": FlashLBOptions(keep_margin=0.05),
}}
for label, steps, P, D, G, H in workloads:
    half = steps.shape[0] // 2
    def request(window, policy, options=None, current=None, groups=1, nodes=1):
        return PlanRequest(window, D, policy, options, current, num_replicas=P,
                           num_groups=groups, num_nodes=nodes, num_threads=2, seed=7)
    # FlashLB's plan of the first half: no rank holds an expert twice (incremental mode needs it).
    current = plan(request(steps[:half], "flashlb")).new_phy2log
    # A stale table, planned for the reversed expert popularity: the hot experts are short of
    # replicas, which swift_balancer fixes by re-allotment and FlashLB's incremental mode by
    # moving replicas.
    stale = plan(request(steps[:half, :, ::-1], "flashlb")).new_phy2log
    window = steps[half:]
    cases = {{
        "default_eplb/hierarchical": request(window, "default_eplb", groups=G, nodes=H),
        "default_eplb/global": request(window, "default_eplb"),
        "default_eplb/hierarchical+current": request(window, "default_eplb", None, current, G, H),
        "default_eplb/global+current": request(window, "default_eplb", None, current),
        "swift_balancer+current": request(window, "swift_balancer", None, current),
        "swift_balancer/4moves+current": request(
            window, "swift_balancer", SwiftBalancerOptions(max_moves_per_layer=4), current),
        "swift_balancer+stale": request(window, "swift_balancer", None, stale),
        "swift_balancer/4moves+stale": request(
            window, "swift_balancer", SwiftBalancerOptions(max_moves_per_layer=4), stale),
        "flashlb/incremental+stale": request(window, "flashlb", flash["incremental"], stale),
        "random": request(window, "random"),
        "random+current": request(window, "random", None, current),
    }}
    for name, options in flash.items():
        suffix = "/" + name if name else ""
        if not options.incremental:
            cases["flashlb" + suffix] = request(window, "flashlb", options)
        cases["flashlb" + suffix + "+current"] = request(window, "flashlb", options, current)
    for case, req in cases.items():
        outcome = plan(req)
        print(f"{{label}}:plan:{{case}}", digest(outcome.proposal.phy2log), digest(outcome.new_phy2log))
    # The stateful interface: tokens per slot, each expert's tokens split over its replicas.
    table = current.reshape(current.shape[0], D, P // D)
    layers = np.arange(current.shape[0])[:, None]
    counts = np.stack([np.bincount(row, minlength=steps.shape[2]) for row in current])
    slot_heat = steps[:, layers, current] / counts[layers, current]  # [T, L, P]
    for name in ("default_eplb", "swift_balancer", "flashlb", "random"):
        policy = make_policy(name, num_threads=2, seed=7)
        new_table = table
        for call, heat in enumerate((slot_heat[half:], slot_heat[:half])):
            changed, chosen, new_table = policy.rebalance(new_table, heat.reshape(-1, *table.shape))
            print(f"{{label}}:rebalance:{{name}}:{{call}}", int(changed), digest(chosen),
                  digest(new_table))
"""


def plan_hashes(build: str) -> dict[str, str]:
    """Case name -> plan hashes of PLAN_CASES in a fresh process importing ``build``."""
    env = {**os.environ, "PYTHONPATH": build}
    done = subprocess.run([sys.executable, "-c", PLAN_CASES.format(benchmarks=str(BENCHMARKS))],
                          env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{build}: the planning cases failed:\n{done.stderr}")
    lines = (line.split(" ", 1) for line in done.stdout.strip().splitlines())
    return {case: hashes for case, hashes in lines}


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
    before, after = (plan_hashes(build) for build in builds)
    if before.keys() != after.keys():
        sys.exit(f"the builds ran different cases: {sorted(before.keys() ^ after.keys())}")
    for case, hashes in before.items():
        print(f"{case:<50} {'same' if after[case] == hashes else 'DIFFERS'}")
    differ = sum(after[case] != hashes for case, hashes in before.items())
    hashes = {build: run(build, args.threads, 0, args.raw_steps) for build in builds}
    print("timed flashlb plans identical" if len(set(hashes.values())) == 1
          else "timed flashlb plans DIFFER")
    print(f"{len(before) - differ} of {len(before)} planning cases identical")
    if differ or len(set(hashes.values())) != 1:
        sys.exit(1)
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
