"""EplbMoE over 4 gloo processes: all-to-all dispatch/combine equals one process; the gathered
heat equals the true routing counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist
from dist_utils import run_on_ranks

import eplb_native
from eplb_native import Plan
from eplb_native.runtime import EplbMoE, HeatRecorder

NUM_RANKS, NUM_EXPERTS, NUM_LAYERS, TOP_K = 4, 8, 2, 2
HIDDEN, INTERMEDIATE = 16, 8
NUM_STEPS = 3
TOKENS = [[5, 2, 7, 3], [1, 6, 4, 4], [3, 3, 0, 8]]  # [step][rank]: uneven, one rank idle once

# P = 12 slots, S = 3 per rank, one redundant slot per rank.
PLAN = Plan.from_phy2log(
    np.stack(
        [
            eplb_native.default_placement(
                1, NUM_EXPERTS, NUM_RANKS, num_redundant_experts=4
            ).phy2log[0],
            np.array([5, 3, 0, 7, 1, 6, 2, 4, 5, 0, 3, 1]),
        ]
    ),
    NUM_EXPERTS,
)


def _layer_weights(layer_idx: int):
    gen = torch.Generator().manual_seed(100 + layer_idx)
    router = torch.randn(NUM_EXPERTS, HIDDEN, generator=gen)
    w1 = [torch.randn(HIDDEN, 2 * INTERMEDIATE, generator=gen) / 4 for _ in range(NUM_EXPERTS)]
    w2 = [torch.randn(INTERMEDIATE, HIDDEN, generator=gen) / 4 for _ in range(NUM_EXPERTS)]
    return router, w1, w2


def _tokens(step: int, rank: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randn(TOKENS[step][rank], HIDDEN, generator=gen)


def _model(plan: Plan, heat: HeatRecorder | None) -> list[EplbMoE]:
    return [
        EplbMoE.from_logical_weights(
            *_layer_weights(layer), plan, top_k=TOP_K, moe_layer_idx=layer, heat=heat
        )
        for layer in range(NUM_LAYERS)
    ]


def _forward(layers: list[EplbMoE], x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Two residual MoE layers; returns the output and each layer's input."""
    inputs = []
    for layer in layers:
        inputs.append(x)
        x = x + layer(x)
    return x, inputs


def _assert_close(got: torch.Tensor, want: torch.Tensor, where: str) -> None:
    # Not torch.testing.assert_close: with torch.distributed initialised it imports
    # torch.distributed.tensor (and sympy), seconds per worker.
    # Ranks sum their partial outputs in fp32, so the last bits may differ from one process.
    assert got.shape == want.shape, where
    assert got.dtype == want.dtype, where
    diff = (got - want).abs().max().item() if got.numel() else 0.0
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5), f"{where}: max abs diff {diff}"


def _reference() -> list[list[torch.Tensor]]:
    """[step][rank] outputs of one process holding every expert once (identity placement)."""
    identity = eplb_native.default_placement(NUM_LAYERS, NUM_EXPERTS, num_ranks=1)
    layers = _model(identity, None)
    return [
        [_forward(layers, _tokens(step, rank))[0] for rank in range(NUM_RANKS)]
        for step in range(NUM_STEPS)
    ]


def _outputs_and_heat_worker(rank: int, world_size: int, reference: list[list[torch.Tensor]]) -> None:
    heat = HeatRecorder(PLAN, collection_interval=NUM_STEPS)
    layers = _model(PLAN, heat)
    local_log2phy = eplb_native.rank_log2phy(PLAN, world_size)[rank]  # [L, N]
    true_expert = torch.zeros(NUM_STEPS, NUM_LAYERS, NUM_EXPERTS, dtype=torch.int64)
    true_slot = torch.zeros(NUM_STEPS, NUM_LAYERS, PLAN.num_physical, dtype=torch.int64)
    for step in range(NUM_STEPS):
        out, inputs = _forward(layers, _tokens(step, rank))
        _assert_close(out, reference[step][rank], f"{rank=} {step=}")
        for layer_idx, layer_input in enumerate(inputs):
            probs = torch.softmax(layer_input @ layers[layer_idx].router_weight.T, dim=-1)
            experts = torch.topk(probs, TOP_K, dim=-1).indices.reshape(-1)
            true_expert[step, layer_idx] += torch.bincount(experts, minlength=NUM_EXPERTS)
            slots = torch.from_numpy(local_log2phy[layer_idx])[experts]
            true_slot[step, layer_idx] += torch.bincount(slots, minlength=PLAN.num_physical)
        window = heat.step()
        assert (window is None) == (step < NUM_STEPS - 1)
    dist.all_reduce(true_expert)
    dist.all_reduce(true_slot)
    assert window is not None
    true_rank = true_slot.sum(dim=0).reshape(NUM_LAYERS, world_size, -1).sum(dim=-1)  # [L, D]
    assert np.array_equal(window.rank_load, true_rank.numpy()), f"{rank=}"
    assert np.array_equal(window.counts, true_expert.numpy()), f"{rank=}"
    assert window.counts.sum() == TOP_K * sum(map(sum, TOKENS)) * NUM_LAYERS


def test_four_ranks_match_one_process_and_heat_matches_routing() -> None:
    run_on_ranks(_outputs_and_heat_worker, NUM_RANKS, _reference())


def _install_worker(rank: int, world_size: int, reference: list[list[torch.Tensor]]) -> None:
    layers = _model(PLAN, None)
    out, _ = _forward(layers, _tokens(0, rank))
    _assert_close(out, reference[0][rank], f"{rank=} before install")
    # Every rank moves both layers to the other layer's placement, copying its new slots'
    # weights from the logical experts (what the weight-transfer step will deliver).
    num_slots = PLAN.slots_per_rank(world_size)
    for layer_idx, layer in enumerate(layers):
        row = PLAN.phy2log[1 - layer_idx]
        _, w1, w2 = _layer_weights(layer_idx)
        local = row[rank * num_slots : (rank + 1) * num_slots]
        layer.install(row, [w1[e].clone() for e in local], [w2[e].clone() for e in local])
    for step in (1, 2):
        out, _ = _forward(layers, _tokens(step, rank))
        _assert_close(out, reference[step][rank], f"{rank=} {step=}")


def test_installing_a_new_placement_on_every_rank_keeps_outputs() -> None:
    run_on_ranks(_install_worker, NUM_RANKS, _reference())


def _failing_worker(rank: int, world_size: int) -> None:
    if rank == 1:
        msg = "rank 1 fails on purpose"
        raise RuntimeError(msg)


def test_a_failing_rank_fails_the_caller_with_its_traceback() -> None:
    with pytest.raises(
        torch.multiprocessing.ProcessRaisedException, match="rank 1 fails on purpose"
    ):
        run_on_ranks(_failing_worker, 2)
