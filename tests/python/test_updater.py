"""EplbUpdateManager end to end on 4 gloo ranks: with dynamic EPLB on, the model output stays
bitwise equal to the same model without EPLB at every step, rebalances happen and really move
weights (placement, slot contents and measured PAR all change), and each fault (worker killed,
invalid plan, one rank's transfer failing) leaves serving on a consistent placement."""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from dist_utils import run_on_ranks
from toy_moe_model import ToyModel, ToyShape, rank_par, reference_model, toy_inputs, toy_weights

from eplb_native import (
    EplbConfig,
    MoeLayerMap,
    Plan,
    default_placement,
    load_expert_map,
    save_expert_map,
)
from eplb_native.runtime import HeatRecorder
from eplb_native.runtime.updater import EplbUpdateManager, initial_plan
from eplb_native.runtime.worker import PolicySpec

NUM_RANKS = 4
INTERVAL = 20


class BrokenPolicy:
    """Returns a plan that loses expert 0 in every layer (must be rejected)."""

    def rebalance(self, current_table: Any, workload: Any) -> Any:
        table = np.asarray(current_table).copy()
        table[table == 0] = 1
        return True, np.arange(table.shape[0]), table


def broken_factory() -> BrokenPolicy:
    return BrokenPolicy()


class SlowPolicy:
    """swift_balancer taking 0.5 s, so that a kill right after a hand-off hits mid-request."""

    def __init__(self) -> None:
        self.inner = PolicySpec("swift_balancer")()

    def rebalance(self, current_table: Any, workload: Any) -> Any:
        time.sleep(0.5)
        return self.inner.rebalance(current_table, workload)


def slow_factory() -> SlowPolicy:
    return SlowPolicy()


class RotatedPolicy:
    """swift_balancer; from its ``rotate_from``-th call on (0: the warm-up's), the changed
    layers' new rows are rotated by one rank: a valid plan, different from the unrotated one."""

    def __init__(self, rotate_from: int | None) -> None:
        self.inner = PolicySpec("swift_balancer")()
        self.rotate_from = rotate_from
        self.num_calls = 0

    def rebalance(self, current_table: Any, workload: Any) -> Any:
        changed, layers, new_table = self.inner.rebalance(current_table, workload)
        new_table = np.asarray(new_table).copy()
        if self.rotate_from is not None and self.num_calls >= self.rotate_from:
            new_table[layers] = np.roll(new_table[layers], 1, axis=1)
        self.num_calls += 1
        return changed, layers, new_table


@dataclass(frozen=True)
class RotatedFactory:
    """Picklable factory of RotatedPolicy."""

    rotate_from: int | None

    def __call__(self) -> RotatedPolicy:
        return RotatedPolicy(self.rotate_from)


class HotReplicaPolicy:
    """For one rank: the redundant slots hold the hottest experts (one extra copy each), every
    expert once in slot order before them; changes the layers whose row differs."""

    def __init__(self, num_experts: int) -> None:
        self.num_experts = num_experts

    def rebalance(self, current_table: Any, workload: Any) -> Any:
        table = np.asarray(current_table, dtype=np.int64)  # [L, 1, P]
        slot_load = np.asarray(workload, dtype=np.float64).reshape(-1, *table.shape).sum(axis=0)
        new_table = table.copy()
        layers = []
        for layer_idx in range(table.shape[0]):
            row = table[layer_idx].reshape(-1)
            expert_load = np.bincount(row, weights=slot_load[layer_idx].reshape(-1), minlength=self.num_experts)
            hot = np.argsort(-expert_load, kind="stable")[: row.size - self.num_experts]
            new_row = np.concatenate([np.arange(self.num_experts), np.sort(hot)])
            if not np.array_equal(new_row, row):
                new_table[layer_idx] = new_row.reshape(table.shape[1:])
                layers.append(layer_idx)
        return bool(layers), np.asarray(layers, dtype=np.int64), new_table


@dataclass(frozen=True)
class HotReplicaFactory:
    """Picklable factory of HotReplicaPolicy."""

    num_experts: int

    def __call__(self) -> HotReplicaPolicy:
        return HotReplicaPolicy(self.num_experts)


def _config(tmp: str, **extra: Any) -> EplbConfig:
    return EplbConfig.from_dict({
        "dynamic_eplb": True,
        "expert_heat_collection_interval": INTERVAL,
        "algorithm_execution_interval": 3,
        "episode_steps": 1,
        "num_redundant_experts": 4,
        "eplb_policy_type": "swift_balancer",
        "max_layers_per_step": 1,
        "expert_map_record_path": str(Path(tmp) / "placement.json"),
        **extra,
    })


def _slots_hold_named_experts(model: ToyModel, weights: Any, table: np.ndarray, rank: int) -> bool:
    for layer_idx, block in enumerate(model.moe):
        experts = block.experts
        if not np.array_equal(experts.phy2log, table[layer_idx].reshape(-1)):
            return False
        for slot, expert in enumerate(table[layer_idx, rank].tolist()):
            if not (torch.equal(experts.w1[slot], weights.w1[layer_idx][expert])
                    and torch.equal(experts.w2[slot], weights.w2[layer_idx][expert])):
                return False
    return True


def _serve(rank: int, world_size: int, tmp: str, scenario: str, num_steps: int) -> None:
    shape = ToyShape()
    weights = toy_weights(shape)
    policy_factory: Any = None
    extra: dict[str, Any] = {}
    if scenario == "invalid":
        policy_factory = broken_factory
    if scenario == "faults":
        policy_factory = slow_factory
    if scenario in ("ok", "ok_stream", "faults", "per_node", "per_rank", "sync"):
        extra["expert_map_path"] = str(Path(tmp) / "initial.json")
    ranks_per_node = None
    if scenario == "per_node":
        # Two "nodes" of two ranks, each planning on its first rank from the same heat; for the
        # second window node 1's policy proposes a different (valid) plan.
        extra["planner_placement"] = "per_node"
        ranks_per_node = 2
        policy_factory = RotatedFactory(rotate_from=2 if rank >= 2 else None)
    if scenario == "per_rank":
        # Every rank plans; for the second window rank 3's policy proposes a different plan.
        extra["planner_placement"] = "per_rank"
        policy_factory = RotatedFactory(rotate_from=2 if rank == 3 else None)
    config = _config(tmp, **extra)
    plan = initial_plan(config, shape.num_moe_layers, shape.num_experts, world_size)
    layer_map = MoeLayerMap(shape.num_moe_layers + 1, tuple(range(1, shape.num_moe_layers + 1)))
    heat = HeatRecorder.from_config(config, plan, layer_map=layer_map)
    model = ToyModel(shape, weights, plan, heat)
    reference = reference_model(shape, weights, rank, world_size)
    manager = EplbUpdateManager(config, list(model.moe), heat, policy_factory=policy_factory,
                                ranks_per_node=ranks_per_node, synchronous=scenario == "sync",
                                side_stream=True if scenario == "ok_stream" else None,
                                transfer_timeout_s=2.0 if scenario == "faults" else 30.0, plan_wait_s=30.0)
    manager.warm_up()
    if scenario == "faults" and rank == 2:
        post = manager.loader._post_layer
        failed: list[int] = []

        def fail_once(position: int, transfers: Any, tag: int) -> Any:
            if not failed:
                failed.append(transfers.layer_idx)
                msg = "injected link failure"
                raise RuntimeError(msg)
            return post(position, transfers, tag)

        manager.loader._post_layer = fail_once  # type: ignore[method-assign]
    initial_table = manager.table
    staging = [t.data_ptr() for t in manager.loader.staging_buffers()]
    heat_buffers = [heat.buffer(i).data_ptr() for i in range(shape.num_moe_layers)]
    mismatched_steps = []
    windows = []
    tables = []
    phases = []
    for step in range(num_steps):
        phase = 0 if step < num_steps // 2 else 1
        x = toy_inputs(shape, weights, step, rank, phase)
        manager.pre_forward()
        out = model(x)
        manager.post_forward()
        if not torch.equal(out, reference(x)):
            mismatched_steps.append(step)
        if manager.last_window is not None and manager.last_window[0] == manager.step_idx:
            windows.append((manager.step_idx, rank_par(manager.last_window[1].slot_load, world_size)))
        tables.append(manager.table)
        phases.append(manager.step_phases)
        if scenario == "faults" and rank == 0 and manager.step_idx == 2 * INTERVAL:
            assert manager.worker is not None
            assert manager.worker.pid is not None
            os.kill(manager.worker.pid, signal.SIGKILL)
    result = {
        "mismatched_steps": mismatched_steps,
        "initial_table": initial_table,
        "table": manager.table,
        "tables": np.stack(tables),
        "windows": windows,
        "updates": [(u.window_step, u.layers.tolist(), u.applied, u.abandoned, u.par_before, u.par_after)
                    for u in manager.updates],
        "slots_ok": _slots_hold_named_experts(model, weights, manager.table, rank),
        "same_buffers": staging == [t.data_ptr() for t in manager.loader.staging_buffers()]
        and heat_buffers == [heat.buffer(i).data_ptr() for i in range(shape.num_moe_layers)],
        "num_rejected": manager.num_rejected_plans,
        "num_mismatches": manager.exchange.num_mismatches,
        "phases": phases,
        "has_worker": manager.worker is not None,
        "restarts": manager.worker.num_restarts if manager.worker is not None else 0,
    }
    manager.close()
    torch.save(result, Path(tmp) / f"rank{rank}.pt")


def _run(tmp_path: Path, scenario: str, num_steps: int) -> list[dict[str, Any]]:
    run_on_ranks(_serve, NUM_RANKS, str(tmp_path), scenario, num_steps)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(NUM_RANKS)]
    for rank, result in enumerate(results):
        assert result["mismatched_steps"] == [], f"{rank=}: output differs from the model without EPLB"
        assert result["slots_ok"], f"{rank=}: a slot holds weights other than the expert its map names"
        assert result["same_buffers"], f"{rank=}: staging or heat buffers were reallocated"
        assert np.array_equal(result["tables"], results[0]["tables"]), f"{rank=}: ranks disagree on placement"
        assert result["updates"] == results[0]["updates"]
    recorded = load_expert_map(tmp_path / "placement.json", allow_duplicate_on_rank=True)
    assert np.array_equal(recorded.table(NUM_RANKS), results[0]["table"]), "recorded placement is stale"
    return results


def _write_rotated_start(tmp_path: Path) -> np.ndarray:
    """A non-default initial placement (the default layout rotated by one rank) saved as an
    ``expert_map_path`` file; returns it as phy2log int64 [L, P]."""
    shape = ToyShape()
    base = default_placement(shape.num_moe_layers, shape.num_experts, NUM_RANKS, 4).table(NUM_RANKS)
    rotated = np.roll(base, 1, axis=1).reshape(shape.num_moe_layers, -1)
    save_expert_map(Plan.from_phy2log(rotated, shape.num_experts), tmp_path / "initial.json", NUM_RANKS)
    return rotated


# "ok_stream": the loader's GPU/NPU mode (side stream posted from the serving thread), run on
# torch's CPU stream stand-ins.
@pytest.mark.parametrize("scenario", ["ok", "ok_stream"])
def test_rebalancing_moves_weights_keeps_outputs_bitwise_and_lowers_par(tmp_path: Path, scenario: str) -> None:
    rotated = _write_rotated_start(tmp_path)
    results = _run(tmp_path, scenario, num_steps=200)
    result = results[0]
    assert np.array_equal(result["initial_table"].reshape(rotated.shape), rotated), "expert_map_path ignored"
    updates = result["updates"]
    assert len(updates) >= 2, f"expected a rebalance per routing phase, got {updates}"
    first_step, first_layers, applied, abandoned, par_before, par_after = updates[0]
    assert applied == first_layers
    assert not abandoned
    assert par_after < par_before
    # The placement in force changed exactly where the plan said.
    start, end = result["initial_table"], result["tables"][first_step + INTERVAL - 1]
    changed = [layer for layer in range(start.shape[0]) if not np.array_equal(start[layer], end[layer])]
    assert sorted(changed) == sorted(first_layers)
    # Measured (recorded) PAR: the window planned from vs the later windows of the same phase.
    pars = dict(result["windows"])
    after = [par for step, par in pars.items() if first_step < step <= 100]
    assert np.mean(after) < 0.9 * pars[first_step], pars


def test_failed_transfer_and_killed_worker_leave_serving_consistent(tmp_path: Path) -> None:
    _write_rotated_start(tmp_path)
    results = _run(tmp_path, "faults", num_steps=75)
    updates = results[0]["updates"]
    # Rank 2's first transfer failed: that layer was abandoned on every rank, the rest applied.
    first_step, layers, applied, abandoned, _, _ = updates[0]
    assert abandoned == [layers[0]], updates[0]
    assert applied == layers[1:], updates[0]
    tables = results[0]["tables"]
    assert np.array_equal(tables[first_step + INTERVAL - 1, layers[0]], results[0]["initial_table"][layers[0]])
    # The worker was killed while planning the window of step 40: no plan from
    # that window; it restarted and a later window was planned and applied.
    assert results[0]["restarts"] >= 1
    assert all(u[0] != 2 * INTERVAL for u in updates), updates
    assert any(u[0] > 2 * INTERVAL and u[2] for u in updates), updates


def test_invalid_plan_is_rejected_and_nothing_applied(tmp_path: Path) -> None:
    results = _run(tmp_path, "invalid", num_steps=2 * INTERVAL + 5)
    assert results[0]["num_rejected"] == 2
    for result in results:
        assert result["updates"] == []
        assert (result["tables"] == result["initial_table"]).all()
    data = json.loads((tmp_path / "placement.json").read_text())
    assert data["moe_layer_count"] == ToyShape().num_moe_layers


@pytest.mark.parametrize(("placement", "workers"), [("per_node", [True, False, True, False]),
                                                    ("per_rank", [True, True, True, True])])
def test_several_planners_apply_a_plan_they_agree_on_and_refuse_one_they_do_not(
    tmp_path: Path, placement: str, workers: list[bool]
) -> None:
    _write_rotated_start(tmp_path)
    results = _run(tmp_path, placement, num_steps=2 * INTERVAL + 8)
    assert [r["has_worker"] for r in results] == workers, f"planners of {placement}"
    # First window: both nodes planned the same; applied everywhere.
    updates = results[0]["updates"]
    assert len(updates) == 1, updates
    window_step, layers, applied, _, _, _ = updates[0]
    assert window_step == INTERVAL + 1 and applied == layers and layers, updates
    after_first = results[0]["tables"][2 * INTERVAL - 1]
    changed = np.any(after_first != results[0]["initial_table"], axis=(1, 2))
    assert sorted(np.flatnonzero(changed).tolist()) == sorted(layers)
    # Second window: one planner proposed another plan; the checksums differ, nothing changes.
    for rank, result in enumerate(results):
        assert result["num_mismatches"] == 1, f"{rank=}: the checksum comparison did not refuse the plan"
        assert result["num_rejected"] == 0, f"{rank=}: each node's plan is valid on its own"
        assert (result["tables"][2 * INTERVAL - 1 :] == after_first).all(), f"{rank=}: a differing plan was applied"
        assert result["phases"] == results[0]["phases"], "ranks did the update stages at different steps"


def test_synchronous_update_applies_every_layer_at_the_pickup_step(tmp_path: Path) -> None:
    _write_rotated_start(tmp_path)
    results = _run(tmp_path, "sync", num_steps=INTERVAL + 6)
    window_step, layers, applied, abandoned, par_before, par_after = results[0]["updates"][0]
    assert applied == layers and not abandoned and par_after < par_before
    pickup = window_step + 3  # algorithm_execution_interval steps after the window reached the manager
    for rank, result in enumerate(results):
        tables, initial = result["tables"], result["initial_table"]
        assert result["phases"][pickup - 1] == ["planning", "pickup", "verify", "schedule", "commit"], f"{rank=}"
        assert (tables[: pickup - 1] == initial).all(), f"{rank=}: changed before the pick-up step"
        changed = np.any(tables[pickup - 1] != initial, axis=(1, 2))
        assert sorted(np.flatnonzero(changed).tolist()) == sorted(layers), f"{rank=}"
        assert (tables[pickup - 1 :] == tables[pickup - 1]).all(), f"{rank=}: moved after the pick-up step"


def test_single_process_manager_moves_by_local_copies(tmp_path: Path) -> None:
    # No torch.distributed: one rank holds every slot. Rank-level PAR is always 1 then, and a
    # rank sends all tokens of an expert to one replica (rank_log2phy), so no load measure can
    # drop: this checks the mechanics (moves applied, all by local copy, outputs bitwise equal,
    # maps and slot weights consistent). The plan gives the redundant slots to the hottest experts.
    shape = ToyShape()
    weights = toy_weights(shape)
    config = _config(str(tmp_path))
    plan = initial_plan(config, shape.num_moe_layers, shape.num_experts, 1)
    heat = HeatRecorder.from_config(config, plan)
    model = ToyModel(shape, weights, plan, heat)
    reference = ToyModel(shape, weights, default_placement(shape.num_moe_layers, shape.num_experts, 1), None)
    manager = EplbUpdateManager(config, list(model.moe), heat, policy_factory=HotReplicaFactory(shape.num_experts))
    try:
        manager.warm_up()
        initial_table = manager.table
        for step in range(INTERVAL + 8):
            x = toy_inputs(shape, weights, step, 0, phase=0)
            manager.pre_forward()
            out = model(x)
            manager.post_forward()
            assert torch.equal(out, reference(x)), f"{step=}: output differs from the model without EPLB"
    finally:
        manager.close()
    record = manager.updates[0]
    assert record.window_step == INTERVAL + 1
    assert record.applied == record.layers.tolist() and record.layers.size > 0
    # Every move was a slot-to-slot copy: nothing received (num_copies counts received
    # experts), nothing sent, and yet every slot holds the expert its map names.
    assert all(update.num_copies == 0 and update.global_bytes == 0 for update in manager.updates)
    changed = np.any(manager.table != initial_table, axis=(1, 2))
    assert set(np.flatnonzero(changed).tolist()) >= set(record.layers.tolist())
    assert _slots_hold_named_experts(model, weights, manager.table, 0)
    assert np.array_equal(heat.phy2log, manager.table.reshape(shape.num_moe_layers, -1)), "heat converts with stale maps"


def test_manager_rejects_layers_that_do_not_match_the_recorder() -> None:
    plan = default_placement(2, 4, 1)
    heat = HeatRecorder(plan, collection_interval=2)
    with pytest.raises(ValueError, match=r"^moe_layers:"):
        EplbUpdateManager(EplbConfig(), [], heat, policy_factory=PolicySpec("default_eplb"))
