"""Do the heat recording, the replica routing and the torch CUDA kernel of fused_moe_decode run
inside a captured CUDA graph, and what does the fused expert-load accumulation cost there?

One serving step of one rank (rank 1 of 2, ``spread`` routing, so some pairs belong to the other
rank and are skipped): ``ReplicaRouter.route`` -> ``HeatRecorder.record`` (layer 0) ->
``fused_moe_decode`` on the local slots accumulating into ``HeatRecorder.buffer(1)``. It is run
once eagerly, then captured with ``torch.cuda.graph`` and replayed 5 times: both heat buffers
must hold 5 x the eager call's counts, the replayed routing and counts must equal the eager
ones, and the output must equal the eager output bit for bit. Then the operator is timed with
CUDA events, eager and as graph replays, without ``moe_load``, with the int64 [E] total and with
the int32 [T, E] ring (interleaved rounds, medians). Prints a table; ``--json`` writes it all.

    python benchmarks/gpu_graph_check.py --json gpu_graph_check.json
    python benchmarks/gpu_graph_check.py --device cpu --iters 5   # dry run: no capture, no events

Exit status 1 when a check fails. Well under a minute on one GPU at the default sizes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import eplb_native
from eplb_native import ops
from eplb_native.runtime import HeatRecorder
from eplb_native.runtime.routing import ReplicaRouter

RANK, NUM_RANKS = 1, 2
MODES = ("none", "total int64 [E]", "ring int32 [T, E]")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cpu: a dry run of the same steps without graph capture or CUDA events")
    parser.add_argument("--batch", type=int, default=64, help="decode tokens BS on this rank")
    parser.add_argument("--hidden", type=int, default=2048, help="hidden size H")
    parser.add_argument("--inter", type=int, default=768, help="expert intermediate size I")
    parser.add_argument("--top-k", type=int, default=8, help="experts per token K")
    parser.add_argument("--slots", type=int, default=16, help="slots per rank S (local experts E)")
    parser.add_argument("--redundant", type=int, default=4, help="redundant slots R over both ranks")
    parser.add_argument("--ring-steps", type=int, default=8, help="rows T of the int32 ring")
    parser.add_argument("--replays", type=int, default=5, help="graph replays checked")
    parser.add_argument("--iters", type=int, default=200, help="timed calls per mode")
    parser.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    return parser.parse_args()


def build(args: argparse.Namespace, device: str) -> dict[str, Any]:
    """Inputs, routing tables, heat recorder and slot weights of rank 1, on ``device``."""
    gen = torch.Generator().manual_seed(0)
    num_physical = NUM_RANKS * args.slots
    num_experts = num_physical - args.redundant
    plan = eplb_native.default_placement(1, num_experts, NUM_RANKS, args.redundant)
    router = ReplicaRouter(plan.phy2log[0], num_experts, rank=RANK, num_ranks=NUM_RANKS, routing="spread",
                           device=device)
    # This process stands for rank 1: a one-rank recorder of two layers over its S slots.
    heat = HeatRecorder(eplb_native.default_placement(2, args.slots, 1), collection_interval=4, device=device)

    def weight(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * 0.05).to(torch.bfloat16).to(device)

    return {
        # On CUDA the operator dispatches to its torch kernel; the dry run calls that kernel
        # directly (the operator's CPU kernel is the C++ reference).
        "kernel": ops.fused_moe_decode if device == "cuda" else ops.fused_moe_decode_torch,
        "num_experts": num_experts,
        "router": router,
        "heat": heat,
        "x": weight(args.batch, args.hidden) * 20,
        "logical_ids": torch.randint(0, num_experts, (args.batch, args.top_k), generator=gen).to(device),
        "scales": torch.rand(args.batch, args.top_k, generator=gen).to(device),
        "w1": [weight(args.hidden, 2 * args.inter) for _ in range(args.slots)],
        "w2": [weight(args.inter, args.hidden) for _ in range(args.slots)],
        "ring": torch.zeros(args.ring_steps, args.slots, dtype=torch.int32, device=device),
        "counter": torch.zeros((), dtype=torch.int32, device=device),
        "local_ids": torch.zeros(args.batch, args.top_k, dtype=torch.int32, device=device),
    }


def serving_step(state: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Route, record (layer 0), operator accumulating into layer 1: (out, counts, physical)."""
    heat: HeatRecorder = state["heat"]
    physical = state["router"].route(state["logical_ids"])
    local = physical - RANK * heat.num_slots
    heat.record(0, local)
    out, counts = state["kernel"](state["x"], local.to(torch.int32), state["scales"], state["w1"],
                                  state["w2"], moe_load=heat.buffer(1))
    return out, counts, physical


def check_capture(state: dict[str, Any], args: argparse.Namespace, cuda: bool) -> dict[str, Any]:
    """One eager step, then ``replays`` graph replays (eager repeats in the dry run)."""
    heat: HeatRecorder = state["heat"]
    once_out, once_counts, once_physical = serving_step(state)
    once = [heat.buffer(layer).clone() for layer in (0, 1)]
    if cuda:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the capture stream, as torch.cuda.graph asks
            for _ in range(2):
                serving_step(state)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static = serving_step(state)
        for layer in (0, 1):
            heat.buffer(layer).zero_()
        for _ in range(args.replays):
            graph.replay()
        torch.cuda.synchronize()
        replayed = static
    else:
        for layer in (0, 1):
            heat.buffer(layer).zero_()
        for _ in range(args.replays):
            replayed = serving_step(state)
    out, counts, physical = replayed
    checks = {
        "record counts = replays x one call": all(
            torch.equal(heat.buffer(layer), args.replays * once[layer]) for layer in (0, 1)
        ),
        "operator moe_load = replays x its counts": torch.equal(heat.buffer(1), args.replays * once_counts),
        "routing equals the eager call": torch.equal(physical, once_physical),
        "counts equal the eager call": torch.equal(counts, once_counts),
        "output bitwise equal to the eager call": torch.equal(out.view(torch.int16), once_out.view(torch.int16)),
    }
    local = once_physical - RANK * heat.num_slots
    return {
        "checks": checks,
        "local_pairs_per_call": int(((local >= 0) & (local < heat.num_slots)).sum()),
        "pairs_per_call": int(local.numel()),
    }


def op_call(state: dict[str, Any], mode: str) -> Callable[[], object]:
    kwargs: dict[str, Any] = {}
    if mode == MODES[1]:
        kwargs = {"moe_load": state["heat"].buffer(1)}
    elif mode == MODES[2]:
        kwargs = {"moe_load": state["ring"], "load_counter": state["counter"]}
    return lambda: state["kernel"](state["x"], state["local_ids"], state["scales"], state["w1"], state["w2"],
                                   **kwargs)


def time_ms(run: Callable[[], object], cuda: bool) -> float:
    """Milliseconds of one call: CUDA events around it on the GPU, perf_counter on the CPU."""
    if not cuda:
        start = time.perf_counter()
        run()
        return (time.perf_counter() - start) * 1e3
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    run()
    end.record()
    end.synchronize()
    return float(begin.elapsed_time(end))


def time_modes(state: dict[str, Any], args: argparse.Namespace, cuda: bool) -> list[dict[str, Any]]:
    """Median ms per mode, eager and (CUDA) as graph replays, over interleaved rounds."""
    physical = state["router"].route(state["logical_ids"]) - RANK * args.slots
    state["local_ids"].copy_(physical.to(torch.int32))
    runs: dict[str, dict[str, Callable[[], object]]] = {}
    for mode in MODES:
        runs[mode] = {"eager": op_call(state, mode)}
        if cuda:
            runs[mode]["eager"]()
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                runs[mode]["eager"]()
            runs[mode]["graph"] = graph.replay
    samples: dict[tuple[str, str], list[float]] = {(m, kind): [] for m in MODES for kind in runs[m]}
    for round_idx in range(args.iters + 3):
        shift = round_idx % len(MODES)
        for mode in MODES[shift:] + MODES[:shift]:
            for kind, run in runs[mode].items():
                elapsed = time_ms(run, cuda)
                if round_idx >= 3:
                    samples[(mode, kind)].append(elapsed)
    rows = []
    base = {kind: statistics.median(samples[(MODES[0], kind)]) for kind in runs[MODES[0]]}
    for mode in MODES:
        row: dict[str, Any] = {"mode": mode}
        for kind in runs[mode]:
            median = statistics.median(samples[(mode, kind)])
            row[f"{kind}_median_ms"] = median
            row[f"{kind}_overhead_pct"] = 100.0 * (median - base[kind]) / base[kind]
        rows.append(row)
    return rows


def main() -> int:
    args = parse_args()
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device (use --device cpu for a dry run)",
              file=sys.stderr)
        return 2
    started = time.perf_counter()
    state = build(args, args.device)
    capture = check_capture(state, args, cuda)
    rows = time_modes(state, args, cuda)
    device_name = torch.cuda.get_device_name() if cuda else "cpu (dry run: no graph capture)"
    print(f"device: {device_name}; torch {torch.__version__}; fused_moe_decode torch kernel, "
          f"BS={args.batch} H={args.hidden} I={args.inter} K={args.top_k} E={args.slots} bf16; "
          f"rank {RANK} of {NUM_RANKS}, spread routing: {capture['local_pairs_per_call']} of "
          f"{capture['pairs_per_call']} pairs local")
    what = "graph replays" if cuda else "eager repeats (dry run)"
    for name, ok in capture["checks"].items():
        print(f"  {'ok  ' if ok else 'FAIL'} {name} ({args.replays} {what})")
    kinds = ["eager", "graph"] if cuda else ["eager"]
    header = f"{'moe_load':<20}" + "".join(f"{kind + ' ms':>12}{'overhead %':>12}" for kind in kinds)
    print(header)
    for row in rows:
        print(f"{row['mode']:<20}" + "".join(
            f"{row[f'{kind}_median_ms']:>12.4f}{row[f'{kind}_overhead_pct']:>12.2f}" for kind in kinds))
    print(f"medians of {args.iters} interleaved calls per mode; total {time.perf_counter() - started:.1f} s")
    if args.json is not None:
        result = {
            "device": device_name,
            "torch": torch.__version__,
            "config": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
            "capture": capture,
            "timing": rows,
        }
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0 if all(capture["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
