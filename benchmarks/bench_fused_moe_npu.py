"""fused_moe_decode on Ascend A2/A3: the expert-parallel layer at the published shape, the local
operator against the unfused torch_npu chain, and the roofline both should be held to.

Questions:

* ``ep``: how long does one decode MoE layer take on an A3 node with the shape the published
  DispatchGmmCombineDecode change was benchmarked at (EP16: 16 dies, 64 experts, 4 per die, batch
  18 and 32 tokens per die, H 4096, I 1536, top-8; 96.28 / 108.83 us), as dispatch (HCCL
  all-to-all) -> fused_moe_decode (cube GEMMs) -> combine, and how much of it is the local
  operator? Run with one process per die::

      torchrun --nproc-per-node 16 benchmarks/bench_fused_moe_npu.py ep --out ep.json

* ``local``: fused_moe_decode against the chain of torch_npu ops a vllm-ascend layer runs today,
  ``npu_moe_init_routing_v2 -> npu_grouped_matmul(w1) -> npu_swiglu -> npu_grouped_matmul(w2)
  -> npu_moe_finalize_routing`` plus ``moe_load.add_(counts)`` (argument semantics from
  torch-npu 2.13.0's ``_op_plugin_docs.py``, unverified on a device: the script prints the
  largest difference between the two outputs so a first run shows whether the chain is set up
  right)::

      python benchmarks/bench_fused_moe_npu.py local --tokens 1 16 64 256 --out local.json

* ``roofline``: the lower bound the ``ep`` shape can reach on one die from the chip's published
  peaks (no NPU needed)::

      python benchmarks/bench_fused_moe_npu.py roofline

``ep`` and ``local`` exit with status 1 and the reason on a machine without an NPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# Published figures of one Ascend 910C die (an A3 node has 8 chips of 2 dies). Dense BF16/FP16:
# 752 TFLOPS and 3.2 TB/s of HBM bandwidth per two-die 910C package (Huawei, "Serving Large
# Language Models on Huawei CloudMatrix384", arXiv:2506.12708, section 3). INT8: twice the FP16
# rate, the Da Vinci cube doing 4096 FP16 or 8192 INT8 multiply-accumulates per cycle (Huawei,
# "DaVinci: A Scalable Architecture for Neural Network Computing", Hot Chips 31, 2019).
PEAK_BF16_FLOPS_PER_DIE = 376e12
PEAK_INT8_OPS_PER_DIE = 752e12
HBM_BYTES_PER_S_PER_DIE = 1.6e12
# DispatchGmmCombineDecode latency reported at this shape for the change that added tensor-list
# weights and expertTokenNums (vllm-ascend pull request #4872, merged as #5552), microseconds.
PUBLISHED_US = {18: 96.28, 32: 108.83}
# The kernels' cube tile: an expert's weights are read once per 128 of its rows.
CUBE_TILE_M = 128


@dataclass(frozen=True)
class Shape:
    """One EP decode layer: `ranks` dies, `experts_per_rank` experts each, `batch` tokens per die."""

    ranks: int = 16
    experts_per_rank: int = 4
    batch: int = 32
    hidden: int = 4096
    intermediate: int = 1536
    top_k: int = 8
    w8a8: bool = True


def roofline(shape: Shape) -> dict[str, float]:
    """Lower bound on one die's time for `shape`, routing spread evenly over the experts.

    Per die, R = batch * K routed pairs arrive (one row each), R / E per local expert.
    Compulsory HBM bytes: every local expert's w1 [H, 2I] and w2 [I, H] (int8 or bf16) once per
    128 of its rows (the cube tile), the W8A8 scales, the received rows read and the expert
    output rows written (bf16). The operator's workspace round trips (x rows, fp32/int32 GEMM
    accumulators h1 [R, 2I] and h2 [R, H], SwiGLU rows [R, I], each written then read) are
    small enough to stay in the on-chip L2; they are reported, and a second bound counts them
    as HBM traffic. FLOPs: 2 * R * 3 * H * I. Dispatch and combine move R rows of H bf16
    activations over the die links each way (counted, not timed: no public link figure).
    """
    pairs = shape.batch * shape.top_k
    rows_per_expert = pairs / shape.experts_per_rank
    weight_reads = max(1, -(-int(rows_per_expert) // CUBE_TILE_M))
    in_bytes = 1 if shape.w8a8 else 2
    h, i = shape.hidden, shape.intermediate
    weights = shape.experts_per_rank * weight_reads * 3 * h * i * in_bytes
    scales = shape.experts_per_rank * (2 * i + h) * 4 if shape.w8a8 else 0
    rows_io = pairs * h * 2 * 2
    compulsory = weights + scales + rows_io
    workspace = 2 * pairs * (h * in_bytes + 2 * i * 4 + i * in_bytes + h * 4)
    flops = 2 * pairs * 3 * h * i
    peak = PEAK_INT8_OPS_PER_DIE if shape.w8a8 else PEAK_BF16_FLOPS_PER_DIE
    memory_us = compulsory / HBM_BYTES_PER_S_PER_DIE * 1e6
    compute_us = flops / peak * 1e6
    return {
        "pairs_per_die": pairs,
        "rows_per_expert": rows_per_expert,
        "weight_mb": weights / 1e6,
        "rows_io_mb": (rows_io + scales) / 1e6,
        "workspace_mb": workspace / 1e6,
        "gflop": flops / 1e9,
        "intensity_flop_per_byte": flops / compulsory,
        "ridge_flop_per_byte": peak / HBM_BYTES_PER_S_PER_DIE,
        "memory_us": memory_us,
        "compute_us": compute_us,
        "bound_us": max(memory_us, compute_us),
        "bound_workspace_in_hbm_us": max(
            (compulsory + workspace) / HBM_BYTES_PER_S_PER_DIE * 1e6, compute_us
        ),
        "link_mb_each_way": pairs * h * 2 / 1e6,
    }


def _roofline_table(batches: list[int]) -> str:
    header = (
        "| batch/die | weights | pairs/die | rows/expert | weights MB | rows in+out MB "
        "| workspace MB | GFLOP | flop/B (ridge) | HBM us | cube us | bound us "
        "| bound, workspace in HBM, us | published us | link MB each way |"
    )
    lines = [header, "|---" * 15 + "|"]
    for batch in batches:
        for w8a8 in (True, False):
            r = roofline(Shape(batch=batch, w8a8=w8a8))
            lines.append(
                f"| {batch} | {'int8 (W8A8)' if w8a8 else 'bf16'} | {r['pairs_per_die']} "
                f"| {r['rows_per_expert']:.0f} | {r['weight_mb']:.1f} | {r['rows_io_mb']:.1f} "
                f"| {r['workspace_mb']:.1f} | {r['gflop']:.2f} "
                f"| {r['intensity_flop_per_byte']:.0f} ({r['ridge_flop_per_byte']:.0f}) "
                f"| {r['memory_us']:.1f} | {r['compute_us']:.1f} | {r['bound_us']:.1f} "
                f"| {r['bound_workspace_in_hbm_us']:.1f} "
                f"| {PUBLISHED_US.get(batch, float('nan')):.2f} | {r['link_mb_each_way']:.2f} |"
            )
    return "\n".join(lines)


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    roof = modes.add_parser("roofline", help="print the roofline of the ep shape (no NPU needed)")
    roof.add_argument("--batch", type=int, nargs="+", default=[18, 32], help="tokens per die")
    ep = modes.add_parser("ep", help="EP layer at the published shape (torchrun, one rank/die)")
    ep.add_argument("--batch", type=int, nargs="+", default=[18, 32], help="tokens per die")
    ep.add_argument("--experts-per-rank", type=int, default=4)
    ep.add_argument("--hidden", type=int, default=4096)
    ep.add_argument("--intermediate", type=int, default=1536)
    ep.add_argument("--top-k", type=int, default=8)
    ep.add_argument("--weights", choices=["w8a8", "bf16", "both"], default="both")
    local = modes.add_parser("local", help="one device: fused op vs the torch_npu chain")
    local.add_argument("--tokens", type=int, nargs="+", default=[1, 16, 64, 256], help="BS")
    local.add_argument("--hidden", type=int, default=7168)
    local.add_argument("--intermediate", type=int, default=2048)
    local.add_argument("--experts", type=int, default=16)
    local.add_argument("--top-k", type=int, default=8)
    local.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16")
    for sub in (ep, local):
        sub.add_argument("--warmup", type=int, default=10)
        sub.add_argument("--iters", type=int, default=50)
        sub.add_argument("--seed", type=int, default=0)
        sub.add_argument("--out", type=Path, default=None, help="write results as JSON here")
    return parser.parse_args()


def _require_npu() -> Any:
    """torch_npu with a device and the eplb_native kernels, or exit(1) with the reason."""
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


def _time_us(fn: Callable[[], object], warmup: int, iters: int) -> list[float]:
    """Device time of each of `iters` calls of fn in microseconds (NPU events around each)."""
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
        times.append(start.elapsed_time(end) * 1e3)
    return times


def _run_ep(args: argparse.Namespace) -> int:
    _require_npu()
    import torch
    import torch.distributed as dist

    from eplb_native import ops
    from eplb_native.ops import dispatch as moe_dispatch

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch.npu.set_device(local_rank)
    dist.init_process_group("hccl")
    rank, ranks = dist.get_rank(), dist.get_world_size()
    gen = torch.Generator().manual_seed(args.seed + rank)
    e_local, h, i, k = args.experts_per_rank, args.hidden, args.intermediate, args.top_k
    experts = ranks * e_local
    kinds = ["w8a8", "bf16"] if args.weights == "both" else [args.weights]
    rows = []
    for kind in kinds:
        if kind == "w8a8":
            weights: dict[str, Any] = {
                "w1": [
                    torch.randint(-127, 128, (h, 2 * i), generator=gen, dtype=torch.int8).npu()
                    for _ in range(e_local)
                ],
                "w2": [
                    torch.randint(-127, 128, (i, h), generator=gen, dtype=torch.int8).npu()
                    for _ in range(e_local)
                ],
                "w1_scale": [
                    (torch.rand(2 * i, generator=gen) * 1e-3).npu() for _ in range(e_local)
                ],
                "w2_scale": [(torch.rand(h, generator=gen) * 1e-3).npu() for _ in range(e_local)],
            }
        else:
            weights = {
                "w1": [
                    (torch.randn(h, 2 * i, generator=gen) * h**-0.5).bfloat16().npu()
                    for _ in range(e_local)
                ],
                "w2": [
                    (torch.randn(i, h, generator=gen) * i**-0.5).bfloat16().npu()
                    for _ in range(e_local)
                ],
            }
        for batch in args.batch:
            x = torch.randn(batch, h, generator=gen).bfloat16().npu()
            ids = torch.stack([torch.randperm(experts, generator=gen)[:k] for _ in range(batch)])
            ids = ids.to(torch.int32).npu()
            scales = torch.softmax(torch.randn(batch, k, generator=gen), dim=-1).npu()
            load = torch.zeros(e_local, dtype=torch.int64).npu()

            def layer(x=x, ids=ids, scales=scales, load=load, weights=weights):
                return moe_dispatch.fused_moe_decode_ep(x, ids, scales, moe_load=load, **weights)

            received = moe_dispatch.dispatch(x, ids, num_local_experts=e_local)

            def local_op(received=received, weights=weights):
                return ops.fused_moe_decode(
                    received.x, received.expert_ids, received.expert_scales, **weights
                )

            dist.barrier()
            layer_us = torch.tensor(_time_us(layer, args.warmup, args.iters))
            local_us = torch.tensor(_time_us(local_op, args.warmup, args.iters))
            # The layer takes as long as its slowest die: per iteration, the maximum over ranks.
            for t in (layer_us, local_us):
                t_dev = t.npu()
                dist.all_reduce(t_dev, op=dist.ReduceOp.MAX)
                t.copy_(t_dev.cpu())
            bound = roofline(Shape(ranks, e_local, batch, h, i, k, kind == "w8a8"))
            rows.append(
                {
                    "batch_per_die": batch,
                    "weights": kind,
                    "ranks": ranks,
                    "experts_per_rank": e_local,
                    "layer_us": statistics.median(layer_us.tolist()),
                    "local_op_us": statistics.median(local_us.tolist()),
                    "roofline_us": bound["bound_us"],
                    "published_us": PUBLISHED_US.get(batch),
                    "pairs_received_rank0": int(received.x.shape[0]),
                }
            )
    if rank == 0:
        print(
            f"{'batch':>5} {'weights':>7} {'layer us':>9} {'local us':>9} {'roofline':>9} {'published':>9}"
        )
        for row in rows:
            print(
                f"{row['batch_per_die']:>5} {row['weights']:>7} {row['layer_us']:>9.2f} "
                f"{row['local_op_us']:>9.2f} {row['roofline_us']:>9.2f} "
                f"{row['published_us'] or float('nan'):>9.2f}"
            )
        if args.out is not None:
            device = torch.npu.get_device_name(local_rank)
            args.out.write_text(json.dumps({"device": device, "results": rows}, indent=2))
    dist.destroy_process_group()
    return 0


def _run_local(args: argparse.Namespace) -> int:
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
        fused_us = statistics.median(_time_us(fused, args.warmup, args.iters))
        chain_us = statistics.median(_time_us(chain, args.warmup, args.iters))
        rows.append(
            {
                "tokens": tokens,
                "hidden": hidden,
                "intermediate": inter,
                "experts": experts,
                "top_k": top_k,
                "dtype": args.dtype,
                "fused_us": fused_us,
                "chain_us": chain_us,
                "speedup": chain_us / fused_us,
                "max_abs_diff": diff,
            }
        )

    print(f"{'BS':>5} {'fused us':>10} {'chain us':>10} {'speedup':>8} {'max|diff|':>10}")
    for row in rows:
        print(
            f"{row['tokens']:>5} {row['fused_us']:>10.2f} {row['chain_us']:>10.2f} "
            f"{row['speedup']:>8.2f} {row['max_abs_diff']:>10.3g}"
        )
    if args.out is not None:
        device = torch.npu.get_device_name(0)
        args.out.write_text(json.dumps({"device": device, "results": rows}, indent=2))
    return 0


def main() -> int:
    args = _parse_args()
    if args.mode == "roofline":
        print(
            json.dumps(
                {
                    "shape": asdict(Shape()),
                    "peaks": {
                        "bf16_flops_per_die": PEAK_BF16_FLOPS_PER_DIE,
                        "int8_ops_per_die": PEAK_INT8_OPS_PER_DIE,
                        "hbm_bytes_per_s_per_die": HBM_BYTES_PER_S_PER_DIE,
                    },
                }
            )
        )
        print(_roofline_table(args.batch))
        return 0
    if args.mode == "ep":
        return _run_ep(args)
    return _run_local(args)


if __name__ == "__main__":
    raise SystemExit(main())
