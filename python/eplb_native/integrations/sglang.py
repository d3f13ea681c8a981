"""eplb_native's policies as SGLang's EPLB algorithm.

SGLang (``sglang/srt/eplb/eplb_algorithms/__init__.py``) plans with
``rebalance_experts(tokens_per_expert, num_physical_experts, num_local_physical_experts,
num_groups, num_nodes, algorithm)``: ``tokens_per_expert`` [T, L, N] tokens per logical expert
over T recorded steps, ``num_groups`` None for models without expert groups, and ``algorithm`` an
``EplbAlgorithm`` (``deepseek``, ``deepseek_hierarchical``, ``deepseek_vec``...); the caller
moves the three results to its device with ``.to(device)``. ``register`` hooks eplb_native in
front of that function through SGLang's plugin hook registry; SGLang's elasticity-aware
algorithms, which need its live rank state, still run SGLang's own code.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

import numpy as np

from eplb_native.checks import check_divisor
from eplb_native.integrations import BY_POLICY_TYPE, POLICY_ENV, policy_from_env
from eplb_native.policies import _as_numpy
from eplb_native.policies import rebalance_experts as plan_experts

logger = logging.getLogger(__name__)

#: The SGLang function eplb_native stands in for.
TARGET = "sglang.srt.eplb.eplb_algorithms.rebalance_experts"
#: SGLang's DeepSeek algorithms, which eplb_native replaces; their ``_hierarchical`` forms plan
#: groups onto nodes first.
ALGORITHMS = ("deepseek", "deepseek_hierarchical", "deepseek_vec", "deepseek_vec_hierarchical")


def rebalance_experts(
    tokens_per_expert: Any,
    num_physical_experts: int,
    num_local_physical_experts: int,
    num_groups: int | None,
    num_nodes: int,
    algorithm: Any = None,
    *,
    policy: str = "default_eplb",
    options: Any = None,
) -> tuple[Any, Any, Any]:
    """SGLang's call, planned by the eplb_native policy ``policy``.

    Args:
        tokens_per_expert: torch [T, L, N] (or [L, N]) tokens per logical expert; flashlb
            reads the T steps as its history, the others plan from their sum.
        num_physical_experts: P; num_local_physical_experts: S slots per rank (D = P / S).
        num_groups: G expert groups, or None (no groups).
        num_nodes: H nodes.
        algorithm: an ``EplbAlgorithm`` or its name among ``ALGORITHMS``; None picks as
            SGLang's ``auto`` does (hierarchical when G is given and H divides it). Global
            planning ignores G and H, as SGLang does.
        policy: an eplb_native policy that plans without the placement in force (default_eplb,
            flashlb, random).
        options: that policy's options dataclass, or None.

    Returns:
        (physical_to_logical_map int64 [L, P], logical_to_all_physical_map int64
        [L, N, max_replicas] (-1 padded), expert_count int64 [L, N]), torch tensors on
        ``tokens_per_expert``'s device.
    """
    name = getattr(algorithm, "name", algorithm)
    if name is None:
        hierarchical = num_groups is not None and num_groups % num_nodes == 0
    elif name in ALGORITHMS:
        hierarchical = name.endswith("_hierarchical")
    else:
        msg = f"algorithm: eplb_native plans {', '.join(ALGORITHMS)}, got {name!r}"
        raise ValueError(msg)
    if hierarchical and (num_groups is None or num_nodes <= 0 or num_groups % num_nodes):
        msg = (
            f"num_groups: hierarchical planning needs expert groups that split evenly over "
            f"{num_nodes} nodes, got {num_groups}"
        )
        raise ValueError(msg)
    check_divisor(num_local_physical_experts, "num_local_physical_experts", num_physical_experts,
                  f"num_physical_experts={num_physical_experts}")
    tokens = np.asarray(_as_numpy(tokens_per_expert), dtype=np.float64)
    history = tokens if tokens.ndim == 3 and policy == "flashlb" else None
    load = tokens.sum(axis=0) if tokens.ndim == 3 else tokens
    groups, nodes = (num_groups, num_nodes) if hierarchical and num_groups else (1, 1)
    plan = plan_experts(
        load, num_physical_experts, groups, nodes,
        num_physical_experts // num_local_physical_experts,
        policy=policy, history=history, options=options,
    )  # fmt: skip
    torch = importlib.import_module("torch")
    device = tokens_per_expert.device
    phy2log, log2phy, logcnt = (torch.from_numpy(array.copy()).to(device) for array in plan)
    return phy2log, log2phy, logcnt


def register(policy: str) -> None:
    """Puts eplb_native's ``policy`` in front of SGLang's EPLB algorithm function (a hook in
    SGLang's plugin registry, applied by SGLang after its plugins load). SGLang passes no
    placement in force, so swift_balancer cannot run there (ValueError)."""
    if policy == "swift_balancer":
        msg = (
            f"{POLICY_ENV}: swift_balancer improves the placement in force, which SGLang's "
            "algorithm call does not pass; use default_eplb or flashlb"
        )
        raise ValueError(msg)
    hooks = importlib.import_module("sglang.srt.plugins.hook_registry")  # the engine

    def around(original: Any, *args: Any, **kwargs: Any) -> Any:
        algorithm = kwargs.get("algorithm", args[5] if len(args) > 5 else None)
        if getattr(algorithm, "name", algorithm) not in ALGORITHMS:
            return original(*args, **kwargs)  # elasticity-aware: SGLang's own
        return rebalance_experts(*args, **kwargs, policy=policy)

    hooks.HookRegistry.register(TARGET, around, hooks.HookType.AROUND)
    logger.info("SGLang EPLB algorithm: eplb_native policy %s", policy)


def plugin() -> None:
    """SGLang general plugin (entry point ``sglang.srt.plugins``), run in every SGLang process:
    registers the policy ``EPLB_NATIVE_POLICY`` names; does nothing when it is unset."""
    choice = policy_from_env()
    if choice is None:
        return
    if choice == BY_POLICY_TYPE:
        msg = f"{POLICY_ENV}: {BY_POLICY_TYPE} is vllm-ascend's selector; name a policy for SGLang"
        raise ValueError(msg)
    register(choice)


__all__ = ["ALGORITHMS", "TARGET", "plugin", "rebalance_experts", "register"]
