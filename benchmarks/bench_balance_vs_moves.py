"""Balance against weight moves: how balanced does each policy keep a server, and how many expert
weights does it copy to get there?

Replays each workload as a server would (``eplb_native.sim.replay``: the default placement
first, then every ``--interval`` steps each stateful policy re-plans from the per-slot heat of
the window just seen and is scored on the steps that follow) and prints, per window, the
out-of-sample per-step PAR (max / mean rank load, layer mean) and the weight copies of the
rebalance that produced it, for ``default_eplb``, ``swift_balancer``, ``flashlb`` (full
re-plans) and ``flashlb`` incremental (``FlashLBOptions(incremental=True,
max_moves_per_layer=--max-moves)``).

Workloads:

- ``deepseek_v3_like``: ``workloads.deepseek_v3_like`` (synthetic, 58 layers x 256 experts,
  top-8), 32 ranks x 9 slots;
- ``shipped (synthetic)``: the shipped Qwen3-30B-A3B aggregate expanded into a synthetic
  series (``eplb_native.sim.as_time_series``), 8 ranks x 17 slots;
- the multi-step traces in ``--traces-dir`` (e.g. HarMoEny Qwen1.5-MoE: 6 ranks as recorded,
  one redundant slot per rank; interval: a quarter of the trace).

FlashLB folds each window into episodes of ``interval // 8`` steps (at least 1).
Everything is seeded; the table is deterministic except ``plan_ms``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from workloads import add_traces_dir_argument, deepseek_v3_like, trace_names
from workloads import load_trace as load_recorded_trace

from eplb_native.flashlb import FlashLBOptions
from eplb_native.sim import (
    STATIC,
    PolicySpec,
    ReplayResult,
    ReplaySettings,
    SyntheticSeries,
    as_time_series,
    load_trace,
    replay,
    shipped_trace_path,
)

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Workload:
    """One replayed series: load float64 [T, L, N] tokens per expert, and the server shape."""

    name: str
    load: FloatArray
    num_ranks: int
    num_redundant: int
    interval: int


def workloads(args: argparse.Namespace) -> list[Workload]:
    """The synthetic DeepSeek-V3-like series, the shipped trace's series, the recorded traces."""
    found = [
        Workload(
            "deepseek_v3_like",
            deepseek_v3_like(num_steps=args.steps, seed=args.seed),
            num_ranks=32,
            num_redundant=32,
            interval=args.interval,
        )
    ]
    shipped = as_time_series(
        load_trace(shipped_trace_path()), SyntheticSeries(num_steps=args.steps, seed=args.seed)
    )
    found.append(Workload("shipped (synthetic)", shipped.load, 8, 8, args.interval))
    for name in trace_names(args.traces_dir):
        load = load_recorded_trace(args.traces_dir, name)
        if load.shape[0] < 2:
            continue  # an aggregate: nothing to replay
        found.append(Workload(name, load, 6, 6, max(1, load.shape[0] // 4)))
    return found


def policies(interval: int, max_moves: int) -> list[PolicySpec]:
    episode = max(1, interval // 8)
    return [
        PolicySpec("default_eplb", "default_eplb"),
        PolicySpec("swift_balancer", "swift_balancer"),
        PolicySpec("flashlb", "flashlb", FlashLBOptions(episode_steps=episode)),
        PolicySpec(
            f"flashlb_incr{max_moves}",
            "flashlb",
            FlashLBOptions(episode_steps=episode, incremental=True, max_moves_per_layer=max_moves),
        ),
    ]


def print_tables(workload: Workload, result: ReplayResult) -> None:
    labels = list(result.policies)
    steps, layers, experts = workload.load.shape
    print(
        f"\n{workload.name}: {steps} steps x {layers} layers x {experts} experts; "
        f"{workload.num_ranks} ranks x {result.num_slots} slots; re-plan every "
        f"{workload.interval} steps"
    )
    print(f"{'window':<12}" + "".join(f"{label[:15]:>24}" for label in labels))
    print(f"{'steps':<12}" + "".join(f"{'PAR':>15}{'copies':>9}" for _ in labels))
    num_windows = result.policies[STATIC].par_windows.size
    for window in range(num_windows):
        first = workload.interval * (window + 1)
        last = min(first + workload.interval, steps) - 1
        cells = []
        for run in result.policies.values():
            moved = int(run.weight_copies[window]) if run.weight_copies.size else 0
            cells.append(f"{run.par_windows[window]:>15.4f}{moved:>9d}")
        print(f"{f'{first}..{last}':<12}" + "".join(cells))
    cells = []
    for run in result.policies.values():
        cells.append(f"{run.par_steps.mean():>15.4f}{int(run.weight_copies.sum()):>9d}")
    print(f"{'all':<12}" + "".join(cells))
    summary = result.summary()
    print(
        "layers updated / plan ms per call: "
        + ", ".join(
            f"{label} {row['layers_updated']} / {row['plan_ms']:.1f}"
            for label, row in summary.items()
            if label != STATIC
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=512, help="synthetic series length")
    add_traces_dir_argument(parser)
    parser.add_argument("--interval", type=int, default=128, help="synthetic re-plan interval")
    parser.add_argument(
        "--max-moves", type=int, default=16, help="flashlb incremental: copies per layer at most"
    )
    parser.add_argument("--threads", type=int, default=0, help="planner threads (0: all cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    for workload in workloads(args):
        settings = ReplaySettings(
            num_ranks=workload.num_ranks,
            num_redundant_experts=workload.num_redundant,
            interval=workload.interval,
            num_threads=args.threads,
            seed=args.seed,
        )
        result = replay(workload.load, policies(workload.interval, args.max_moves), settings)
        print_tables(workload, result)
        results[workload.name] = {
            "shape": list(workload.load.shape),
            "ranks": workload.num_ranks,
            "slots": result.num_slots,
            "interval": workload.interval,
            "policies": {
                label: {
                    **run.summary(),
                    "par_windows": run.par_windows.tolist(),
                    "weight_copies": run.weight_copies.tolist(),
                    "layers_updated_windows": run.layers_updated.tolist(),
                }
                for label, run in result.policies.items()
            },
        }
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
