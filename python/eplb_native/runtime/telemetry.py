"""Serving counters of the dynamic EPLB loop (balancedness, updates, bytes moved, stall) and
their Prometheus export when ``prometheus_client`` is installed (``pip install
'eplb-native[metrics]'``)."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


@dataclass
class EplbStats:
    """What ``EplbUpdateManager`` counts while serving (one object per rank, updated in place).

    Attributes:
        steps: forward steps seen (``post_forward`` calls).
        stall_ms: serving-thread time spent in the manager's ``pre_forward`` and
            ``post_forward`` (heat steps, hand-over stages, commits), summed, ms.
        max_stall_ms: the longest such time of one step, ms.
        windows: heat windows summed over the ranks.
        balancedness: of the last window, mean over layers of mean rank load / max rank load
            (vLLM's balancedness; 1 is perfect), NaN before the first window.
        updates: updates finished (all their layers applied or abandoned).
        layers_applied, layers_abandoned: layers committed on every rank / abandoned after a
            failed transfer, over all updates.
        bytes_moved: expert-weight bytes sent over the network by all ranks, over all updates.
        rejected_plans: plans refused by the checks (nothing applied).
    """

    steps: int = 0
    stall_ms: float = 0.0
    max_stall_ms: float = 0.0
    windows: int = 0
    balancedness: float = math.nan
    updates: int = 0
    layers_applied: int = 0
    layers_abandoned: int = 0
    bytes_moved: int = 0
    rejected_plans: int = 0


class PrometheusCollector:
    """A ``prometheus_client`` collector reading an ``EplbStats`` at every scrape.

    Example::

        registry = prometheus_client.CollectorRegistry()
        registry.register(PrometheusCollector(manager.stats, rank=0))
        prometheus_client.generate_latest(registry)  # eplb_balancedness{rank="0"} 0.93 ...

    Metrics (label ``rank``): ``eplb_balancedness`` (gauge), ``eplb_steps_total``,
    ``eplb_stall_seconds_total``, ``eplb_stall_max_seconds`` (gauge), ``eplb_windows_total``,
    ``eplb_updates_total``, ``eplb_layer_updates_total`` (label ``outcome``: applied or
    abandoned), ``eplb_bytes_moved_total``, ``eplb_rejected_plans_total``.
    """

    def __init__(self, stats: EplbStats, *, rank: int) -> None:
        self.stats = stats
        self.rank = str(rank)
        self.registry: Any = None  # where ``register_prometheus`` registered it

    def collect(self) -> Iterator[Any]:
        """The metric families, built from the stats as they are now."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        stats, labels = self.stats, ["rank"]
        gauges = [
            ("eplb_balancedness", "Last heat window: mean over layers of mean / max rank load",
             stats.balancedness),
            ("eplb_stall_max_seconds", "Longest serving-thread time in the EPLB hooks of one step",
             stats.max_stall_ms / 1e3),
        ]  # fmt: skip
        for name, doc, value in gauges:
            gauge = GaugeMetricFamily(name, doc, labels=labels)
            gauge.add_metric([self.rank], value)
            yield gauge
        counters = [
            ("eplb_steps", "Forward steps seen", stats.steps),
            ("eplb_stall_seconds", "Serving-thread time in the EPLB hooks", stats.stall_ms / 1e3),
            ("eplb_windows", "Heat windows summed over the ranks", stats.windows),
            ("eplb_updates", "Updates finished", stats.updates),
            ("eplb_bytes_moved", "Expert-weight bytes moved over the network, all ranks", stats.bytes_moved),
            ("eplb_rejected_plans", "Plans refused by the checks", stats.rejected_plans),
        ]
        for name, doc, value in counters:
            counter = CounterMetricFamily(name, doc, labels=labels)
            counter.add_metric([self.rank], value)
            yield counter
        layers = CounterMetricFamily(
            "eplb_layer_updates", "Layers moved to a new placement, by outcome", labels=["rank", "outcome"]
        )
        layers.add_metric([self.rank, "applied"], stats.layers_applied)
        layers.add_metric([self.rank, "abandoned"], stats.layers_abandoned)
        yield layers


def register_prometheus(stats: EplbStats, *, rank: int, registry: Any = None) -> PrometheusCollector | None:
    """Exports ``stats`` through a ``PrometheusCollector`` registered in ``registry`` (default:
    ``prometheus_client.REGISTRY``). Returns the collector (its ``registry`` holds it: call
    ``collector.registry.unregister(collector)`` when done), or None when ``prometheus_client``
    is not installed or the registry already holds these metrics (logged; serving goes on
    without them)."""
    try:
        import prometheus_client
    except ImportError:
        logger.info("EPLB metrics not exported: pip install 'eplb-native[metrics]' (prometheus_client)")
        return None
    target = prometheus_client.REGISTRY if registry is None else registry
    collector = PrometheusCollector(stats, rank=rank)
    try:
        target.register(collector)
    except ValueError as error:  # the names are taken (e.g. a second manager in one process)
        logger.warning("EPLB metrics not exported: %s", error)
        return None
    collector.registry = target
    return collector


__all__ = ["EplbStats", "PrometheusCollector", "register_prometheus"]
