"""eplb_native's policies as vLLM EPLB policies.

vLLM (``vllm/distributed/eplb/policy/abstract.py``, ``AbstractEplbPolicy``) calls the class
method ``rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_ranks,
old_global_expert_indices=None)`` with the window's load ``weight`` [L, N] and the placement in
force ``old_global_expert_indices`` [L, P_old] (-1 in slots that elastic expert parallelism
added or emptied), and expects ``phy2log`` [L, num_replicas] as a torch.int64 CPU tensor. It
selects the class by name from ``vllm.distributed.eplb.policy.EPLB_POLICIES`` with
``--eplb-config '{"policy": "default"}'`` ("default" is the only name its config accepts), so
``register`` installs eplb_native's class under that name.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from typing import Any, ClassVar

import numpy as np

from eplb_native import _core
from eplb_native.flashlb import FlashLBOptions
from eplb_native.integrations import BY_POLICY_TYPE, policy_from_env
from eplb_native.planning import POLICY_NAMES
from eplb_native.policies import _as_numpy, rebalance_experts

logger = logging.getLogger(__name__)


class PolicyInputError(ValueError, AssertionError):
    """Bad arguments: a ValueError naming the field, as everywhere in eplb_native, and an
    AssertionError, as vLLM's own policies raise (``assert``) for the same inputs."""


class VllmPolicy:
    """An eplb_native policy with vLLM's EPLB policy interface (class methods only).

    Given the placement in force with vLLM's slot count (and no empty slot for the policies
    that edit it: swift_balancer, flashlb incremental), the plan is slot-stable: no rank holds
    an expert twice and every expert that stays on a rank keeps its slot, which subsumes vLLM's
    ``preserve_intragpu_slots`` (also offered on its own). When the slot count changed (elastic scale up or down) there
    is no slot to keep and the policy plans afresh; swift_balancer and flashlb incremental,
    which edit the placement in force, then fall back to default_eplb.

    ``policy_class(name, options)`` gives the class for another policy or options.
    """

    policy: ClassVar[str] = "default_eplb"
    options: ClassVar[Any] = None

    @classmethod
    def rebalance_experts(
        cls,
        weight: Any,
        num_replicas: int,
        num_groups: int,
        num_nodes: int,
        num_ranks: int,
        old_global_expert_indices: Any = None,
    ) -> Any:
        """vLLM's call.

        Args:
            weight: torch [L, N] tokens per logical expert over the window (any dtype/device).
            num_replicas: P physical slots (a multiple of ``num_ranks``).
            num_groups: G expert groups; num_nodes: H nodes. Hierarchical planning when H
                divides G; otherwise both are ignored (global planning), as in vLLM.
            num_ranks: D.
            old_global_expert_indices: torch int [L, P_old], the placement in force (-1: empty
                slot), or None.

        Returns:
            torch.int64 CPU tensor [L, P], the logical expert of each physical slot.

        Raises:
            PolicyInputError: bad arguments (both a ValueError and an AssertionError).
        """
        torch = importlib.import_module("torch")
        load = np.asarray(_as_numpy(weight), dtype=np.float64)
        if num_nodes <= 0 or num_groups % num_nodes:
            num_groups, num_nodes = 1, 1  # global planning: vLLM ignores both then
        name, options = cls.policy, cls.options
        edits = name == "swift_balancer" or (
            isinstance(options, FlashLBOptions) and options.incremental
        )
        current = None
        if old_global_expert_indices is not None:
            old = np.asarray(_as_numpy(old_global_expert_indices), dtype=np.int64)
            if old.shape == (load.shape[0], num_replicas):
                current = old
        if edits and (current is None or not _complete(current, load.shape[-1])):
            logger.info(
                "%s needs the complete placement in force: planning with default_eplb", name
            )
            name, options = "default_eplb", None
        try:
            plan = rebalance_experts(
                load, num_replicas, num_groups, num_nodes, num_ranks,
                policy=name, current=current, options=options,
            )  # fmt: skip
        except ValueError as error:
            raise PolicyInputError(str(error)) from error
        return torch.from_numpy(plan.phy2log.copy())


    @classmethod
    def preserve_intragpu_slots(cls, phy2log: Any, num_ranks: int, old_phy2log: Any) -> Any:
        """vLLM's step of the same name: inside each GPU (rank) of ``phy2log`` int [L, P], the
        experts ``old_phy2log`` int [L, P] (-1: empty slot) has on that GPU go back to their
        old slots; the others fill the free slots in order. Ranks stay as they are. Returns
        int64 numpy [L, P]; raises PolicyInputError on mismatched shapes."""
        new = np.asarray(_as_numpy(phy2log), dtype=np.int64)
        old = np.asarray(_as_numpy(old_phy2log), dtype=np.int64)
        try:
            kept: Any = _core.keep_slots(new, old, num_ranks)
        except ValueError as error:
            raise PolicyInputError(str(error)) from error
        return kept


def _complete(table: Any, num_experts: int) -> bool:
    """Whether every row of phy2log ``table`` [L, P] holds every expert and no empty slot."""
    return bool((table >= 0).all()) and all(np.unique(row).size == num_experts for row in table)


def policy_class(name: str, options: Any = None) -> type[VllmPolicy]:
    """A VllmPolicy subclass running policy ``name`` with ``options`` (ValueError listing the
    valid names when ``name`` is unknown)."""
    if name not in POLICY_NAMES:
        msg = f"policy: unknown policy {name!r}; valid policies: {', '.join(POLICY_NAMES)}"
        raise ValueError(msg)
    return type(f"EplbNative_{name}", (VllmPolicy,), {"policy": name, "options": options})


def register(policy: str) -> None:
    """Installs the vLLM class of ``policy`` (a name) as vLLM's ``default`` EPLB policy."""
    vllm_policy = importlib.import_module("vllm.distributed.eplb.policy")  # the engine

    vllm_policy.EPLB_POLICIES["default"] = policy_class(policy)
    logger.info("vLLM EPLB policy 'default': eplb_native policy %s", policy)


def plugin() -> None:
    """vLLM general plugin (entry point ``vllm.general_plugins``), run in every vLLM process:
    installs the policy ``EPLB_NATIVE_POLICY`` names into vLLM's EPLB and, when vllm-ascend is
    installed, into vllm-ascend's policy factory; does nothing when the variable is unset."""
    choice = policy_from_env()
    if choice is None:
        return
    has_ascend = importlib.util.find_spec("vllm_ascend") is not None
    if has_ascend:
        from eplb_native.integrations import vllm_ascend

        vllm_ascend.register(choice)
    if choice != BY_POLICY_TYPE:
        register(choice)
    elif not has_ascend:
        logger.warning("EPLB_NATIVE_POLICY=%s needs vllm-ascend; vLLM's EPLB policy is unchanged", choice)


__all__ = ["PolicyInputError", "VllmPolicy", "plugin", "policy_class", "register"]
