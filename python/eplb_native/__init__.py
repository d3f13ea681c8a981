"""eplb_native: an Expert Parallelism Load Balancer for Mixture-of-Experts inference.

Planning needs numpy only; the runtime (``eplb_native.runtime``) and the operator
(``eplb_native.ops``) need torch and are imported on demand.
"""

from __future__ import annotations

import importlib.util

from eplb_native._core import __version__
from eplb_native.config import EplbConfig
from eplb_native.expert_map import load_expert_map, save_expert_map
from eplb_native.flashlb import FlashLBOptions, PlannedBalance, plan_flashlb, select_layers
from eplb_native.layers import MoeLayerMap
from eplb_native.metrics import (
    PlanStats,
    count_weight_copies,
    evaluate,
    lower_bound_max_load,
    mean_par,
    peak_to_average,
)
from eplb_native.plan import (
    Plan,
    default_placement,
    expert_load_from_slot_load,
    placement_violations,
    rank_expert_maps,
    rank_loads,
    rank_log2phy,
    slot_load_from_expert_load,
    validate_plan,
)
from eplb_native.planning import POLICY_NAMES, PlanOutcome, PlanRequest, PolicyName, propose
from eplb_native.policies import (
    POLICIES,
    EplbPolicy,
    FlashLBPolicy,
    PolicyFn,
    SwiftBalancerOptions,
    make_policy,
    rebalance_experts,
)
from eplb_native.routing import REPLICA_ROUTINGS, ReplicaRouting, rank_loads_under_routing


def npu_available() -> bool:
    """True when the Ascend NPU implementation of ``fused_moe_decode`` is usable: torch_npu
    imports and the kernels library built with CANN sits beside the package. Imports torch (and
    then torch_npu) only when called; False without torch."""
    if importlib.util.find_spec("torch") is None:
        return False
    try:
        from eplb_native import ops
    except RuntimeError:
        # torch itself fails to import when a torch_npu without CANN auto-registers its backend.
        return False
    return ops.npu_available()


__all__ = [
    "POLICIES",
    "POLICY_NAMES",
    "REPLICA_ROUTINGS",
    "EplbConfig",
    "EplbPolicy",
    "FlashLBOptions",
    "FlashLBPolicy",
    "MoeLayerMap",
    "Plan",
    "PlanOutcome",
    "PlanRequest",
    "PlanStats",
    "PlannedBalance",
    "PolicyFn",
    "PolicyName",
    "ReplicaRouting",
    "SwiftBalancerOptions",
    "__version__",
    "count_weight_copies",
    "default_placement",
    "evaluate",
    "expert_load_from_slot_load",
    "load_expert_map",
    "lower_bound_max_load",
    "make_policy",
    "mean_par",
    "npu_available",
    "peak_to_average",
    "placement_violations",
    "plan_flashlb",
    "propose",
    "rank_expert_maps",
    "rank_loads",
    "rank_loads_under_routing",
    "rank_log2phy",
    "rebalance_experts",
    "save_expert_map",
    "select_layers",
    "slot_load_from_expert_load",
    "validate_plan",
]
