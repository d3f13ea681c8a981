"""Microbenchmark on an Ascend A3 (or A2): fused_moe_decode vs the unfused torch_npu chain.

Question: how long does one decode MoE layer take with eplb_native's fused operator (route +
count + moe_load update + permute + grouped GEMM/SwiGLU + grouped GEMM + combine, 5 kernel
launches) compared with the chain of torch_npu ops a vllm-ascend layer runs today:

    npu_moe_init_routing_v2 -> npu_grouped_matmul(w1) -> npu_swiglu -> npu_grouped_matmul(w2)
    -> npu_moe_finalize_routing, plus moe_load.add_(counts)

The argument semantics of the torch_npu ops below are taken from torch-npu 2.13.0's
``_op_plugin_docs.py`` and are UNVERIFIED on a device (which half npu_swiglu treats as the gate,
which row-index convention npu_moe_finalize_routing expects); the script prints the max
difference between the two outputs so a first run shows whether the chain is set up correctly.

Run on a CANN machine with torch_npu and eplb_native built with the kernels:

    python benchmarks/bench_fused_moe_npu.py --tokens 1 16 64 256 --out results.json

Without an NPU the script exits with status 1 and says why on stderr.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 16, 64, 256], help="BS values")
    parser.add_argument("--hidden", type=int, default=7168, help="H")
    parser.add_argument("--intermediate", type=int, default=2048, help="I (w1 is [H, 2I])")
    parser.add_argument("--experts", type=int, default=16, help="local experts E")
    parser.add_argument("--top-k", type=int, default=8, help="K")
    parser.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write results as JSON here")
    return parser.parse_args()


def _require_npu():
    """torch_npu with a device and the eplb_native kernels, or exit(2) with the reason."""
    try:
        import torch
        import torch_npu
    except (ImportError, OSError, RuntimeError) as exc:
        sys.exit(f"bench_fused_moe_npu: no NPU stack ({exc}); run it on an Ascend machine")
    from eplb_native import ops

    if not torch.npu.is_available():
        sys.exit("bench_fused_moe_npu: torch_npu is installed but no NPU device is visible")
    if not ops.npu_available():
        sys.exit("bench_fused_moe_npu: eplb_native was built without the Ascend kernels (see log)")
    return torch_npu


def _time_ms(fn: Callable[[], object], warmup: int, iters: int) -> float:
    """Median device time of fn in milliseconds (NPU events around each call)."""
    import torch

    for _ in range(warmup):
        fn()
    torch.npu.synchronize()
    times = []
    for _ in range(iters):
        start = torch.npu.Event(enable_timing=True)
        end = torch.npu.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main() -> int:
    args = _parse_args()
    torch_npu = _require_npu()
    import torch

    from eplb_native import ops

    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    gen = torch.Generator().manual_seed(args.seed)
    hidden, inter, experts, top_k = args.hidden, args.intermediate, args.experts, args.top_k
    w1 = [
        (torch.randn(hidden, 2 * inter, generator=gen) * hidden**-0.5).to(dtype).npu()
        for _ in range(experts)
    ]
    w2 = [
        (torch.randn(inter, hidden, generator=gen) * inter**-0.5).to(dtype).npu()
        for _ in range(experts)
    ]
    rows = []
    for tokens in args.tokens:
        x = torch.randn(tokens, hidden, generator=gen).to(dtype).npu()
        ids = (
            torch.stack([torch.randperm(experts, generator=gen)[:top_k] for _ in range(tokens)])
            .to(torch.int32)
            .npu()
        )
        scales = torch.rand(tokens, top_k, generator=gen).npu()
        load_fused = torch.zeros(experts, dtype=torch.int64).npu()
        load_chain = torch.zeros(experts, dtype=torch.int64).npu()

        def fused(x=x, ids=ids, scales=scales, load=load_fused):
            return ops.fused_moe_decode(x, ids, scales, w1, w2, moe_load=load)[0]

        def chain(x=x, ids=ids, scales=scales, load=load_chain, tokens=tokens):
            expanded_x, row_idx, counts, _ = torch_npu.npu_moe_init_routing_v2(
                x,
                ids,
                active_num=tokens * top_k,
                expert_num=experts,
                expert_tokens_num_type=1,
                expert_tokens_num_flag=True,
                quant_mode=-1,
                active_expert_range=[0, experts],
                row_idx_type=0,
            )
            h1 = torch_npu.npu_grouped_matmul(
                [expanded_x], w1, group_list=counts, group_list_type=1, split_item=2, group_type=0
            )[0]
            act = torch_npu.npu_swiglu(h1, dim=-1)
            y = torch_npu.npu_grouped_matmul(
                [act], w2, group_list=counts, group_list_type=1, split_item=2, group_type=0
            )[0]
            load.add_(counts)
            return torch_npu.npu_moe_finalize_routing(
                y, None, None, None, scales.to(dtype), row_idx, ids, drop_pad_mode=0, k=top_k
            )

        diff = float((fused().float() - chain().float()).abs().max())
        fused_ms = _time_ms(fused, args.warmup, args.iters)
        chain_ms = _time_ms(chain, args.warmup, args.iters)
        rows.append(
            {
                "tokens": tokens,
                "hidden": hidden,
                "intermediate": inter,
                "experts": experts,
                "top_k": top_k,
                "dtype": args.dtype,
                "fused_ms": fused_ms,
                "chain_ms": chain_ms,
                "speedup": chain_ms / fused_ms,
                "max_abs_diff": diff,
            }
        )

    print(f"{'BS':>5} {'fused ms':>10} {'chain ms':>10} {'speedup':>8} {'max|diff|':>10}")
    for row in rows:
        print(
            f"{row['tokens']:>5} {row['fused_ms']:>10.4f} {row['chain_ms']:>10.4f} "
            f"{row['speedup']:>8.2f} {row['max_abs_diff']:>10.3g}"
        )
    if args.out is not None:
        device = torch.npu.get_device_name(0)
        args.out.write_text(json.dumps({"device": device, "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
