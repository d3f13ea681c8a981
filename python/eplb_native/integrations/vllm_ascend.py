"""eplb_native's policies behind vllm-ascend's EPLB policy contract.

vllm-ascend's EPLB worker (``vllm_ascend/eplb/core/eplb_worker.py``) builds its policy with
``PolicyFactory.generate_policy(eplb_policy_type)`` and calls
``policy.rebalance_experts(current_expert_table, expert_workload)`` with torch tensors:
``current_expert_table`` int [L, D, S] and ``expert_workload`` [L, D, S] tokens per slot, or
[T, L, D, S] per stage when ``eplb_policy_type`` is 3. It reverts any layer of the returned
table that loses an expert, holds an expert twice on a rank, or moves an expert that stays on
a rank to another slot (``EplbWorker.check_expert_placement``); eplb_native's stateful policies
keep those rules (``placement_violations``). ``register`` points the factory at eplb_native.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

import numpy.typing as npt

from eplb_native.checks import IntArray
from eplb_native.integrations import BY_POLICY_TYPE
from eplb_native.planning import POLICY_IDS
from eplb_native.policies import EplbPolicy, make_policy

logger = logging.getLogger(__name__)


class VllmAscendPolicy:
    """The eplb_native policy ``name`` as a vllm-ascend EPLB policy.

    Example::

        policy = VllmAscendPolicy("swift_balancer")
        changed, priority, new_table = policy.rebalance_experts(table, workload)

    Args:
        name: a policy name (``config.POLICY_NAMES``).
        options: the policy's options dataclass, or None for its defaults.
        num_threads: planner threads (0: all cores).
    """

    def __init__(self, name: str, options: Any = None, num_threads: int = 0) -> None:
        self.policy: EplbPolicy = make_policy(name, options=options, num_threads=num_threads)

    def rebalance_experts(
        self, current_expert_table: npt.ArrayLike, expert_workload: npt.ArrayLike
    ) -> tuple[bool, IntArray, IntArray]:
        """vllm-ascend's call.

        Args:
            current_expert_table: int [L, D, S] (torch or numpy), the expert in each slot now.
            expert_workload: [L, D, S] or [T, L, D, S], tokens each slot handled.

        Returns:
            (changed, layers int64 [k] by priority, new_table int64 [L, D, S]); layers not
            listed keep their row.
        """
        return self.policy.rebalance(current_expert_table, expert_workload)


def register(policy: str) -> None:
    """Makes vllm-ascend's ``PolicyFactory.generate_policy(policy_type)`` return eplb_native's
    policies: ``policy`` (a name) for every ``policy_type``, or with ``policy ==
    BY_POLICY_TYPE`` the policy whose id is ``policy_type`` (0 random, 1 default_eplb,
    2 swift_balancer, 3 flashlb). Needs vllm-ascend installed."""
    policy_factory = importlib.import_module("vllm_ascend.eplb.core.policy.policy_factory")

    def generate_policy(policy_type: int) -> VllmAscendPolicy:
        name = POLICY_IDS.get(policy_type) if policy == BY_POLICY_TYPE else policy
        if name is None:
            msg = f"eplb_policy_type: unknown id {policy_type!r}; valid ids: {sorted(POLICY_IDS)}"
            raise ValueError(msg)
        logger.info("vllm-ascend eplb_policy_type %s: eplb_native policy %s", policy_type, name)
        return VllmAscendPolicy(name)

    policy_factory.PolicyFactory.generate_policy = staticmethod(generate_policy)


__all__ = ["VllmAscendPolicy", "register"]
