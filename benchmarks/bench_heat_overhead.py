"""Cost of fusing the expert-load accumulation into eplb_native::fused_moe_decode.

Runs the operator on realistic decode sizes without accumulation (moe_load=None), with the int64
[E] total and with the int32 [T, E] ring, interleaving the three modes in every round (rotating
their order) so that drift affects them equally. Reports per mode the median time, the overhead
of the medians and the median of same-round ratios ("paired"). On a busy machine the realistic
shape's noise is far above the accumulation's cost, so the same three modes are also timed on a
tiny shape (H = I = 1), where the call is almost only routing and bookkeeping: the absolute
extra time there, divided by the realistic median, bounds the overhead ("bound %"). Target < 1 %.

Layers whose kernel does not accumulate count with ``HeatRecorder.record`` instead: fixed-shape
and sync-free (``scatter_add_`` into a preallocated buffer, ids of other ranks into a discard
bucket), so it can be captured in a CUDA graph. Its time per call on the same ids is reported
next to the boolean-mask + ``bincount`` counting it replaced (data-dependent shapes: a host
sync per call on a GPU), and as a share of the realistic operator call.

    python benchmarks/bench_heat_overhead.py --repeats 21 --out results.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import eplb_native
from eplb_native import ops
from eplb_native.runtime import HeatRecorder

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
MODES = ("none", "total int64 [E]", "ring int32 [T, E]")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64, help="decode tokens BS")
    parser.add_argument("--hidden", type=int, default=2048, help="hidden size H")
    parser.add_argument("--inter", type=int, default=768, help="expert intermediate size I")
    parser.add_argument("--top-k", type=int, default=8, help="experts per token K")
    parser.add_argument("--experts", type=int, default=16, help="local experts E")
    parser.add_argument("--ring-steps", type=int, default=8, help="rows T of the int32 ring")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    parser.add_argument("--repeats", type=int, default=21, help="timed rounds (median)")
    parser.add_argument("--small-repeats", type=int, default=2001, help="rounds, tiny shape")
    parser.add_argument("--record-repeats", type=int, default=2001, help="rounds, recording")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    return parser.parse_args()


def measure(
    args: argparse.Namespace, hidden: int, inter: int, repeats: int
) -> dict[str, list[float]]:
    """Seconds per call of each mode (same inputs), ``repeats`` interleaved rounds."""
    gen = torch.Generator().manual_seed(args.seed)
    dtype = DTYPES[args.dtype]
    x = torch.randn(args.batch, hidden, generator=gen).to(dtype)
    # Ids over 2E slots: about half of the (token, k) pairs are remote and skipped, as on one
    # EP rank.
    ids = torch.randint(
        0, 2 * args.experts, (args.batch, args.top_k), generator=gen, dtype=torch.int32
    )
    scales = torch.rand(args.batch, args.top_k, generator=gen)
    w1 = [
        (torch.randn(hidden, 2 * inter, generator=gen) * 0.05).to(dtype)
        for _ in range(args.experts)
    ]
    w2 = [(torch.randn(inter, hidden, generator=gen) * 0.05).to(dtype) for _ in range(args.experts)]
    total = torch.zeros(args.experts, dtype=torch.int64)
    ring = torch.zeros(args.ring_steps, args.experts, dtype=torch.int32)
    counter = torch.zeros((), dtype=torch.int32)
    kwargs = dict(
        zip(
            MODES,
            ({}, {"moe_load": total}, {"moe_load": ring, "load_counter": counter}),
            strict=True,
        )
    )
    times: dict[str, list[float]] = {name: [] for name in MODES}
    for round_idx in range(args.warmup + repeats):
        shift = round_idx % len(MODES)
        for name in MODES[shift:] + MODES[:shift]:
            start = time.perf_counter()
            ops.fused_moe_decode(x, ids, scales, w1, w2, **kwargs[name])
            elapsed = time.perf_counter() - start
            if round_idx >= args.warmup:
                times[name].append(elapsed)
    calls = args.warmup + repeats
    if int(total.sum()) != int(ring.sum()) or int(counter) != calls:
        message = "accumulators disagree: the benchmark did not run every call"
        raise RuntimeError(message)
    return times


def measure_recording(args: argparse.Namespace) -> dict[str, list[float]]:
    """Seconds per call of ``HeatRecorder.record`` and of mask + bincount counting, same ids."""
    gen = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, 2 * args.experts, (args.batch, args.top_k), generator=gen, dtype=torch.int32)
    heat = HeatRecorder(eplb_native.default_placement(1, args.experts, 1), collection_interval=1)
    masked_counts = torch.zeros(args.experts, dtype=torch.int64)

    def mask_and_bincount() -> None:
        flat = ids.reshape(-1).long()
        masked_counts.add_(torch.bincount(flat[(flat >= 0) & (flat < args.experts)], minlength=args.experts))

    runs = {"record (scatter_add_)": lambda: heat.record(0, ids), "mask + bincount": mask_and_bincount}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for round_idx in range(args.warmup + args.record_repeats):
        for name, run in runs.items() if round_idx % 2 else reversed(runs.items()):
            start = time.perf_counter()
            run()
            elapsed = time.perf_counter() - start
            if round_idx >= args.warmup:
                times[name].append(elapsed)
    if not torch.equal(heat.buffer(0), masked_counts):
        message = "the two counting methods disagree"
        raise RuntimeError(message)
    return times


def paired_pct(samples: list[float], base: list[float]) -> float:
    """Median over rounds of (t / t_none - 1) in percent."""
    return statistics.median(100.0 * (t / t0 - 1.0) for t, t0 in zip(samples, base, strict=True))


def main() -> None:
    args = parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    real = measure(args, args.hidden, args.inter, args.repeats)
    small = measure(args, 1, 1, args.small_repeats)
    base = statistics.median(real["none"])
    small_base = statistics.median(small["none"])
    print(
        f"fused_moe_decode CPU reference: BS={args.batch} H={args.hidden} I={args.inter} "
        f"K={args.top_k} E={args.experts} {args.dtype}, threads={torch.get_num_threads()}, "
        f"median of {args.repeats} (tiny shape: {args.small_repeats})"
    )
    print(
        f"{'accumulation':<20}{'median ms':>11}{'overhead %':>12}{'paired %':>10}"
        f"{'tiny us':>10}{'extra us':>10}{'bound %':>10}"
    )
    rows = []
    for name in MODES:
        median = statistics.median(real[name])
        small_median = statistics.median(small[name])
        extra_s = statistics.median(
            t - t0 for t, t0 in zip(small[name], small["none"], strict=True)
        )
        row = {
            "mode": name,
            "median_s": median,
            "overhead_pct": 100.0 * (median - base) / base,
            "paired_overhead_pct": paired_pct(real[name], real["none"]),
            "tiny_median_s": small_median,
            "tiny_extra_s": extra_s,
            "bound_pct": 100.0 * max(extra_s, 0.0) / base,
        }
        rows.append(row)
        print(
            f"{name:<20}{median * 1e3:>11.2f}{row['overhead_pct']:>12.2f}"
            f"{row['paired_overhead_pct']:>10.2f}{small_median * 1e6:>10.1f}"
            f"{extra_s * 1e6:>10.2f}{row['bound_pct']:>10.4f}"
        )
    print(f"tiny-shape baseline: {small_base * 1e6:.1f} us per call")
    recording = measure_recording(args)
    print(f"counting {args.batch} x {args.top_k} ids without the operator, median of {args.record_repeats}:")
    print(f"{'method':<24}{'median us':>11}{'% of op':>10}")
    record_rows = []
    for name, samples in recording.items():
        median = statistics.median(samples)
        record_rows.append({"method": name, "median_s": median, "pct_of_op": 100.0 * median / base})
        print(f"{name:<24}{median * 1e6:>11.2f}{100.0 * median / base:>10.4f}")
    if args.out:
        result = {
            "config": vars(args),
            "threads": torch.get_num_threads(),
            "results": rows,
            "recording": record_rows,
            "samples_s": {"realistic": real, "tiny": small, "recording": recording},
            "target_overhead_pct": 1.0,
        }
        with Path(args.out).open("w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
