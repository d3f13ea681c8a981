"""A 2-rank update through EplbUpdateManager's commit step on a W8A8 model: every table and
tensor a captured graph reads keeps its storage, int8 weights and their scales arrive bitwise,
and the outputs equal, bit for bit, those of a model built on the new placement."""

from __future__ import annotations

import numpy as np
import torch
from dist_utils import run_on_ranks, warm_operator

from eplb_native import EplbConfig, Plan
from eplb_native.runtime import EplbMoE, HeatRecorder, plan_transfers
from eplb_native.runtime.updater import EplbUpdateManager

NUM_EXPERTS, NUM_RANKS, HIDDEN, INTERMEDIATE, TOP_K, TOKENS = 4, 2, 16, 8, 2, 5
OLD = Plan.from_phy2log([[0, 1, 2, 3, 0, 1], [0, 1, 2, 3, 0, 1]], NUM_EXPERTS)
# Both layers get local slot-to-slot moves and remote arrivals on both ranks.
NEW = Plan.from_phy2log([[2, 3, 0, 1, 0, 2], [1, 0, 3, 2, 1, 0]], NUM_EXPERTS)
ROUTINGS = ("fixed", "spread")  # layer 0, layer 1


def _logical_weights(layer_idx: int) -> dict[str, list[torch.Tensor]]:
    """W8A8: int8 w1 [H, 2I] and w2 [I, H]; fp32 w1 scales [2I], bf16 w2 scales [H]."""
    gen = torch.Generator().manual_seed(10 + layer_idx)

    def codes(*shape: int) -> torch.Tensor:
        return torch.randint(-127, 128, shape, generator=gen, dtype=torch.int8)

    return {
        "w1": [codes(HIDDEN, 2 * INTERMEDIATE) for _ in range(NUM_EXPERTS)],
        "w2": [codes(INTERMEDIATE, HIDDEN) for _ in range(NUM_EXPERTS)],
        "w1_scale": [torch.rand(2 * INTERMEDIATE, generator=gen) / 200 for _ in range(NUM_EXPERTS)],
        "w2_scale": [(torch.rand(HIDDEN, generator=gen) / 200).bfloat16() for _ in range(NUM_EXPERTS)],
    }


def _router(layer_idx: int) -> torch.Tensor:
    return torch.randn(NUM_EXPERTS, HIDDEN, generator=torch.Generator().manual_seed(layer_idx)).bfloat16()


def _model(plan: Plan, heat: HeatRecorder | None) -> list[EplbMoE]:
    return [
        EplbMoE.from_logical_weights(_router(layer), plan=plan, top_k=TOP_K, moe_layer_idx=layer, heat=heat,
                                     routing=routing, **_logical_weights(layer))  # type: ignore[arg-type]
        for layer, routing in enumerate(ROUTINGS)
    ]  # fmt: skip


def _forward(layers: list[EplbMoE], step: int, rank: int) -> torch.Tensor:
    x = torch.randn(TOKENS, HIDDEN, generator=torch.Generator().manual_seed(100 * step + rank)).bfloat16()
    for layer in layers:
        x = x + layer(x)
    return x


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.contiguous().view(torch.uint8)


def _memory(layers: list[EplbMoE], heat: HeatRecorder) -> list[int]:
    """Addresses of everything a captured forward reads: routing tables, slot tensors, heat."""
    tensors = [heat.buffer(i) for i in range(len(layers))]
    for layer in layers:
        tensors += [*layer.replica_router.tables, *(t for kind in layer.experts.weight_kinds for t in kind)]
    return [t.data_ptr() for t in tensors]


def _update_worker(rank: int, world_size: int) -> None:
    heat = HeatRecorder(OLD, collection_interval=100)
    layers = _model(OLD, heat)
    manager = EplbUpdateManager(EplbConfig(), layers, heat)
    memory = _memory(layers, heat)
    assert torch.equal(_bits(_forward(layers, 0, rank)), _bits(_forward(_model(OLD, None), 0, rank)))
    manager.loader.schedule(NEW.table(world_size), [0, 1])
    step = 1
    while manager.loader.pending:
        manager.pre_forward()
        _forward(layers, step, rank)
        manager.post_forward()
        step += 1
        assert step < 20, "the update did not finish"
    assert np.array_equal(manager.table, NEW.table(world_size))
    assert _memory(layers, heat) == memory
    num_slots = NEW.slots_per_rank(world_size)
    for layer_idx, layer in enumerate(layers):
        assert layer.experts.phy2log.tolist() == NEW.phy2log[layer_idx].tolist()
        logical = _logical_weights(layer_idx)
        for slot in range(num_slots):
            expert = int(NEW.phy2log[layer_idx, rank * num_slots + slot])
            for kind, tensors in zip(("w1", "w2", "w1_scale", "w2_scale"), layer.experts.weight_kinds, strict=True):
                assert torch.equal(_bits(tensors[slot]), _bits(logical[kind][expert])), f"{rank=} {layer_idx=} {slot=} {kind}"
    fresh = _model(NEW, None)
    for step in range(20, 23):
        assert torch.equal(_bits(_forward(layers, step, rank)), _bits(_forward(fresh, step, rank))), f"{rank=} {step=}"
    expert_bytes = HIDDEN * 2 * INTERMEDIATE + INTERMEDIATE * HIDDEN + 2 * INTERMEDIATE * 4 + HIDDEN * 2
    assert manager.loader.expert_bytes == expert_bytes  # int8 weights plus their scales
    transfers = plan_transfers(OLD.table(world_size), NEW.table(world_size), rank)
    assert manager.stats.layers_applied == 2
    assert manager.stats.bytes_moved == sum(t.num_global_remote for t in transfers) * expert_bytes > 0
    manager.close()


def test_w8a8_update_keeps_storage_moves_scales_and_outputs_bitwise() -> None:
    warm_operator()
    run_on_ranks(_update_worker, NUM_RANKS)
