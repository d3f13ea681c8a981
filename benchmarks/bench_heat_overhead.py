"""Cost of fusing the expert-load accumulation into eplb_native::fused_moe_decode.

Runs the operator on realistic decode sizes without accumulation (moe_load=None), with the int64
[E] total and with the int32 [T, E] ring, interleaving the three in every round so that drift
affects them equally; reports the median time of each and the overhead versus no accumulation.
Target: < 1 %.

    python benchmarks/bench_heat_overhead.py --repeats 15 --out results.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from eplb_native import ops

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64, help="decode tokens BS")
    parser.add_argument("--hidden", type=int, default=2048, help="hidden size H")
    parser.add_argument("--inter", type=int, default=768, help="expert intermediate size I")
    parser.add_argument("--top-k", type=int, default=8, help="experts per token K")
    parser.add_argument("--experts", type=int, default=16, help="local experts E")
    parser.add_argument("--ring-steps", type=int, default=8, help="rows T of the int32 ring")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds (median)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    dtype = DTYPES[args.dtype]
    x = torch.randn(args.batch, args.hidden, generator=gen).to(dtype)
    # Ids over 2E local slots: about half of the (token, k) pairs are remote and skipped, as on
    # one EP rank.
    ids = torch.randint(0, 2 * args.experts, (args.batch, args.top_k), generator=gen,
                        dtype=torch.int32)
    scales = torch.rand(args.batch, args.top_k, generator=gen)
    w1 = [(torch.randn(args.hidden, 2 * args.inter, generator=gen) * 0.05).to(dtype)
          for _ in range(args.experts)]
    w2 = [(torch.randn(args.inter, args.hidden, generator=gen) * 0.05).to(dtype)
          for _ in range(args.experts)]
    total = torch.zeros(args.experts, dtype=torch.int64)
    ring = torch.zeros(args.ring_steps, args.experts, dtype=torch.int32)
    counter = torch.zeros((), dtype=torch.int32)
    modes = {
        "none": {},
        "total int64 [E]": {"moe_load": total},
        "ring int32 [T, E]": {"moe_load": ring, "load_counter": counter},
    }
    times: dict[str, list[float]] = {name: [] for name in modes}
    for round_idx in range(args.warmup + args.repeats):
        names = list(modes)
        names = names[round_idx % len(names):] + names[:round_idx % len(names)]  # rotate order
        for name in names:
            start = time.perf_counter()
            ops.fused_moe_decode(x, ids, scales, w1, w2, **modes[name])
            elapsed = time.perf_counter() - start
            if round_idx >= args.warmup:
                times[name].append(elapsed)
    base = statistics.median(times["none"])
    rows = []
    print(f"fused_moe_decode CPU reference: BS={args.batch} H={args.hidden} I={args.inter} "
          f"K={args.top_k} E={args.experts} {args.dtype}, threads={torch.get_num_threads()}, "
          f"median of {args.repeats}")
    print(f"{'accumulation':<20}{'median ms':>12}{'overhead %':>12}")
    for name, samples in times.items():
        median = statistics.median(samples)
        overhead = 100.0 * (median - base) / base
        rows.append({"mode": name, "median_s": median, "overhead_pct": overhead,
                     "samples_s": samples})
        print(f"{name:<20}{median * 1e3:>12.2f}{overhead:>12.2f}")
    calls = args.warmup + args.repeats
    assert int(total.sum()) == int(ring.sum()), "both accumulators saw the same calls"
    assert int(counter) == calls
    if args.out:
        result = {"config": vars(args), "threads": torch.get_num_threads(), "results": rows,
                  "target_overhead_pct": 1.0}
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
