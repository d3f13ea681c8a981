"""Step time while EPLB moves weights in the background vs steady state, and vs stopping the world.

Runs the toy EPLB-ready model of the tests (tests/python/toy_moe_model.py: one dense layer, MoE
layers with skewed routing whose hot experts change every ``--phase-steps`` steps) on
``--ranks`` gloo processes (CPU), twice in the same run: with the asynchronous update
(``EplbUpdateManager``: transfers posted before a forward, committed on every rank at the first
step after they finished everywhere) and with the synchronous one (``synchronous=True``: every
layer of an update moved at its pick-up step). Each step's time is the slowest rank's wall time
of pre_forward + forward + post_forward. A step is a "rebalance" step when any rank's manager
did update work in it (``EplbUpdateManager.step_phases`` not empty: heat handed to the planner,
planner holding a request, plan hand-over stages, plan scheduled, weights in flight, layers
committed), in both modes; the others are "steady" (they still record heat and, every
``--interval`` steps, sum it over the ranks). Every step's output is checked bitwise against the
same model without EPLB, after the run (no untimed work between steps). Target: rebalance p50, p99 and max within
5% of steady's, where stopping the world costs (``--hidden 1024 --inter 4096``: one layer's
transfer takes longer than a steady step).

``--stop-planner-at STEP`` runs the asynchronous mode only and stops (SIGSTOP) rank 0's planner
process at that timed step: the run reports the largest single-step stall, whether the planner
was replaced (missed heartbeat) and a plan applied afterwards.

    python benchmarks/bench_async_update.py --steps 400 --json results.json
    python benchmarks/bench_async_update.py --hidden 1024 --inter 4096 --steps 300 --json costly.json
    python benchmarks/bench_async_update.py --stop-planner-at 20 --steps 400 --json stop.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
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
from toy_moe_model import ToyShape, toy_inputs, toy_replica, toy_weights

from eplb_native import EplbConfig
from eplb_native.runtime.updater import EplbUpdateManager


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
    parser.add_argument("--stop-planner-at", type=int, default=None, metavar="STEP",
                        help="SIGSTOP rank 0's planner at this timed step (asynchronous mode only)")
    parser.add_argument("--heartbeat-timeout", type=float, default=2.0, help="planner heartbeat deadline, s")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", "--out", dest="json", default=None, help="write results as JSON here")
    return parser.parse_args()


class _Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _run_mode(rank: int, world_size: int, args: argparse.Namespace, synchronous: bool, result_path: str) -> None:
    shape = ToyShape(num_moe_layers=args.layers, hidden=args.hidden, intermediate=args.inter,
                     tokens=args.tokens, num_phases=2)
    weights = toy_weights(shape, args.seed)
    config = EplbConfig.from_dict({
        "dynamic_eplb": True, "expert_heat_collection_interval": args.interval,
        "algorithm_execution_interval": 3, "num_redundant_experts": 4,
        "eplb_policy_type": args.policy, "max_layers_per_step": 1,
    })  # fmt: skip
    model, heat, reference = toy_replica(config, shape, weights, rank, world_size)
    errors = _Messages()
    logging.getLogger("eplb_native.runtime.worker").addHandler(errors)
    manager = EplbUpdateManager(config, list(model.moe), heat, synchronous=synchronous,
                                heartbeat_timeout_s=args.heartbeat_timeout)
    manager.warm_up()
    step_ms, moving, phases, outputs, stopped_at = [], [], [], [], None
    for step in range(args.warmup_steps + args.steps):
        timed = step - args.warmup_steps
        if rank == 0 and args.stop_planner_at is not None and timed == args.stop_planner_at:
            assert manager.worker is not None
            assert manager.worker.pid is not None
            os.kill(manager.worker.pid, signal.SIGSTOP)
            stopped_at = timed
        phase = (step // args.phase_steps) % shape.num_phases
        x = toy_inputs(shape, weights, step, rank, phase)
        start = time.perf_counter()
        manager.pre_forward()
        out = model(x)
        manager.post_forward()
        elapsed = (time.perf_counter() - start) * 1e3
        outputs.append((x, out))
        if timed >= 0:
            step_ms.append(elapsed)
            moving.append(bool(manager.step_phases))
            phases.append(",".join(manager.step_phases))
    # Checked after the loop: steps follow each other with no untimed gap in which weights move.
    equal = all(torch.equal(out, reference(x)) for x, out in outputs)
    times = torch.tensor(step_ms, dtype=torch.float64)
    dist.all_reduce(times, op=dist.ReduceOp.MAX)  # the slowest rank sets the step time
    # A step is a rebalance step when any rank did update work in it; all ranks agree on it.
    flags = torch.tensor([float(m) for m in moving] + [float(not equal)], dtype=torch.float64)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    if rank == 0:
        torch.save({"step_ms": times.numpy(), "moving": flags[:-1].numpy() > 0, "equal": not bool(flags[-1]),
                    "num_updates": len(manager.updates), "phases": phases, "stopped_at": stopped_at,
                    "updates_after_stop": sum(1 for u in manager.updates
                                              if stopped_at is not None
                                              and u.window_step > stopped_at + args.warmup_steps),
                    "restarts": manager.worker.num_restarts if manager.worker is not None else 0,
                    "errors": errors.messages}, result_path)
    manager.close()


def _stats(values: np.ndarray) -> tuple[float, float, float]:
    """(p50, p99, max) ms; NaN when empty."""
    if values.size == 0:
        return float("nan"), float("nan"), float("nan")
    return float(np.percentile(values, 50)), float(np.percentile(values, 99)), float(values.max())


def _by_phase(run: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Step count and p50 ms of the async run's steps grouped by rank 0's update work
    ("steady": none on rank 0; "other rank": none on rank 0 but some on another rank)."""
    groups: dict[str, list[float]] = {}
    for ms, work, moving in zip(run["step_ms"], run["phases"], run["moving"], strict=True):
        groups.setdefault(work or ("other rank" if moving else "steady"), []).append(float(ms))
    return {work: {"count": len(values), "p50_ms": float(np.percentile(values, 50))}
            for work, values in sorted(groups.items())}


def _print_rows(rows: list[tuple[str, np.ndarray]]) -> None:
    print(f"{'steps':<22}{'count':>7}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}")
    for label, values in rows:
        p50, p99, peak = _stats(values)
        print(f"{label:<22}{values.size:>7}{p50:>10.2f}{p99:>10.2f}{peak:>10.2f}")


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    modes = (("async", False),) if args.stop_planner_at is not None else (("async", False), ("sync", True))
    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for name, synchronous in modes:
            out = str(Path(tmp) / f"{name}.pt")
            run_on_ranks(_run_mode, args.ranks, args, synchronous, out)
            runs[name] = torch.load(out, weights_only=False)
    run = runs["async"]
    steady, rebalance = run["step_ms"][~run["moving"]], run["step_ms"][run["moving"]]
    steady_stats, rebalance_stats = _stats(steady), _stats(rebalance)
    result: dict[str, Any] = {
        "steady_ms": dict(zip(("p50", "p99", "max"), steady_stats, strict=True)),
        "rebalance_ms": dict(zip(("p50", "p99", "max"), rebalance_stats, strict=True)),
        "async_over_steady": dict(zip(("p50", "p99", "max"), np.divide(rebalance_stats, steady_stats).tolist(),
                                      strict=True)),
        "num_rebalances": int(run["num_updates"]), "num_rebalance_steps": int(rebalance.size),
        "num_steady_steps": int(steady.size), "bitwise_equal": all(r["equal"] for r in runs.values()),
        "async_by_phase": _by_phase(run), "config": vars(args),
    }  # fmt: skip
    rows = [("steady (async run)", steady), ("rebalance, async", rebalance)]
    if "sync" in runs:
        sync = runs["sync"]["step_ms"][runs["sync"]["moving"]]
        result["sync_rebalance_ms"] = dict(zip(("p50", "p99", "max"), _stats(sync), strict=True))
        result["sync_over_steady"] = dict(zip(("p50", "p99", "max"), np.divide(_stats(sync), steady_stats).tolist(),
                                              strict=True))
        result["sync_num_rebalances"] = int(runs["sync"]["num_updates"])
        rows.append(("rebalance, sync", sync))
    _print_rows(rows)
    ratios = result["async_over_steady"]
    print(f"async/steady: p50 {ratios['p50']:.3f}, p99 {ratios['p99']:.3f}, max {ratios['max']:.3f}; "
          f"rebalances {result['num_rebalances']}; bitwise equal: {result['bitwise_equal']}")
    if "sync_over_steady" in result:
        sync_ratios = result["sync_over_steady"]
        print(f"sync/steady: p50 {sync_ratios['p50']:.3f}, p99 {sync_ratios['p99']:.3f}, max {sync_ratios['max']:.3f}")
    if args.stop_planner_at is not None:
        largest = int(np.argmax(run["step_ms"]))
        result.update({"largest_step_ms": float(run["step_ms"][largest]), "largest_step": largest,
                       "planner_restarts": int(run["restarts"]), "updates_after_stop": int(run["updates_after_stop"]),
                       "planner_errors": run["errors"]})  # fmt: skip
        print(f"planner stopped at step {args.stop_planner_at}: largest single step {result['largest_step_ms']:.2f} ms "
              f"(step {largest}; steady p50 {steady_stats[0]:.2f} ms); planner restarts {run['restarts']}; "
              f"updates from windows after the stop {run['updates_after_stop']}")
        for message in run["errors"]:
            print(f"  logged: {message}")
    slowest = np.argsort(-run["step_ms"])[:3]
    result["slowest_async_steps"] = [(int(i), float(run["step_ms"][i]), run["phases"][i]) for i in slowest]
    print("slowest async steps (step, ms, rank 0's work): " + "; ".join(
        f"{i} {ms:.1f} [{work or 'steady'}]" for i, ms, work in result["slowest_async_steps"]))
    print("async run by rank 0's update work in the step: " + ", ".join(
        f"{work} {v['count']} x {v['p50_ms']:.1f} ms" for work, v in result["async_by_phase"].items()))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
