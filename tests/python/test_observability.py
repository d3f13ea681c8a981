"""What a serving stack sees of EPLB: the Prometheus metrics (parsed back with
prometheus_client's own parser) and the heat dump, which `eplb-native plan` turns into the
expert_map_path of the next start."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from eplb_native import EplbConfig, Plan, default_placement, evaluate
from eplb_native.cli import main
from eplb_native.runtime import EplbMoE, HeatRecorder, HeatWindow, initial_plan
from eplb_native.runtime.updater import EplbUpdateManager
from eplb_native.sim.traces import load_trace

NUM_LAYERS, NUM_EXPERTS, HIDDEN, INTERMEDIATE = 2, 6, 8, 4


def _model(config: EplbConfig, plan: Plan, registry: object = None) -> tuple[EplbUpdateManager, list[EplbMoE]]:
    """One process, skewed routing (experts 2 and 3 hot in every layer)."""
    heat = HeatRecorder.from_config(config, plan)
    gen = torch.Generator().manual_seed(0)
    layers = []
    for layer_idx in range(NUM_LAYERS):
        router = torch.randn(NUM_EXPERTS, HIDDEN, generator=gen)
        router[2:4] += 2.0
        w1 = [torch.randn(HIDDEN, 2 * INTERMEDIATE, generator=gen) for _ in range(NUM_EXPERTS)]
        w2 = [torch.randn(INTERMEDIATE, HIDDEN, generator=gen) for _ in range(NUM_EXPERTS)]
        layers.append(EplbMoE.from_logical_weights(router, w1, w2, plan, top_k=2, moe_layer_idx=layer_idx,
                                                   heat=heat))
    return EplbUpdateManager(config, layers, heat, metrics_registry=registry), layers


def _serve(manager: EplbUpdateManager, layers: list[EplbMoE], num_steps: int) -> None:
    for step in range(num_steps):
        x = torch.rand(6, HIDDEN, generator=torch.Generator().manual_seed(step)) + 0.5
        manager.pre_forward()
        for layer in layers:
            x = x + layer(x)
        manager.post_forward()


def test_metrics_are_exposed_and_parse_back() -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    from prometheus_client.parser import text_string_to_metric_families

    registry = prometheus_client.CollectorRegistry()
    config = EplbConfig(expert_heat_collection_interval=2)
    plan = default_placement(NUM_LAYERS, NUM_EXPERTS, 1, 2)
    manager, layers = _model(config, plan, registry)
    new_table = plan.table(1).copy()
    new_table[1, 0] = new_table[1, 0, ::-1]  # one layer's slots reversed: local copies only
    manager.loader.schedule(new_table, [1])
    _serve(manager, layers, 5)
    # A two-rank window's balancedness: mean over layers of mean / max rank load.
    manager._log_balancedness(HeatWindow(np.zeros((1, NUM_LAYERS, NUM_EXPERTS), np.int64),
                                         np.array([[30, 10], [20, 20]]), 0, 1))  # fmt: skip
    samples = {}
    for family in text_string_to_metric_families(prometheus_client.generate_latest(registry).decode()):
        for sample in family.samples:
            samples[(sample.name, sample.labels.get("outcome"))] = (sample.value, sample.labels["rank"])
    stats = manager.stats
    assert stats.steps == 5
    assert stats.windows == 3  # windows closing at steps 2 and 4 arrive at 3 and 5, plus the one above
    assert stats.layers_applied == 1
    assert stats.balancedness == pytest.approx((20 / 30 + 1.0) / 2)
    want = {
        ("eplb_balancedness", None): stats.balancedness,
        ("eplb_steps_total", None): 5,
        ("eplb_windows_total", None): 3,
        ("eplb_updates_total", None): 0,  # scheduled on the loader directly: no update record
        ("eplb_layer_updates_total", "applied"): 1,
        ("eplb_layer_updates_total", "abandoned"): 0,
        ("eplb_bytes_moved_total", None): 0,  # one rank: local copies only
        ("eplb_rejected_plans_total", None): 0,
        ("eplb_stall_seconds_total", None): stats.stall_ms / 1e3,
        ("eplb_stall_max_seconds", None): stats.max_stall_ms / 1e3,
    }
    for key, value in want.items():
        assert samples[key] == (pytest.approx(value), "0"), key
    assert 0 < stats.max_stall_ms <= stats.stall_ms
    manager.close()
    assert "eplb_" not in prometheus_client.generate_latest(registry).decode()


def test_heat_dump_becomes_the_next_starts_expert_map(tmp_path: Path) -> None:
    dump = tmp_path / "heat" / "dump.npz"
    config = EplbConfig(expert_heat_collection_interval=4, expert_heat_dump_path=str(dump))
    manager, layers = _model(config, default_placement(NUM_LAYERS, NUM_EXPERTS, 1))
    _serve(manager, layers, 9)  # windows closing at steps 4 and 8 arrive at 5 and 9
    manager.close()
    assert manager.heat_dump is not None and manager.heat_dump.num_written == 2
    assert manager.last_window is not None
    window = manager.last_window[1]
    trace = load_trace(dump)
    assert np.array_equal(trace.load, window.counts)  # [T=4, L, N], the last window
    assert trace.metadata == {"first_step": "4", "num_ranks": "1"}
    # The next start: 2 ranks with one redundant slot each, placed from the dumped heat.
    expert_map = tmp_path / "expert_map.json"
    args = ["plan", "--trace", str(dump), "--ranks", "2", "--redundant", "2", "-o", str(expert_map)]
    assert main(args) == 0
    next_config = EplbConfig(expert_map_path=str(expert_map), num_redundant_experts=2)
    plan = initial_plan(next_config, NUM_LAYERS, NUM_EXPERTS, 2)
    default = default_placement(NUM_LAYERS, NUM_EXPERTS, 2, 2)
    assert evaluate(plan, trace.load, 2).par < evaluate(default, trace.load, 2).par


def test_heat_dump_path_must_be_npz() -> None:
    with pytest.raises(ValueError, match=r"expert_heat_dump_path: expected a path ending in \.npz"):
        EplbConfig(expert_heat_dump_path="heat.json")
