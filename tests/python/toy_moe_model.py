"""A small EPLB-ready model for the distributed runtime tests and the async-update benchmark:
one dense layer, then MoE layers with skewed routing whose hot experts change by phase."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from eplb_native import EplbConfig, MoeLayerMap, Plan, default_placement
from eplb_native.runtime import EplbMoE, HeatRecorder, initial_plan


@dataclass(frozen=True)
class ToyShape:
    """Model size: MoE layers, experts N, hidden H, intermediate I, top-k, tokens per rank."""

    num_moe_layers: int = 3
    num_experts: int = 8
    hidden: int = 16
    intermediate: int = 16
    top_k: int = 2
    tokens: int = 16
    num_phases: int = 2


@dataclass
class ToyWeights:
    """All logical weights, identical on every rank (seeded)."""

    dense: torch.Tensor  # [H, H]
    router: list[torch.Tensor]  # per MoE layer [N, H]
    w1: list[list[torch.Tensor]]  # [layer][expert] [H, 2I]
    w2: list[list[torch.Tensor]]  # [layer][expert] [I, H]
    hot: torch.Tensor  # [num_phases, H], the input direction of each phase


def toy_weights(shape: ToyShape, seed: int = 0) -> ToyWeights:
    """Routers align a few experts per layer with each phase's hot direction (skewed routing)."""
    gen = torch.Generator().manual_seed(seed)
    hidden, num_experts = shape.hidden, shape.num_experts
    hot = torch.nn.functional.normalize(torch.randn(shape.num_phases, hidden, generator=gen), dim=-1)
    routers = []
    for layer_idx in range(shape.num_moe_layers):
        router = 0.3 * torch.randn(num_experts, hidden, generator=gen)
        for phase in range(shape.num_phases):
            # Two hot experts per layer and phase, on the same rank in the default layout.
            first = (layer_idx + 3 * phase) % num_experts
            for expert in (first, (first + 1) % num_experts):
                router[expert] += 1.0 * hot[phase]
        routers.append(router)
    return ToyWeights(
        dense=0.2 * torch.randn(hidden, hidden, generator=gen),
        router=routers,
        w1=[[0.2 * torch.randn(hidden, 2 * shape.intermediate, generator=gen) for _ in range(num_experts)]
            for _ in range(shape.num_moe_layers)],
        w2=[[0.2 * torch.randn(shape.intermediate, hidden, generator=gen) for _ in range(num_experts)]
            for _ in range(shape.num_moe_layers)],
        hot=hot,
    )


class ToyModel(nn.Module):
    """Model layer 0 is dense (no experts); layers 1.. are EplbMoE blocks with residuals."""

    def __init__(
        self,
        shape: ToyShape,
        weights: ToyWeights,
        plan: Plan,
        heat: HeatRecorder | None,
        group: dist.ProcessGroup | None = None,
    ) -> None:
        super().__init__()
        self.layer_map = MoeLayerMap(shape.num_moe_layers + 1, tuple(range(1, shape.num_moe_layers + 1)))
        self.dense = weights.dense
        self.moe = nn.ModuleList(
            EplbMoE.from_logical_weights(
                weights.router[i], weights.w1[i], weights.w2[i], plan,
                top_k=shape.top_k, moe_layer_idx=i, heat=heat, group=group,
            )
            for i in range(shape.num_moe_layers)
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + torch.tanh(x @ self.dense)
        for block in self.moe:
            x = x + block(x)
        return x


def reference_model(shape: ToyShape, weights: ToyWeights, rank: int, world_size: int) -> ToyModel:
    """The same model without EPLB and without expert parallelism: every expert on this rank
    (a one-rank group per rank; building the groups is collective, all ranks call this)."""
    groups = [dist.new_group([r], backend="gloo") for r in range(world_size)]
    plan = default_placement(shape.num_moe_layers, shape.num_experts, 1)
    return ToyModel(shape, weights, plan, None, group=groups[rank])


def toy_replica(
    config: EplbConfig, shape: ToyShape, weights: ToyWeights, rank: int, world_size: int, **heat_args: object
) -> tuple[ToyModel, HeatRecorder, ToyModel]:
    """This rank's EPLB-ready model on ``config``'s initial placement with its heat recorder
    (``heat_args`` as HeatRecorder.from_config), and the reference model without EPLB (building
    it is collective: every rank calls this)."""
    plan = initial_plan(config, shape.num_moe_layers, shape.num_experts, world_size)
    heat = HeatRecorder.from_config(config, plan, **heat_args)
    return ToyModel(shape, weights, plan, heat), heat, reference_model(shape, weights, rank, world_size)


def toy_inputs(shape: ToyShape, weights: ToyWeights, step: int, rank: int, phase: int) -> torch.Tensor:
    """fp32 [tokens, H]: noise plus the phase's hot direction, seeded by (step, rank)."""
    gen = torch.Generator().manual_seed(1_000_003 * step + rank)
    noise = torch.randn(shape.tokens, shape.hidden, generator=gen)
    return (noise + 3.0 * weights.hot[phase]).contiguous()


def rank_par(rank_load: object) -> float:
    """PAR (busiest rank / mean rank) of a window's tokens per rank int64 [L, D], averaged over
    layers."""
    per_rank = torch.as_tensor(rank_load, dtype=torch.float64)  # [L, D]
    mean = per_rank.mean(-1)
    par = torch.where(mean > 0, per_rank.amax(-1) / mean.clamp_min(1e-12), torch.ones_like(mean))
    return float(par.mean())
