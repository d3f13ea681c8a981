"""Replica routing: which replica serves the tokens each rank sends to a logical expert, and the
rank loads that follow, as the runtime routes them (``runtime.routing.ReplicaRouter``).

Two rules, both fixed-shape at run time (no host sync, so CUDA / ACL graphs can capture them):

- ``fixed``: every rank sends all its tokens of expert ``e`` to one replica, its own when it
  holds one, else the one ``rank_log2phy`` assigns (remote ranks spread over the replicas so that
  the ranks each replica serves differ by at most one);
- ``spread``: a rank holding ``e`` keeps its tokens on its own replica (the slot of its
  ``expert_map``); a rank that does not spreads them over all replicas of ``e``: token row ``t``
  of its batch goes to replica ``(t + rank + e) % logcnt[e]`` (vLLM spreads by the flat token
  position modulo the replica count, vllm-ascend through a 1024-row table of the same kind; the
  local preference is this package's). Over a batch each replica then gets an equal share.

The simulator scores placements under both (``rank_loads_under_routing``), assuming each
expert's tokens come from the D ranks in equal parts unless the per-source split is given.
Names: ``L`` layers, ``N`` logical experts, ``D`` ranks, ``S`` slots per rank.
"""

from __future__ import annotations

import logging
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt

from eplb_native.checks import FloatArray
from eplb_native.plan import Plan, rank_log2phy

logger = logging.getLogger(__name__)

ReplicaRouting = Literal["fixed", "spread"]
REPLICA_ROUTINGS: tuple[str, ...] = get_args(ReplicaRouting)


def check_routing(routing: object, field: str = "routing") -> ReplicaRouting:
    """``routing`` when it names a rule; ValueError naming ``field`` otherwise."""
    if routing not in REPLICA_ROUTINGS:
        msg = f"{field}: expected one of {', '.join(REPLICA_ROUTINGS)}, got {routing!r}"
        raise ValueError(msg)
    name: ReplicaRouting = routing  # type: ignore[assignment]  # checked above
    return name


def routing_fractions(plan: Plan, num_ranks: int, routing: str) -> FloatArray:
    """The share of each source rank's tokens of each expert that each rank processes.

    Args:
        plan: the placement (P a multiple of ``num_ranks``).
        num_ranks: D.
        routing: ``fixed`` or ``spread`` (module docstring).

    Returns:
        float64 [D, L, N, D]: ``[r, l, e, d]`` is the expected fraction of the tokens rank
        ``r`` routes to expert ``e`` in layer ``l`` that rank ``d``'s slots process (each
        ``[r, l, e, :]`` sums to 1).
    """
    check_routing(routing)
    num_slots = plan.slots_per_rank(num_ranks)
    num_layers, num_experts = plan.num_layers, plan.num_experts
    ranks = np.arange(num_ranks)
    if routing == "fixed":
        dest = rank_log2phy(plan, num_ranks) // num_slots  # [D, L, N]
        fixed: FloatArray = (dest[..., None] == ranks).astype(np.float64)
        return fixed
    table = plan.table(num_ranks)  # [L, D, S]
    held = np.zeros((num_layers, num_ranks, num_experts), dtype=np.float64)  # replicas on rank d
    np.add.at(held, (np.arange(num_layers)[:, None, None], ranks[None, :, None], table), 1.0)
    shares = held.transpose(0, 2, 1) / plan.logcnt[:, :, None]  # [L, N, D]: even over replicas
    own = np.eye(num_ranks)[:, None, None, :]  # [D_src, 1, 1, D]: all on the source rank
    holds = (held > 0).transpose(1, 0, 2)[..., None]  # [D_src, L, N, 1]
    spread: FloatArray = np.where(holds, own, shares[None])
    return spread


def rank_loads_under_routing(
    plan: Plan,
    load: npt.ArrayLike,
    num_ranks: int,
    routing: str,
    *,
    by_source: bool = False,
) -> FloatArray:
    """Tokens each rank processes under a routing rule.

    Args:
        plan: the placement.
        load: float [..., L, N], tokens routed to each logical expert, taken to come from the D
            ranks in equal parts; with ``by_source``, float [..., D, L, N], the tokens each
            source rank routed to each expert.
        num_ranks: D.
        routing: ``fixed`` or ``spread``.

    Returns:
        float64 [..., L, D], tokens per rank (expected values: the runtime's spreading splits a
        rank's tokens of one expert exactly evenly only when their rows cover every residue
        modulo the replica count equally).
    """
    fractions = routing_fractions(plan, num_ranks, routing)  # [D, L, N, D]
    values = np.asarray(load, dtype=np.float64)
    expected = (num_ranks, *plan.logcnt.shape) if by_source else plan.logcnt.shape
    if values.ndim < len(expected) or values.shape[-len(expected) :] != tuple(expected):
        dims = "D, L, N" if by_source else "L, N"
        msg = f"load: expected [..., {dims}] = [..., {', '.join(map(str, expected))}], got {values.shape}"
        raise ValueError(msg)
    if by_source:
        loads: FloatArray = np.einsum("...rln,rlnd->...ld", values, fractions)
        return loads
    uniform: FloatArray = np.einsum("...ln,lnd->...ld", values, fractions.mean(axis=0))
    return uniform


__all__ = [
    "REPLICA_ROUTINGS",
    "ReplicaRouting",
    "check_routing",
    "rank_loads_under_routing",
    "routing_fractions",
]
