"""The transformers adapter: EplbMoE reproduces Qwen3-MoE / Mixtral sparse blocks and logits."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from dist_utils import run_on_ranks

pytest.importorskip("transformers", reason="the adapter test needs transformers")

from transformers import MixtralConfig, MixtralForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM

import eplb_native
from eplb_native import Plan
from eplb_native.runtime import EplbMoE, HeatRecorder
from eplb_native.runtime.hf_adapter import moe_layer_map, wrap_moe_blocks

HIDDEN, VOCAB = 16, 64


def _qwen3(norm_topk_prob: bool) -> torch.nn.Module:
    # Layer 0 is dense (mlp_only_layers), layers 1 and 2 are sparse.
    config = Qwen3MoeConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=24, moe_intermediate_size=8,
        num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
        num_experts=8, num_experts_per_tok=2, norm_topk_prob=norm_topk_prob, mlp_only_layers=[0],
        max_position_embeddings=64,
    )  # fmt: skip
    return _randomised(Qwen3MoeForCausalLM(config))


def _mixtral() -> torch.nn.Module:
    config = MixtralConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=8, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8, num_local_experts=4,
        num_experts_per_tok=2, max_position_embeddings=64,
    )  # fmt: skip
    return _randomised(MixtralForCausalLM(config))


def _randomised(model: torch.nn.Module) -> torch.nn.Module:
    # The default init (std 0.02) makes expert outputs tiny; larger weights make the
    # comparison meaningful. Fixed seed, no download.
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
    return model.eval()


_MODELS = {
    "qwen3_norm_topk": lambda: _qwen3(True),
    "qwen3_raw_topk": lambda: _qwen3(False),
    "mixtral": _mixtral,
}


@pytest.mark.parametrize("name", list(_MODELS))
def test_each_block_equals_the_original_sparse_block(name: str) -> None:
    model = _MODELS[name]()
    layer_map = moe_layer_map(model)
    originals = [copy.deepcopy(model.model.layers[i].mlp) for i in layer_map.moe_layer_ids]
    blocks = wrap_moe_blocks(model)
    x = torch.randn(2, 5, HIDDEN, generator=torch.Generator().manual_seed(1))
    for moe_idx, (original, block) in enumerate(zip(originals, blocks, strict=True)):
        assert model.model.layers[layer_map.moe_layer_ids[moe_idx]].mlp is block
        with torch.no_grad():
            want = original(x)
        torch.testing.assert_close(
            block(x), want, rtol=1e-5, atol=1e-6, msg=lambda m, i=moe_idx: f"{name} layer {i}: {m}"
        )


@pytest.mark.parametrize("name", list(_MODELS))
def test_model_logits_unchanged_with_redundant_slots(name: str) -> None:
    model = _MODELS[name]()
    input_ids = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = model(input_ids).logits
    layer_map = moe_layer_map(model)
    num_experts = model.model.layers[layer_map.moe_layer_ids[0]].mlp.experts.num_experts
    plan = eplb_native.default_placement(
        layer_map.num_moe_layers, num_experts, 1, num_redundant_experts=2
    )
    heat = HeatRecorder(plan, collection_interval=1, layer_map=layer_map)
    wrap_moe_blocks(model, plan, heat=heat)
    with torch.no_grad():
        got = model(input_ids).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    window = heat.step()
    assert window is not None
    top_k = model.config.num_experts_per_tok
    assert np.array_equal(
        window.counts.sum(axis=-1), np.full((1, layer_map.num_moe_layers), 12 * top_k)
    )


def test_dense_layers_are_left_alone_and_mapped() -> None:
    model = _qwen3(True)
    dense_mlp = model.model.layers[0].mlp
    layer_map = moe_layer_map(model)
    assert layer_map.moe_layer_ids == (1, 2)
    assert layer_map.dense_layer_ids == (0,)
    blocks = wrap_moe_blocks(model)
    assert model.model.layers[0].mlp is dense_mlp
    assert [block.moe_layer_idx for block in blocks] == [0, 1]
    assert all(isinstance(block, EplbMoE) for block in blocks)


def test_bad_plan_or_model_raises() -> None:
    model = _mixtral()
    with pytest.raises(ValueError, match="plan"):
        wrap_moe_blocks(model, Plan.from_phy2log([[0, 1, 2, 3]], 4))  # one layer, model has two
    with pytest.raises(TypeError, match="model"):
        wrap_moe_blocks(torch.nn.Linear(2, 2))


def _two_rank_worker(rank: int, world_size: int, model: torch.nn.Module, inputs, want) -> None:
    layer_map = moe_layer_map(model)
    plan = eplb_native.default_placement(layer_map.num_moe_layers, 8, world_size, 2)  # S = 5
    blocks = wrap_moe_blocks(model, plan)
    assert [len(block.experts.w1) for block in blocks] == [5, 5]
    with torch.no_grad():
        got = model(inputs[rank]).logits
    # Not torch.testing.assert_close: it imports torch.distributed.tensor once dist is up (slow).
    diff = (got - want[rank]).abs().max().item()
    assert torch.allclose(got, want[rank], rtol=1e-5, atol=1e-5), f"{rank=} max abs diff {diff}"


def test_two_ranks_split_the_experts_and_keep_the_logits() -> None:
    model = _qwen3(True)
    gen = torch.Generator().manual_seed(3)
    inputs = [torch.randint(0, VOCAB, (1, 4 + rank), generator=gen) for rank in range(2)]
    with torch.no_grad():
        want = [model(ids).logits for ids in inputs]
    run_on_ranks(_two_rank_worker, 2, model, inputs, want)
