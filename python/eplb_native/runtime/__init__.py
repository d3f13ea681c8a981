"""The torch side of eplb_native: heat recording and the EPLB-ready MoE layer.

Importing this package needs torch; ``import eplb_native`` alone does not.
"""

from __future__ import annotations

try:
    import torch  # noqa: F401
except ImportError as error:
    msg = "eplb_native.runtime needs torch: pip install 'eplb-native[torch]'"
    raise ImportError(msg) from error

from eplb_native.runtime.heat import HeatRecorder, HeatWindow
from eplb_native.runtime.heat_dump import HeatDump
from eplb_native.runtime.loader import LayerUpdate, WeightLoader
from eplb_native.runtime.moe import EplbMoE, RankExperts
from eplb_native.runtime.routing import ReplicaRouter
from eplb_native.runtime.telemetry import EplbStats, PrometheusCollector
from eplb_native.runtime.transfer import LayerTransfers, plan_transfers
from eplb_native.runtime.updater import EplbUpdateManager, initial_plan
from eplb_native.runtime.worker import PlanFailure, PlannerWorker, PlanResult

__all__ = ["EplbMoE", "HeatRecorder", "HeatWindow", "RankExperts", "ReplicaRouter"]
# The dynamic EPLB loop: transfer planning, weight loading, planner worker, update manager.
__all__ += ["EplbUpdateManager", "LayerTransfers", "LayerUpdate", "PlanFailure", "PlanResult",
            "PlannerWorker", "WeightLoader", "initial_plan", "plan_transfers"]
# What a serving stack observes: counters (Prometheus when installed) and the heat dump.
__all__ += ["EplbStats", "HeatDump", "PrometheusCollector"]
