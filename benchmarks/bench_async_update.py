"""Step time while EPLB moves weights in the background vs steady state, and vs stopping the world.

Runs the toy EPLB-ready model of the tests (tests/python/toy_moe_model.py: one dense layer, MoE
layers with skewed routing whose hot experts change every ``--phase-steps`` steps) on
``--ranks`` gloo processes (CPU), twice in the same run: with the asynchronous update
(``EplbUpdateManager``: transfers posted before forward, committed after it) and with the
synchronous one (``synchronous=True``: every layer of an update moved at its pick-up step).
Each step's time is the slowest rank's wall time of pre_forward + forward + post_forward.
A step is a "rebalance" step when any rank's manager did update work in it
(``EplbUpdateManager.step_phases`` not empty: heat handed to the planner, planner computing,
plan picked up, broadcast or checksum stage, plan scheduled, weights in flight, layers
committed), in both
modes; the others are "steady" (they still record heat and, every
``--interval`` steps when no plan is requested, gather it). Every step's output is checked
bitwise against the same model without EPLB (outside the timed region). Target: rebalance p50
and p99 within 5% of steady.

    python benchmarks/bench_async_update.py --steps 1200 --json results.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "python"))

from dist_utils import run_on_ranks
from toy_moe_model import ToyModel, ToyShape, reference_model, toy_inputs, toy_weights

from eplb_native import EplbConfig
from eplb_native.runtime import HeatRecorder
from eplb_native.runtime.updater import EplbUpdateManager, initial_plan


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=int, default=4, help="gloo processes D")
    parser.add_argument("--steps", type=int, default=400, help="timed forward steps per mode")
    parser.add_argument("--warmup-steps", type=int, default=10, help="untimed steps first")
    parser.add_argument("--interval", type=int, default=20, help="expert_heat_collection_interval")
    parser.add_argument("--phase-steps", type=int, default=60, help="steps between routing shifts")
    parser.add_argument("--tokens", type=int, default=16, help="tokens per rank per step")
    parser.add_argument("--hidden", type=int, default=256, help="hidden size H")
    parser.add_argument("--inter", type=int, default=512, help="expert intermediate size I")
    parser.add_argument("--layers", type=int, default=3, help="MoE layers")
    parser.add_argument("--policy", default="swift_balancer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", "--out", dest="json", default=None, help="write results as JSON here")
    return parser.parse_args()


def _run_mode(rank: int, world_size: int, args: argparse.Namespace, synchronous: bool, result_path: str) -> None:
    shape = ToyShape(num_moe_layers=args.layers, hidden=args.hidden, intermediate=args.inter,
                     tokens=args.tokens, num_phases=2)
    weights = toy_weights(shape, args.seed)
    config = EplbConfig.from_dict({
        "dynamic_eplb": True, "expert_heat_collection_interval": args.interval,
        "algorithm_execution_interval": 3, "episode_steps": 1, "num_redundant_experts": 4,
        "eplb_policy_type": args.policy, "max_layers_per_step": 1,
    })  # fmt: skip
    plan = initial_plan(config, shape.num_moe_layers, shape.num_experts, world_size)
    heat = HeatRecorder.from_config(config, plan)
    model = ToyModel(shape, weights, plan, heat)
    reference = reference_model(shape, weights, rank, world_size)
    manager = EplbUpdateManager(config, list(model.moe), heat, synchronous=synchronous, plan_wait_s=60.0)
    manager.warm_up()
    step_ms, moving, phases, equal = [], [], [], True
    for step in range(args.warmup_steps + args.steps):
        phase = (step // args.phase_steps) % shape.num_phases
        x = toy_inputs(shape, weights, step, rank, phase)
        start = time.perf_counter()
        manager.pre_forward()
        out = model(x)
        manager.post_forward()
        elapsed = (time.perf_counter() - start) * 1e3
        equal = equal and torch.equal(out, reference(x))
        if step >= args.warmup_steps:
            step_ms.append(elapsed)
            moving.append(bool(manager.step_phases))
            phases.append(",".join(manager.step_phases))
    times = torch.tensor(step_ms, dtype=torch.float64)
    dist.all_reduce(times, op=dist.ReduceOp.MAX)  # the slowest rank sets the step time
    # A step is a rebalance step when any rank did update work in it; all ranks agree on it.
    flags = torch.tensor([float(m) for m in moving] + [float(not equal)], dtype=torch.float64)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    if rank == 0:
        torch.save({"step_ms": times.numpy(), "moving": flags[:-1].numpy() > 0, "equal": not bool(flags[-1]),
                    "num_updates": len(manager.updates), "phases": phases}, result_path)
    manager.close()


def _percentiles(values: np.ndarray) -> tuple[float, float]:
    if values.size == 0:
        return float("nan"), float("nan")
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))


def _by_phase(run: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Step count and p50 ms of the async run's steps grouped by rank 0's update work
    ("steady": none on rank 0; "other rank": none on rank 0 but some on another rank)."""
    groups: dict[str, list[float]] = {}
    for ms, work, moving in zip(run["step_ms"], run["phases"], run["moving"], strict=True):
        groups.setdefault(work or ("other rank" if moving else "steady"), []).append(float(ms))
    return {work: {"count": len(values), "p50_ms": float(np.percentile(values, 50))}
            for work, values in sorted(groups.items())}


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for name, synchronous in (("async", False), ("sync", True)):
            out = str(Path(tmp) / f"{name}.pt")
            run_on_ranks(_run_mode, args.ranks, args, synchronous, out)
            runs[name] = torch.load(out, weights_only=False)
    steady = runs["async"]["step_ms"][~runs["async"]["moving"]]
    rebalance = runs["async"]["step_ms"][runs["async"]["moving"]]
    sync_rebalance = runs["sync"]["step_ms"][runs["sync"]["moving"]]
    steady_p50, steady_p99 = _percentiles(steady)
    rebalance_p50, rebalance_p99 = _percentiles(rebalance)
    sync_p50, sync_p99 = _percentiles(sync_rebalance)
    result: dict[str, Any] = {
        "steady_p50_ms": steady_p50, "steady_p99_ms": steady_p99,
        "rebalance_p50_ms": rebalance_p50, "rebalance_p99_ms": rebalance_p99,
        "sync_rebalance_p50_ms": sync_p50, "sync_rebalance_p99_ms": sync_p99,
        "num_rebalances": int(runs["async"]["num_updates"]),
        "num_rebalance_steps": int(rebalance.size), "num_steady_steps": int(steady.size),
        "sync_num_rebalances": int(runs["sync"]["num_updates"]),
        "bitwise_equal": bool(runs["async"]["equal"] and runs["sync"]["equal"]),
        "async_by_phase": _by_phase(runs["async"]),
        "config": vars(args),
    }  # fmt: skip
    print(f"{'steps':<22}{'count':>7}{'p50 ms':>10}{'p99 ms':>10}")
    for label, values in (("steady (async run)", steady), ("rebalance, async", rebalance),
                          ("rebalance, sync", sync_rebalance)):
        p50, p99 = _percentiles(values)
        print(f"{label:<22}{values.size:>7}{p50:>10.2f}{p99:>10.2f}")
    print(f"async/steady: p50 {rebalance_p50 / steady_p50:.3f}, p99 {rebalance_p99 / steady_p99:.3f}; "
          f"rebalances {result['num_rebalances']}; bitwise equal: {result['bitwise_equal']}")
    print("async run by rank 0's update work in the step: " + ", ".join(
        f"{work} {v['count']} x {v['p50_ms']:.1f} ms" for work, v in result["async_by_phase"].items()))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
