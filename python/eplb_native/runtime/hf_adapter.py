"""Hugging Face transformers adapter: replaces the sparse MoE blocks of a Qwen3-MoE or Mixtral
model by ``EplbMoE`` blocks holding the same weights on this rank's physical slots."""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from eplb_native.layers import MoeLayerMap
from eplb_native.plan import Plan, default_placement
from eplb_native.runtime._dist import group_rank_and_size
from eplb_native.runtime.heat import HeatRecorder
from eplb_native.runtime.moe import EplbMoE

logger = logging.getLogger(__name__)


def _sparse_block_types() -> tuple[type[nn.Module], ...]:
    try:
        from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock
        from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock
    except ImportError as error:
        msg = (
            "eplb_native.runtime.hf_adapter needs transformers >= 5: pip install 'transformers>=5'"
        )
        raise ImportError(msg) from error
    return (Qwen3MoeSparseMoeBlock, MixtralSparseMoeBlock)


def _decoder_layers(model: nn.Module) -> nn.ModuleList:
    """``model.model.layers`` (a ...ForCausalLM) or ``model.layers`` (the base model)."""
    base = getattr(model, "model", model)
    layers = getattr(base, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        got = type(model).__name__
        msg = f"model: expected a Qwen3-MoE or Mixtral model with decoder layers, got {got}"
        raise TypeError(msg)
    return layers


def moe_layer_map(model: nn.Module) -> MoeLayerMap:
    """Which decoder layers of ``model`` hold a sparse MoE block (the others are dense)."""
    block_types = _sparse_block_types()
    layers = _decoder_layers(model)
    return MoeLayerMap.from_mask(
        [isinstance(getattr(layer, "mlp", None), block_types) for layer in layers]
    )


def wrap_moe_blocks(
    model: nn.Module,
    plan: Plan | None = None,
    *,
    heat: HeatRecorder | None = None,
    group: dist.ProcessGroup | None = None,
) -> list[EplbMoE]:
    """Replaces every Qwen3-MoE / Mixtral sparse block of ``model`` (in place) by an ``EplbMoE``.

    Example:
        >>> from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM
        >>> from eplb_native.runtime.hf_adapter import wrap_moe_blocks
        >>> config = Qwen3MoeConfig(vocab_size=32, hidden_size=16, moe_intermediate_size=8,
        ...     num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
        ...     num_experts=4, num_experts_per_tok=2)
        >>> model = Qwen3MoeForCausalLM(config).eval()
        >>> [type(block).__name__ for block in wrap_moe_blocks(model)]
        ['EplbMoE', 'EplbMoE']

    The router weight, top-k and renormalisation (Qwen3 ``norm_topk_prob``; Mixtral always)
    are kept; the stacked expert parameters ``gate_up_proj`` [N, 2I, H] and ``down_proj``
    [N, H, I] are cut into one ``w1`` [H, 2I] and one ``w2`` [I, H] tensor per local slot.

    Args:
        model: a transformers 5.x Qwen3-MoE or Mixtral model (ForCausalLM or base), SiLU experts.
        plan: placement of the L MoE layers (``moe_layer_map(model)`` order); default: every
            expert once, in order, over the group's ranks.
        heat: recorder the blocks count their slot loads into (its plan must be ``plan``).
        group: the expert-parallel process group (None: default group, or single process).

    Returns:
        The new blocks, indexed by MoE layer.
    """
    layer_map = moe_layer_map(model)
    layers = _decoder_layers(model)
    first: Any = layers[layer_map.moe_layer_ids[0]].mlp  # a transformers sparse block
    num_experts = int(first.experts.num_experts)
    config = getattr(model, "config", None)
    hidden_act = getattr(config, "hidden_act", "silu")
    if hidden_act != "silu":
        msg = f"model: experts use {hidden_act!r}, the operator implements SwiGLU (silu) only"
        raise ValueError(msg)
    _, num_ranks = group_rank_and_size(group)
    if plan is None:
        plan = default_placement(layer_map.num_moe_layers, num_experts, num_ranks)
    if (plan.num_layers, plan.num_experts) != (layer_map.num_moe_layers, num_experts):
        msg = (
            f"plan: expected {layer_map.num_moe_layers} MoE layers of {num_experts} experts, "
            f"got {plan.num_layers} layers of {plan.num_experts}"
        )
        raise ValueError(msg)
    blocks = []
    for moe_idx, model_idx in enumerate(layer_map.moe_layer_ids):
        sparse: Any = layers[model_idx].mlp
        experts, router = sparse.experts, sparse.gate
        with torch.no_grad():
            w1 = [experts.gate_up_proj[e].t() for e in range(num_experts)]  # [H, 2I] views
            w2 = [experts.down_proj[e].t() for e in range(num_experts)]  # [I, H] views
            block = EplbMoE.from_logical_weights(
                router.weight,
                w1,
                w2,
                plan,
                top_k=int(router.top_k),
                renormalize=bool(getattr(router, "norm_topk_prob", True)),
                moe_layer_idx=moe_idx,
                heat=heat,
                group=group,
            )
        layers[model_idx].mlp = block
        blocks.append(block)
    logger.info(
        "replaced %d sparse MoE blocks (%d experts, %d ranks, %d slots per rank); dense layers: %s",
        len(blocks),
        num_experts,
        num_ranks,
        plan.slots_per_rank(num_ranks),
        list(layer_map.dense_layer_ids),
    )
    return blocks
