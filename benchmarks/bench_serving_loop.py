"""Does FlashLB win the serving loop against upstream vllm-ascend FlashLB, on balance and on
weight copies?

The loop (``eplb_native.sim.replay``): the default placement first; every k steps each policy
re-plans from the last w = k steps (ours through ``planning.plan``, as the runtime does;
upstream FlashLB through its ``rebalance(table, workload)`` on the per-slot heat; default
options), the returned table is installed, and the next k steps score it.
Per setting and policy it prints the mean out-of-sample per-step PAR (max / mean rank load,
layer mean), weight copies per rebalance, the in-sample per-step PAR (the installed table on
the window it was planned from), and the windows won against upstream FlashLB with the
two-sided sign test's p-value (ties dropped).

Policies: ``flashlb``, ``default_eplb``, ``swift_balancer`` (this package), and with
``--upstream-vllm-ascend DIR`` upstream FlashLB, loaded at run time from the vllm-ascend
checkout DIR (``vllm_ascend/eplb/core/policy/policy_flashlb.py``; needs numba and scipy). Only
what it imports that exists on Ascend servers alone is stubbed: ``vllm.logger`` (a logging
logger) and ``vllm_ascend.distributed.parallel_state.get_dynamic_eplb_group`` (a group of the
setting's rank count, which picks upstream's thresholds). Its whole returned table is
installed, as vllm-ascend's ``EplbWorker`` does.

Settings:

- ``synthetic_dsv3``: ``workloads.deepseek_v3_like`` (1024 steps, 58 layers, 256 experts,
  top-8; synthetic), 16 evenly spaced layers, 32 ranks x 9 slots, k = w = 16 and 64;
- ``harmoeny_qwen15moe`` (``--traces-dir``, where ``harmoeny_traces.py`` wrote it; 80 steps x
  12 layers x 60 experts, 4 datasets of 20 steps), 8 ranks x 8 slots, k = w = 5, 10, 20;
- ``mbolt_qwen3_30b_a3b``: the trace shipped in the package (mbolt, MIT), an aggregate (1 step),
  so, as ``eplb-native simulate`` does, a
  synthetic series built from it by ``eplb_native.sim.synthesize_series`` with the simulate
  defaults (300 steps, 256 tokens per step, top-8, drift 0.05), 8 ranks x 17 slots, k = w = 10
  and 50.

``--speed``: planning time on the same 64 one-step samples (58 layers x 256 experts), side by
side in one run (best of ``--repeats``; CPU time of this process and wall time): one stateful
call from the default placement, upstream FlashLB (single-threaded numba) against ours with
one and ``--threads`` planner threads, on 32 x 9 and 128 x 3 slots; and our planner alone
(``plan_flashlb``, no current table, one thread) on both layouts. Run it with the numerical
libraries on one thread (``OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1``): otherwise the CPU time
also counts torch's and OpenBLAS's idle worker threads spinning after upstream's small tensor
operations (about twice upstream's wall time on 2 cores). The settings in force are printed.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 PYTHONPATH=python python \\
        benchmarks/bench_serving_loop.py --upstream-vllm-ascend ../upstream/vllm-ascend \\
        --speed --json serving_loop.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import tempfile
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from bench_flashlb import sign_test_p
from workloads import add_traces_dir_argument, deepseek_v3_like

from eplb_native.flashlb import plan_flashlb
from eplb_native.plan import default_placement, slot_load_from_expert_load
from eplb_native.policies import make_policy
from eplb_native.sim import (
    PolicySpec,
    ReplayResult,
    ReplaySettings,
    SyntheticSeries,
    load_trace,
    replay,
    shipped_trace_path,
    synthesize_series,
)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
UPSTREAM = "upstream_flashlb"
POLICIES = ("flashlb", "default_eplb", "swift_balancer")


@dataclass(frozen=True)
class Setting:
    """One replay: load float64 [T, L, N] tokens per expert, the rank layout, k = w."""

    name: str
    load: FloatArray
    num_ranks: int
    num_slots: int
    interval: int
    note: str


def settings(traces_dir: Path | None, seed: int) -> list[Setting]:
    """The benchmark's settings (see the module docstring); the HarMoEny one is skipped with a
    note without ``traces_dir`` or when it holds no harmoeny_qwen15moe.npz."""
    dsv3 = deepseek_v3_like(seed=seed)
    layers = np.linspace(0, dsv3.shape[1] - 1, 16).round().astype(np.int64)
    dsv3 = np.ascontiguousarray(dsv3[:, layers])
    found = [
        Setting(f"synthetic_dsv3 k=w={k}", dsv3, 32, 9, k, "synthetic") for k in (16, 64)
    ]
    harmoeny = None if traces_dir is None else traces_dir / "harmoeny_qwen15moe.npz"
    if harmoeny is not None and harmoeny.is_file():
        load = load_trace(harmoeny).load
        found += [
            Setting(f"harmoeny_qwen15moe k=w={k}", load, 8, 8, k, "real trace") for k in (5, 10, 20)
        ]
    else:
        print("note: no harmoeny_qwen15moe.npz in --traces-dir: harmoeny_qwen15moe skipped")
    trace = load_trace(shipped_trace_path())
    top_k = int(trace.metadata.get("top_k", "8"))
    series = synthesize_series(trace.load[0], SyntheticSeries(top_k=top_k, seed=seed))
    found += [
        Setting(f"mbolt_qwen3_30b_a3b k=w={k}", series, 8, 17, k,
                "synthetic series from the aggregate, as simulate builds it")
        for k in (10, 50)
    ]
    return found


class UpstreamFlashLB:
    """Upstream FlashLB behind this package's ``rebalance(table, workload)`` call.

    Args:
        module: upstream's ``policy_flashlb`` module (``load_upstream_flashlb``).
        group: the stubbed EPLB group; its ``world_size`` is set to the table's rank count.
    """

    def __init__(self, module: Any, group: types.SimpleNamespace) -> None:
        self.policy = module.FlashLB()
        self.group = group

    def rebalance(self, table: IntArray, workload: FloatArray) -> tuple[bool, IntArray, IntArray]:
        """table int [L, D, S]; workload float [T, L, D, S] tokens per slot. Returns (changed,
        layers int64 [k], the whole new table int64 [L, D, S])."""
        self.group.world_size = table.shape[1]
        changed, layers, new_table = self.policy.rebalance_experts(table, workload)
        return bool(changed), np.asarray(layers, np.int64), np.asarray(new_table, np.int64)


def load_upstream_flashlb(root: Path) -> tuple[Any, types.SimpleNamespace]:
    """Imports ``vllm_ascend/eplb/core/policy/policy_flashlb.py`` from the checkout ``root``
    with stubs for ``vllm.logger`` and ``vllm_ascend.distributed.parallel_state``; returns the
    module and the stub group (its ``world_size`` is read at each rebalance)."""
    policy_dir = root / "vllm_ascend" / "eplb" / "core" / "policy"
    if not (policy_dir / "policy_flashlb.py").is_file():
        msg = f"--upstream-vllm-ascend: no {policy_dir / 'policy_flashlb.py'}"
        raise SystemExit(msg)
    group = types.SimpleNamespace(world_size=0)
    stubs = {
        "vllm": {},
        "vllm.logger": {"logger": logging.getLogger("upstream_flashlb")},
        "vllm_ascend": {},
        "vllm_ascend.distributed": {},
        "vllm_ascend.distributed.parallel_state": {"get_dynamic_eplb_group": lambda: group},
        "upstream_eplb_policy": {"__path__": [str(policy_dir)]},  # the policy files, as a package
    }
    for name, attributes in stubs.items():
        module = types.ModuleType(name)
        if not name.endswith(("logger", "parallel_state")):
            module.__path__ = []
        for key, value in attributes.items():
            setattr(module, key, value)
        sys.modules[name] = module
    # Nothing is written into the checkout: no bytecode, numba's cache in a temporary folder.
    os.environ.setdefault("NUMBA_CACHE_DIR", tempfile.mkdtemp(prefix="numba_cache_"))
    sys.dont_write_bytecode = True
    try:
        return importlib.import_module("upstream_eplb_policy.policy_flashlb"), group
    finally:
        sys.dont_write_bytecode = False


def run_setting(setting: Setting, upstream: tuple[Any, types.SimpleNamespace] | None,
                threads: int) -> ReplayResult:
    replay_settings = ReplaySettings(
        num_ranks=setting.num_ranks,
        num_redundant_experts=setting.num_ranks * setting.num_slots - setting.load.shape[2],
        interval=setting.interval,
        num_threads=threads,
    )
    specs = [PolicySpec(label, label) for label in POLICIES]
    if upstream is not None:
        specs.append(PolicySpec(UPSTREAM, UpstreamFlashLB(*upstream)))  # a fresh one per replay
    return replay(setting.load, specs, replay_settings)


def report(setting: Setting, result: ReplayResult) -> dict[str, Any]:
    steps, layers, experts = setting.load.shape
    print(f"\n{setting.name}: {steps} steps x {layers} layers x {experts} experts ({setting.note}), "
          f"{setting.num_ranks} ranks x {setting.num_slots} slots, "
          f"{result.policies['static'].par_windows.size} windows")
    print(f"  {'policy':<18}{'PAR out':>9}{'copies':>9}{'PAR in':>9}{'ms':>8}  vs upstream")
    upstream = result.policies.get(UPSTREAM)
    rows: dict[str, Any] = {}
    for label, run in result.policies.items():
        summary = run.summary()
        row = {
            "par_out_of_sample": summary["par_mean"],
            "weight_copies_per_rebalance": summary["weight_copies_per_rebalance"],
            "par_in_sample": float(run.par_in_sample_windows.mean()),
            "plan_ms": summary["plan_ms"],
            "layers_updated": summary["layers_updated"],
            "par_windows": run.par_windows.tolist(),
        }
        versus = ""
        if upstream is not None and label != UPSTREAM:
            wins = int(np.sum(run.par_windows < upstream.par_windows))
            losses = int(np.sum(run.par_windows > upstream.par_windows))
            row["windows_won"], row["windows_lost"] = wins, losses
            row["sign_test_p"] = sign_test_p(wins, losses)
            versus = f"  won {wins}/{run.par_windows.size} (p {row['sign_test_p']:.2g})"
        rows[label] = row
        print(f"  {label:<18}{row['par_out_of_sample']:>9.4f}"
              f"{row['weight_copies_per_rebalance']:>9.1f}{row['par_in_sample']:>9.4f}"
              f"{row['plan_ms']:>8.1f}{versus}")
    return {"shape": [steps, layers, experts], "ranks": setting.num_ranks,
            "slots": setting.num_slots, "k": setting.interval, "w": setting.interval,
            "note": setting.note, "policies": rows}


def best_of(fn: Callable[[], object], repeats: int, clock: Callable[[], float]) -> float:
    """Fastest of ``repeats`` calls after one warm-up, in milliseconds of ``clock``."""
    fn()
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return 1e3 * min(times)


def speed(upstream: tuple[Any, types.SimpleNamespace] | None, threads: int, repeats: int,
          seed: int) -> dict[str, Any]:
    """Planning time on 64 one-step samples, 58 layers x 256 experts: one stateful rebalance
    call from the default placement (upstream and ours), and our planner alone (no table)."""
    samples = deepseek_v3_like(num_steps=64, seed=seed)
    num_layers, num_experts = samples.shape[1:]

    def call(policy: Callable[[], Any], num_ranks: int, num_slots: int) -> Callable[[], object]:
        plan = default_placement(num_layers, num_experts, num_ranks,
                                 num_ranks * num_slots - num_experts)
        table = plan.table(num_ranks)
        workload = slot_load_from_expert_load(plan, samples).reshape(64, *table.shape)
        return lambda: policy().rebalance(table, workload)

    def planner(num_ranks: int, num_slots: int) -> Callable[[], object]:
        load = samples.sum(axis=0)
        return lambda: plan_flashlb(load, num_ranks * num_slots, 1, 1, num_ranks,
                                    history=samples, num_threads=1)

    cases: list[tuple[str, Callable[[], object]]] = []
    if upstream is not None:
        cases.append(("upstream_flashlb call 32x9", call(lambda: UpstreamFlashLB(*upstream), 32, 9)))
    for num_ranks, num_slots in ((32, 9), (128, 3)):
        layout = f"{num_ranks}x{num_slots}"
        cases += [
            (f"flashlb call {layout} 1 thread",
             call(lambda: make_policy("flashlb", num_threads=1), num_ranks, num_slots)),
            (f"flashlb call {layout} {threads} threads",
             call(lambda: make_policy("flashlb", num_threads=threads), num_ranks, num_slots)),
            (f"flashlb planner {layout} 1 thread", planner(num_ranks, num_slots)),
        ]
    library_threads = {name: os.environ.get(name, "unset")
                       for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    print(f"\nplanning time, 64 one-step samples, {num_layers} layers x {num_experts} experts "
          f"(best of {repeats}; a call starts from the default placement; "
          f"{', '.join(f'{k}={v}' for k, v in library_threads.items())})")
    rows: dict[str, Any] = {"library_threads": library_threads}
    for label, fn in cases:
        rows[label] = {"cpu_ms": best_of(fn, repeats, time.process_time),
                       "wall_ms": best_of(fn, repeats, time.perf_counter)}
        print(f"  {label:<36} cpu {rows[label]['cpu_ms']:8.1f} ms  wall "
              f"{rows[label]['wall_ms']:8.1f} ms")
    ratios = {
        "call_128x3_to_32x9_cpu": rows["flashlb call 128x3 1 thread"]["cpu_ms"]
        / rows["flashlb call 32x9 1 thread"]["cpu_ms"],
        "planner_128x3_to_32x9_cpu": rows["flashlb planner 128x3 1 thread"]["cpu_ms"]
        / rows["flashlb planner 32x9 1 thread"]["cpu_ms"],
    }
    if upstream is not None:
        ups = rows["upstream_flashlb call 32x9"]
        ratios["upstream_to_ours_cpu_1_thread"] = ups["cpu_ms"] / rows[
            "flashlb call 32x9 1 thread"]["cpu_ms"]
        ratios[f"upstream_to_ours_wall_{threads}_threads"] = ups["wall_ms"] / rows[
            f"flashlb call 32x9 {threads} threads"]["wall_ms"]
    for name, value in ratios.items():
        print(f"  {name:<36} {value:6.2f}")
    rows["ratios"] = ratios
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream-vllm-ascend", type=Path, metavar="DIR",
                        help="a vllm-ascend checkout: compare against its FlashLB")
    add_traces_dir_argument(parser)
    parser.add_argument("--only", nargs="+", metavar="PREFIX",
                        help="run only the settings whose name starts with one of these")
    parser.add_argument("--speed", action="store_true", help="also time one planning call")
    parser.add_argument("--threads", type=int, default=2, help="planner threads")
    parser.add_argument("--repeats", type=int, default=5, help="--speed: timed calls per case")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the results as JSON")
    args = parser.parse_args()

    upstream = None if args.upstream_vllm_ascend is None else load_upstream_flashlb(
        args.upstream_vllm_ascend)
    results: dict[str, Any] = {"threads": args.threads, "seed": args.seed, "settings": {}}
    for setting in settings(args.traces_dir, args.seed):
        if args.only and not setting.name.startswith(tuple(args.only)):
            continue
        result = run_setting(setting, upstream, args.threads)
        results["settings"][setting.name] = report(setting, result)
    if args.speed:
        results["speed"] = speed(upstream, args.threads, args.repeats, args.seed)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
