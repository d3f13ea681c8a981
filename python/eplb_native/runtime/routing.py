"""ReplicaRouter: one MoE layer's logical -> physical routing on one rank, from tables that keep
their storage across placement updates (CUDA / ACL graphs keep reading the same memory)."""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt
import torch

from eplb_native.checks import check_int, check_positive_int
from eplb_native.plan import Plan, layer_plan, rank_expert_maps, rank_log2phy
from eplb_native.routing import ReplicaRouting, check_routing

logger = logging.getLogger(__name__)


class ReplicaRouter:
    """Maps logical expert ids to global physical slots for one layer on one rank.

    Example (3 ranks of 2 slots; rank 2 holds experts 3 and 1, expert 0 sits on slots 0 and 3):
        >>> import torch
        >>> ids = torch.tensor([[0, 1], [0, 1], [0, 2], [0, 3]])  # [BS=4, K=2] logical
        >>> ReplicaRouter([0, 1, 2, 0, 3, 1], 4, rank=2, num_ranks=3, routing="spread").route(ids).tolist()
        [[0, 5], [3, 5], [0, 2], [3, 4]]
        >>> ReplicaRouter([0, 1, 2, 0, 3, 1], 4, rank=2, num_ranks=3, routing="fixed").route(ids).tolist()
        [[0, 5], [0, 5], [0, 2], [0, 4]]

    The rules are ``eplb_native.routing``'s (``fixed`` or ``spread``). ``route`` is fixed-shape
    and sync-free: gathers and a modulo on device tables, so it runs on the ``meta`` device,
    traces with ``torch.compile(fullgraph=True)`` and can be captured in a CUDA graph.

    The tables are allocated once, sized for any placement of the layer (an expert has at most
    ``P - N + 1`` replicas), and ``load`` copies a new placement's values into them in place.

    Attributes:
        expert_map: int64 [N], the local slot (0..S-1) of each expert on this rank, -1 if none.
        log2phy: int64 [N], the ``fixed`` rule's slot for each expert (``rank_log2phy``).
        replicas: int64 [N, P - N + 1], each expert's slots in ascending order, -1 padded.
        replica_count: int64 [N], replicas of each expert (>= 1).
    """

    def __init__(
        self,
        phy2log_row: npt.ArrayLike,
        num_experts: int,
        *,
        rank: int,
        num_ranks: int,
        routing: ReplicaRouting = "fixed",
        device: torch.device | str = "cpu",
    ) -> None:
        """
        Args:
            phy2log_row: int [P], the layer's placement.
            num_experts: N.
            rank, num_ranks: this rank and D.
            routing: ``fixed`` or ``spread``.
            device: where the tables live (the device the layer runs on).
        """
        self.routing = check_routing(routing)
        self.rank, self.num_ranks = check_int(rank, "rank", minimum=0, below=num_ranks), num_ranks
        check_positive_int(num_experts, "num_experts")
        row = np.asarray(phy2log_row)
        num_physical = int(row.shape[-1]) if row.ndim else 0
        if num_physical < num_experts:
            msg = f"phy2log_row: expected at least N={num_experts} slots, got {num_physical}"
            raise ValueError(msg)
        self.num_slots = num_physical // num_ranks
        width = num_physical - num_experts + 1
        self.expert_map = torch.full((num_experts,), -1, dtype=torch.int64, device=device)
        self.log2phy = torch.zeros(num_experts, dtype=torch.int64, device=device)
        self.replicas = torch.full((num_experts, width), -1, dtype=torch.int64, device=device)
        self.replica_count = torch.ones(num_experts, dtype=torch.int64, device=device)
        self.load(row)

    @property
    def tables(self) -> tuple[torch.Tensor, ...]:
        """Every table ``route`` reads (their storage never changes)."""
        return (self.expert_map, self.log2phy, self.replicas, self.replica_count)

    def load(self, phy2log_row: Plan | npt.ArrayLike) -> None:
        """Copies a new placement's tables in place (validated first; on error nothing changes).

        Args:
            phy2log_row: int [P], the layer's new placement (same P and N as before), or its
                ``layer_plan``.
        """
        num_experts, width = self.replicas.shape
        plan = layer_plan(phy2log_row, num_experts, self.num_ranks)
        if plan.num_physical != num_experts + width - 1:
            msg = f"phy2log_row: expected {num_experts + width - 1} slots, got {plan.num_physical}"
            raise ValueError(msg)
        replicas = np.full((num_experts, width), -1, dtype=np.int64)
        replicas[:, : plan.log2phy.shape[2]] = plan.log2phy[0]
        values = (
            rank_expert_maps(plan, self.num_ranks)[self.rank, 0],
            rank_log2phy(plan, self.num_ranks)[self.rank, 0],
            replicas,
            plan.logcnt[0],
        )
        for table, value in zip(self.tables, values, strict=True):
            table.copy_(torch.tensor(np.asarray(value, dtype=np.int64)))  # plan maps are read-only

    def route(self, logical_ids: torch.Tensor) -> torch.Tensor:
        """The global physical slot of each routed pair.

        Args:
            logical_ids: integer [BS, ...] (e.g. [BS, K] top-k ids) in [0, N); dimension 0 is
                the token row ``t`` the ``spread`` rule uses.

        Returns:
            int64, the shape of ``logical_ids``: physical slot ids in [0, P).
        """
        ids = logical_ids.long()
        if self.routing == "fixed":
            return self.log2phy[ids]
        rows = torch.arange(ids.shape[0], device=ids.device).view(-1, *([1] * (ids.dim() - 1)))
        pick = torch.remainder(rows + self.rank + ids, self.replica_count[ids])
        local = self.expert_map[ids]
        return torch.where(local >= 0, local + self.rank * self.num_slots, self.replicas[ids, pick])


__all__ = ["ReplicaRouter"]
