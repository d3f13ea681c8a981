"""FlashLB balance and planning time, next to default_eplb when it is available.

Sections: the published example; planning time on the synthetic DeepSeek-V3-like workload
(58 layers, 256 experts, 32 ranks x 9 slots, 64 episodes) and its scaling in layers; the gap
of the aggregated-load max rank load to ``lower_bound_max_load`` per layer; out-of-sample
balance (plan on window k, per-step PAR on window k + 1) on the synthetic workload and the
traces in ``--traces-dir``, and on those traces over 15 rank layouts and 4 window lengths.

    PYTHONPATH=python python benchmarks/bench_flashlb.py --threads 2 --traces-dir DIR --out flashlb.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from workloads import add_traces_dir_argument, deepseek_v3_like, load_trace, trace_names

from eplb_native import Plan, evaluate
from eplb_native.flashlb import FlashLBOptions, plan_flashlb

PUBLISHED_LOAD = [600, 560, 120, 120, 20, 10, 10, 10]  # FlashLB publication, 8 ranks x 2 slots
PUBLISHED_OPTIMUM = 590 / 3


def default_eplb() -> Callable[..., Plan] | None:
    """The greedy baseline through the policy registry, or None when it is not built yet."""
    try:
        from eplb_native.policies import rebalance_experts
    except ImportError:
        return None

    def run(load: np.ndarray, num_replicas: int, num_ranks: int, threads: int) -> Plan:
        return Plan(*rebalance_experts(load, num_replicas, 1, 1, num_ranks, policy="default_eplb",
                                       num_threads=threads))

    return run


def median_ms(fn: Callable[[], object], repeats: int,
              clock: Callable[[], float] = time.perf_counter) -> float:
    """Median of ``repeats`` timed calls after one warm-up; ``clock=time.process_time`` gives
    the CPU time of this process (robust on a shared machine, for single-thread runs)."""
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return 1e3 * statistics.median(times)


def fold_episodes(history: np.ndarray, episode_steps: int) -> np.ndarray:
    """[T, L, N] -> [T // episode_steps, L, N], summing consecutive steps."""
    num_episodes = history.shape[0] // episode_steps
    trimmed = history[: num_episodes * episode_steps]
    return trimmed.reshape(num_episodes, episode_steps, *history.shape[1:]).sum(axis=1)


def bench_published(baseline: Callable[..., Plan] | None) -> dict[str, Any]:
    load = np.array([PUBLISHED_LOAD], dtype=np.float64)
    rows = {"optimum": PUBLISHED_OPTIMUM, "published_flashlb": 205.0, "upstream_code": 200.0}
    rows["flashlb"] = float(evaluate(plan_flashlb(load, 16, 1, 1, 8), load, 8).max_load[0])
    if baseline is not None:
        rows["default_eplb"] = float(evaluate(baseline(load, 16, 8, 1), load, 8).max_load[0])
    print("published example (8 ranks x 2 slots): max rank load")
    for name, value in rows.items():
        print(f"  {name:<18} {value:8.2f}")
    return rows


def bench_time(history: np.ndarray, threads: int, repeats: int,
               baseline: Callable[..., Plan] | None) -> dict[str, Any]:
    episodes = fold_episodes(history, 16)  # 64 episodes of 16 steps
    load = episodes.sum(axis=0)
    per_step = FlashLBOptions(episode_steps=1)
    rows: dict[str, Any] = {}
    rows["flashlb_64_episodes_ms"] = median_ms(
        lambda: plan_flashlb(load, 288, 1, 1, 32, history=episodes, num_threads=threads,
                             options=per_step), repeats)
    rows["flashlb_64_episodes_cpu_ms_1_thread"] = median_ms(
        lambda: plan_flashlb(load, 288, 1, 1, 32, history=episodes, num_threads=1,
                             options=per_step), repeats, clock=time.process_time)
    rows["flashlb_1024_steps_ms"] = median_ms(
        lambda: plan_flashlb(load, 288, 1, 1, 32, history=history, num_threads=threads), repeats)
    rows["flashlb_aggregate_ms"] = median_ms(
        lambda: plan_flashlb(load, 288, 1, 1, 32, num_threads=threads), repeats)
    if baseline is not None:
        rows["default_eplb_ms"] = median_ms(lambda: baseline(load, 288, 32, threads), repeats)
    scaling = {}
    for num_layers in (1, 15, 29, 58):
        scaling[num_layers] = median_ms(
            lambda n=num_layers: plan_flashlb(load[:n], 288, 1, 1, 32, history=episodes[:, :n],
                                              num_threads=threads, options=per_step), repeats)
    rows["flashlb_64_episodes_ms_by_layers"] = scaling
    print(f"planning time, 58 layers x 256 experts, 32 x 9 slots, {threads} threads (median ms)")
    for name, value in rows.items():
        if isinstance(value, dict):
            print(f"  {name}: " + ", ".join(f"L={k}: {v:.1f}" for k, v in value.items()))
        else:
            print(f"  {name:<36} {value:9.1f}")
    return rows


def bench_gap(load: np.ndarray, threads: int, baseline: Callable[..., Plan] | None
              ) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    print("aggregated load: max rank load / lower bound - 1, over layers (max, mean, layers > 1%)")
    for num_ranks, num_slots in ((32, 9), (32, 10), (64, 5), (16, 17)):
        num_replicas = num_ranks * num_slots
        plans = {"flashlb": plan_flashlb(load, num_replicas, 1, 1, num_ranks, num_threads=threads)}
        if baseline is not None:
            plans["default_eplb"] = baseline(load, num_replicas, num_ranks, threads)
        for name, plan in plans.items():
            gap = evaluate(plan, load, num_ranks).gap
            key = f"{name}_{num_ranks}x{num_slots}"
            rows[key] = {"max": float(gap.max()), "mean": float(gap.mean()),
                         "layers_over_1pct": int((gap > 0.01).sum()), "per_layer": gap.tolist()}
            print(f"  {key:<22} max {100 * gap.max():6.3f}%  mean {100 * gap.mean():6.3f}%  "
                  f"over 1%: {int((gap > 0.01).sum())}")
    return rows


def out_of_sample(name: str, history: np.ndarray, window: int, num_ranks: int, num_slots: int,
                  threads: int, baseline: Callable[..., Plan] | None) -> dict[str, Any]:
    """Per-step PAR of plans made on one window and evaluated on another (lower is better).

    ``next``: the mean over k of window k's plan on window k + 1, windows on a fixed grid of
    ``window`` steps. ``sliding``: the same with the window starting at
    every ``max(1, window // 16)``-th step (plan on [s, s + W), evaluate on [s + W, s + 2W)):
    more samples, and windows that do not line up with the workload's switches. ``all_pairs``:
    the mean over every ordered pair of distinct grid windows. ``sliding_wins``: how many
    sliding samples the policy beats default_eplb on."""
    num_windows = history.shape[0] // window
    num_replicas = num_ranks * num_slots
    options = FlashLBOptions(episode_steps=max(1, window // 16))
    windows = [history[k * window:(k + 1) * window] for k in range(num_windows)]
    stride = max(1, window // 16)
    starts = range(0, history.shape[0] - 2 * window + 1, stride)
    planners: dict[str, Callable[[np.ndarray], Plan]] = {
        "flashlb": lambda past: plan_flashlb(past.sum(axis=0), num_replicas, 1, 1, num_ranks,
                                             history=past, num_threads=threads, options=options),
        "flashlb_no_history": lambda past: plan_flashlb(past.sum(axis=0), num_replicas, 1, 1,
                                                        num_ranks, num_threads=threads),
    }
    if baseline is not None:
        planners["default_eplb"] = lambda past: baseline(past.sum(axis=0), num_replicas,
                                                         num_ranks, threads)
    row: dict[str, Any] = {}
    sliding: dict[str, np.ndarray] = {}
    for policy, planner in planners.items():
        next_par: list[float] = []
        pair_par: list[float] = []
        for k, past in enumerate(windows):
            plan = planner(past)
            for j, future in enumerate(windows):
                if j != k:
                    par = evaluate(plan, future, num_ranks).par
                    pair_par.append(par)
                    if j == k + 1:
                        next_par.append(par)
        sliding[policy] = np.array([
            evaluate(planner(history[s:s + window]), history[s + window:s + 2 * window],
                     num_ranks).par
            for s in starts
        ])
        row[policy] = {"next": float(np.mean(next_par)), "sliding": float(sliding[policy].mean()),
                       "all_pairs": float(np.mean(pair_par)), "num_next": len(next_par),
                       "num_sliding": int(sliding[policy].size)}
    if "default_eplb" in sliding:
        for policy, values in sliding.items():
            row[policy]["sliding_wins"] = int(np.sum(values < sliding["default_eplb"]))
    for measure in ("next", "sliding", "all_pairs"):
        label = name if measure == "next" else ""
        print(f"  {label:<28} {measure + ':':<10} " +
              "  ".join(f"{p} {v[measure]:.4f}" for p, v in row.items()) +
              (f"  ({len(starts)} samples)" if measure == "sliding" else ""))
    return row


def sign_test_p(wins: int, losses: int) -> float:
    """Two-sided sign test: the probability of a split at least this uneven between ``wins``
    and ``losses`` if each were a fair coin flip."""
    trials = wins + losses
    tail = sum(math.comb(trials, k) for k in range(min(wins, losses) + 1)) / 2.0**trials
    return min(1.0, 2.0 * tail)


def layout_grid(name: str, history: np.ndarray, threads: int,
                baseline: Callable[..., Plan]) -> dict[str, Any]:
    """The fixed-grid measure of ``out_of_sample`` over many rank layouts and window lengths.

    Layouts: D in (4, 6, 8, 12, 16) ranks with ceil(N / D) + 0, 1 or 2 slots each (from no
    redundant slot to two per rank); windows of T / 16, T / 8, T / 4 and T / 2 steps (those of
    at least one step). Per window length: the mean per-step PAR of each policy over every
    (layout, window k) sample, how many layouts flashlb wins on the mean, how many samples, and
    the two-sided sign test's p-value for those samples (ties dropped; no difference at p ~ 1)."""
    num_steps, _, num_experts = history.shape
    layouts = [(d, -(-num_experts // d) + extra) for d in (4, 6, 8, 12, 16) for extra in (0, 1, 2)]
    rows: dict[str, Any] = {}

    def plan(policy: str, past: np.ndarray, num_ranks: int, num_slots: int,
             options: FlashLBOptions) -> Plan:
        replicas = num_ranks * num_slots
        if policy == "flashlb":
            return plan_flashlb(past.sum(axis=0), replicas, 1, 1, num_ranks, history=past,
                                num_threads=threads, options=options)
        return baseline(past.sum(axis=0), replicas, num_ranks, threads)

    for window in sorted({num_steps // div for div in (16, 8, 4, 2) if num_steps // div >= 1}):
        options = FlashLBOptions(episode_steps=max(1, window // 16))
        par: dict[str, list[list[float]]] = {"flashlb": [], "default_eplb": []}
        for num_ranks, num_slots in layouts:
            for policy, samples in par.items():
                samples.append([
                    evaluate(plan(policy, history[k * window:(k + 1) * window], num_ranks,
                                  num_slots, options),
                             history[(k + 1) * window:(k + 2) * window], num_ranks).par
                    for k in range(num_steps // window - 1)
                ])
        ours, theirs = np.array(par["flashlb"]), np.array(par["default_eplb"])
        rows[str(window)] = {
            "flashlb": float(ours.mean()), "default_eplb": float(theirs.mean()),
            "layouts_won": int(np.sum(ours.mean(axis=1) < theirs.mean(axis=1))),
            "num_layouts": len(layouts), "samples_won": int(np.sum(ours < theirs)),
            "num_samples": int(ours.size),
            "sign_test_p": sign_test_p(int(np.sum(ours < theirs)), int(np.sum(ours > theirs))),
        }
        row = rows[str(window)]
        print(f"  {name:<28} W={window:<4} flashlb {row['flashlb']:.4f}  default_eplb "
              f"{row['default_eplb']:.4f}  layouts won {row['layouts_won']}/{len(layouts)}  "
              f"samples won {row['samples_won']}/{row['num_samples']} (sign test p "
              f"{row['sign_test_p']:.2g})")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=str, default=None, help="write the results as JSON here")
    add_traces_dir_argument(parser)
    args = parser.parse_args()

    baseline = default_eplb()
    if baseline is None:
        print("note: eplb_native.policies not importable: default_eplb rows skipped")
    history = deepseek_v3_like(seed=args.seed)
    results: dict[str, Any] = {"threads": args.threads, "seed": args.seed}
    results["published_example"] = bench_published(baseline)
    results["planning_time"] = bench_time(history, args.threads, args.repeats, baseline)
    results["aggregate_gap"] = bench_gap(history.sum(axis=0), args.threads, baseline)
    print("out-of-sample per-step PAR (plan on window k, evaluate on k + 1: on a grid, sliding; "
          "and on every other grid window; lower is better)")
    oos = {"synthetic_deepseek_v3 (256-step windows)": out_of_sample(
        "synthetic_deepseek_v3", history, 256, 32, 9, args.threads, baseline)}
    for trace in trace_names(args.traces_dir):
        steps = load_trace(args.traces_dir, trace)
        if steps.shape[0] < 2:
            print(f"  {trace:<28} aggregate only (1 step): no out-of-sample window")
            continue
        window = 20 if steps.shape[0] >= 40 else 1
        oos[trace] = out_of_sample(trace, steps, window, 8, 8, args.threads, baseline)
    results["out_of_sample_par"] = oos
    if baseline is not None:
        print("out-of-sample per-step PAR on a fixed grid over 15 rank layouts (plan on window k, "
              "evaluate on k + 1; lower is better)")
        traces = {
            trace: load_trace(args.traces_dir, trace) for trace in trace_names(args.traces_dir)
        }
        results["out_of_sample_layouts"] = {
            trace: layout_grid(trace, steps, args.threads, baseline)
            for trace, steps in traces.items() if steps.shape[0] >= 2
        }
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
