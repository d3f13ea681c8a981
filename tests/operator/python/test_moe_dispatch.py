"""Expert-parallel dispatch -> fused_moe_decode -> combine over 4 gloo processes.

Every rank builds the same global inputs (4 ranks x uneven token counts, one idle rank, masks,
ids outside [0, D*E), 12 experts, 3 per rank), runs ``fused_moe_decode_ep`` on its own tokens and
experts, and checks: its output equals the independent numpy golden (tests/operator/
python/fused_moe_numpy.py) run densely over all tokens and all 12 experts, bit for bit; its
``expert_token_nums`` and ``moe_load`` equal the pairs the whole group routed to its 3 experts.
Once with bf16 weights, once with W8A8 (int8 weights, fp32 w1 scales and bf16 w2 scales).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dist_utils import run_on_ranks
from fused_moe_numpy import f32_to_bf16_bits, fused_moe_decode_golden

from eplb_native.ops import dispatch as moe_dispatch

NUM_RANKS, LOCAL_EXPERTS, TOP_K, HIDDEN, INTER = 4, 3, 3, 24, 10
TOKENS = [5, 0, 7, 3]  # rank 1 sends nothing but still receives pairs
NUM_EXPERTS = NUM_RANKS * LOCAL_EXPERTS


def _bf16(values: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(f32_to_bf16_bits(values.astype(np.float32)).view(np.int16)).view(
        torch.bfloat16
    )


def _global_inputs() -> dict:
    """All ranks' tokens and all experts' weights, identical on every rank."""
    rng = np.random.default_rng(7)
    inputs: dict = {"x": [], "ids": [], "scales": [], "mask": []}
    for rank, tokens in enumerate(TOKENS):
        inputs["x"].append(rng.standard_normal((tokens, HIDDEN)).astype(np.float32))
        ids = rng.integers(0, NUM_EXPERTS, (tokens, TOP_K)).astype(np.int32)
        if tokens:
            ids[0, 0] = -1  # not routed
            ids[-1, -1] = NUM_EXPERTS  # not routed
        inputs["ids"].append(ids)
        inputs["scales"].append(rng.random((tokens, TOP_K)).astype(np.float32))
        mask = np.ones(tokens, dtype=bool)
        if rank == 2:
            mask[3] = False
        inputs["mask"].append(mask)
    inputs["w1"] = [
        rng.standard_normal((HIDDEN, 2 * INTER)).astype(np.float32) * 0.2
        for _ in range(NUM_EXPERTS)
    ]
    inputs["w2"] = [
        rng.standard_normal((INTER, HIDDEN)).astype(np.float32) * 0.3 for _ in range(NUM_EXPERTS)
    ]
    inputs["q1"] = [
        rng.integers(-127, 128, (HIDDEN, 2 * INTER)).astype(np.int8) for _ in range(NUM_EXPERTS)
    ]
    inputs["q2"] = [
        rng.integers(-127, 128, (INTER, HIDDEN)).astype(np.int8) for _ in range(NUM_EXPERTS)
    ]
    inputs["s1"] = [(rng.random(2 * INTER) * 0.01).astype(np.float32) for _ in range(NUM_EXPERTS)]
    inputs["s2"] = [(rng.random(HIDDEN) * 0.01).astype(np.float32) for _ in range(NUM_EXPERTS)]
    return inputs


def _dense(inputs: dict, w8a8: bool) -> tuple[np.ndarray, np.ndarray]:
    """numpy golden over every token and every expert: (out bf16 bits [sum tokens, H], counts)."""
    x = f32_to_bf16_bits(np.concatenate(inputs["x"]))
    ids = np.concatenate(inputs["ids"])
    scales = np.concatenate(inputs["scales"])
    mask = np.concatenate(inputs["mask"])
    if w8a8:
        golden = fused_moe_decode_golden(
            x,
            "bfloat16",
            ids,
            scales,
            inputs["q1"],
            inputs["q2"],
            mask,
            w1_scale=inputs["s1"],
            w2_scale=[f32_to_bf16_bits(s) for s in inputs["s2"]],
            scale_dtypes=("float32", "bfloat16"),
        )
    else:
        w1 = [f32_to_bf16_bits(w) for w in inputs["w1"]]
        w2 = [f32_to_bf16_bits(w) for w in inputs["w2"]]
        golden = fused_moe_decode_golden(x, "bfloat16", ids, scales, w1, w2, mask)
    return golden.out, golden.counts


def _worker(rank: int, world_size: int) -> None:
    inputs = _global_inputs()
    mine = slice(rank * LOCAL_EXPERTS, (rank + 1) * LOCAL_EXPERTS)
    start = sum(TOKENS[:rank])
    rows = slice(start, start + TOKENS[rank])
    x = _bf16(inputs["x"][rank])
    ids = torch.from_numpy(inputs["ids"][rank])
    scales = torch.from_numpy(inputs["scales"][rank])
    mask = torch.from_numpy(inputs["mask"][rank])
    weights = {
        False: {
            "w1": [_bf16(w) for w in inputs["w1"][mine]],
            "w2": [_bf16(w) for w in inputs["w2"][mine]],
        },
        True: {
            "w1": [torch.from_numpy(w) for w in inputs["q1"][mine]],
            "w2": [torch.from_numpy(w) for w in inputs["q2"][mine]],
            "w1_scale": [torch.from_numpy(s) for s in inputs["s1"][mine]],
            "w2_scale": [_bf16(s) for s in inputs["s2"][mine]],
        },
    }
    # Tensors the group's backend cannot carry (gloo holds CPU tensors only) are refused by name.
    with pytest.raises(ValueError, match="group: meta tensors need"):
        moe_dispatch.dispatch(x.to("meta"), ids.to("meta"), num_local_experts=LOCAL_EXPERTS)
    for w8a8 in (False, True):
        load = torch.zeros(LOCAL_EXPERTS, dtype=torch.int64)
        out, counts = moe_dispatch.fused_moe_decode_ep(
            x, ids, scales, x_active_mask=mask, moe_load=load, **weights[w8a8]
        )
        want_out, want_counts = _dense(inputs, w8a8)
        got = out.view(torch.int16).numpy().view(np.uint16)
        assert np.array_equal(got, want_out[rows]), f"rank {rank} w8a8={w8a8}: out differs"
        assert np.array_equal(counts.numpy(), want_counts[mine]), f"rank {rank}: counts"
        assert np.array_equal(load.numpy(), want_counts[mine]), f"rank {rank}: moe_load"
        assert want_counts[mine].sum() > 0 and (TOKENS[rank] == 0 or got.any())


def test_four_ranks_equal_the_dense_golden_and_count_the_routed_pairs() -> None:
    # The first call of a torch.library op imports torch._dynamo (seconds); importing it here
    # lets the forked ranks inherit it instead of each paying for it.
    import torch._dynamo  # noqa: F401

    run_on_ranks(_worker, NUM_RANKS)


def test_one_process_is_the_local_operator() -> None:
    inputs = _global_inputs()
    x = _bf16(inputs["x"][0])
    ids = torch.from_numpy(inputs["ids"][0]) % LOCAL_EXPERTS  # every id local to rank 0
    scales = torch.from_numpy(inputs["scales"][0])
    w1 = [_bf16(w) for w in inputs["w1"][:LOCAL_EXPERTS]]
    w2 = [_bf16(w) for w in inputs["w2"][:LOCAL_EXPERTS]]
    from eplb_native import ops

    want, want_counts = ops.fused_moe_decode(x, ids, scales, w1, w2)
    got, counts = moe_dispatch.fused_moe_decode_ep(x, ids, scales, w1, w2)
    assert torch.equal(got.view(torch.int16), want.view(torch.int16))
    assert torch.equal(counts, want_counts)


def test_dispatch_rejects_bad_arguments_by_name() -> None:
    x = torch.zeros(2, 4)
    ids = torch.zeros(2, 1, dtype=torch.int32)
    with pytest.raises(ValueError, match="num_local_experts"):
        moe_dispatch.dispatch(x, ids, num_local_experts=0)
    with pytest.raises(ValueError, match="expert_ids"):
        moe_dispatch.dispatch(x, ids.float(), num_local_experts=1)
    with pytest.raises(ValueError, match="x_active_mask"):
        moe_dispatch.dispatch(x, ids, num_local_experts=1, x_active_mask=torch.ones(2))
    received = moe_dispatch.dispatch(x, ids, num_local_experts=1)
    with pytest.raises(ValueError, match="expert_scales"):
        moe_dispatch.combine(received.x, torch.ones(3, 1), received.handle)
