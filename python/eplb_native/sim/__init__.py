"""Trace replay and policy comparison: traces in, out-of-sample balance per policy out.

``load_trace`` reads the formats users have (see ``eplb_native.sim.traces``); ``replay``
re-plans every ``interval`` steps with each policy and scores the plans on the steps that
follow (see ``eplb_native.sim.replay``); ``plot_replay`` (matplotlib) draws the result.
"""

from __future__ import annotations

from eplb_native.sim.replay import (
    STATIC,
    PolicyReplay,
    PolicySpec,
    ReplayResult,
    ReplaySettings,
    replay,
)
from eplb_native.sim.traces import (
    SyntheticSeries,
    Trace,
    as_time_series,
    load_trace,
    shipped_trace_path,
    synthesize_series,
)

__all__ = [
    "STATIC",
    "PolicyReplay",
    "PolicySpec",
    "ReplayResult",
    "ReplaySettings",
    "SyntheticSeries",
    "Trace",
    "as_time_series",
    "load_trace",
    "replay",
    "shipped_trace_path",
    "synthesize_series",
]
