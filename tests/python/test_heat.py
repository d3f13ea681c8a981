"""HeatRecorder: preallocated counters, bincount fallback, episodes, gather and conversion."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from dist_utils import run_on_ranks

import eplb_native
from eplb_native import EplbConfig, MoeLayerMap, Plan
from eplb_native.runtime import HeatRecorder


def _random_ids(
    rng: np.random.Generator, num_slots: int, tokens: int = 7, top_k: int = 3
) -> torch.Tensor:
    # Includes ids outside [0, S): -1 (not on this rank) and S (padding), both skipped.
    return torch.from_numpy(rng.integers(-1, num_slots + 1, size=(tokens, top_k)).astype(np.int32))


def _count(ids: torch.Tensor, num_slots: int) -> np.ndarray:
    flat = ids.numpy().reshape(-1)
    return np.array([(flat == slot).sum() for slot in range(num_slots)], dtype=np.int64)


def test_buffer_is_the_same_memory_every_step_and_window() -> None:
    plan = eplb_native.default_placement(
        num_layers=3, num_experts=4, num_ranks=1, num_redundant_experts=2
    )
    heat = HeatRecorder(plan, collection_interval=2)
    pointers = [heat.buffer(layer).data_ptr() for layer in range(3)]
    for step in range(5):
        for layer in range(3):
            buffer = heat.buffer(layer)
            assert buffer.data_ptr() == pointers[layer], f"{step=} {layer=}"
            assert buffer.dtype == torch.int64
            assert buffer.shape == (6,)
            assert buffer.is_contiguous()
            buffer += layer + 1  # as the operator's in-place moe_load accumulation
        heat.step()
    assert len(set(pointers)) == 3


def test_record_counts_local_slot_ids_and_skips_out_of_range() -> None:
    rng = np.random.default_rng(0)
    plan = eplb_native.default_placement(num_layers=2, num_experts=5, num_ranks=1)
    heat = HeatRecorder(plan, collection_interval=1)
    ids_a, ids_b = _random_ids(rng, 5), _random_ids(rng, 5).to(torch.int64)
    heat.record(1, ids_a)
    heat.record(1, ids_b)
    heat.record(1, ids_a.t())  # any layout: ids are only counted
    want = 2 * _count(ids_a, 5) + _count(ids_b, 5)
    assert np.array_equal(heat.buffer(1).numpy(), want)
    assert not heat.buffer(0).any()
    window = heat.step()
    assert window is not None
    assert np.array_equal(window.counts[0, 1], want)  # slot s holds expert s here
    assert window.rank_load.tolist() == [[0], [int(want.sum())]]


def test_every_counted_step_is_one_row_and_the_window_restarts() -> None:
    rng = np.random.default_rng(1)
    plan = eplb_native.default_placement(num_layers=2, num_experts=4, num_ranks=1)
    heat = HeatRecorder(plan, collection_interval=6)
    for window_idx in range(2):
        want = np.zeros((6, 2, 4), dtype=np.int64)
        for step in range(6):
            for layer in range(2):
                ids = _random_ids(rng, 4)
                heat.record(layer, ids)
                want[step, layer] += _count(ids, 4)
            window = heat.step()
            assert (window is None) == (step < 5), f"{window_idx=} {step=}"
        assert window is not None
        assert (window.num_steps, window.first_step) == (6, 6 * window_idx)
        assert window.counts.dtype == np.int64
        assert np.array_equal(window.counts, want), f"{window_idx=}"


def test_slot_counts_become_logical_counts_over_replicas() -> None:
    # P = 6 slots for N = 4 experts: slots 4 and 5 hold second replicas of experts 0 and 1.
    plan = eplb_native.default_placement(
        num_layers=1, num_experts=4, num_ranks=1, num_redundant_experts=2
    )
    heat = HeatRecorder(plan, collection_interval=1)
    heat.buffer(0).copy_(torch.tensor([1, 2, 3, 4, 10, 20]))
    window = heat.step()
    assert window is not None
    assert window.counts.tolist() == [[[11, 22, 3, 4]]]
    assert window.rank_load.tolist() == [[40]]


def test_each_step_is_attributed_with_the_placement_it_ran_with() -> None:
    plan = Plan.from_phy2log([[0, 1, 2, 3]], 4)
    heat = HeatRecorder(plan, collection_interval=2)
    heat.buffer(0).copy_(torch.tensor([1, 2, 3, 4]))
    assert heat.step() is None
    heat.set_layer_placement(0, [3, 2, 1, 0])
    heat.buffer(0).copy_(torch.tensor([1, 2, 3, 4]))
    window = heat.step()
    assert window is not None
    assert window.counts[:, 0].tolist() == [[1, 2, 3, 4], [4, 3, 2, 1]]
    assert heat.phy2log.tolist() == [[3, 2, 1, 0]]


def test_gather_mid_window_sums_the_steps_so_far_without_reset() -> None:
    plan = eplb_native.default_placement(num_layers=1, num_experts=3, num_ranks=1)
    heat = HeatRecorder(plan, collection_interval=10)
    for _ in range(3):
        heat.record(0, torch.tensor([0, 2, 2]))
        heat.step()
    early = heat.gather()
    assert (early.num_steps, early.first_step) == (3, 0)
    assert early.counts[:, 0].tolist() == [[1, 0, 2]] * 3
    heat.record(0, torch.tensor([1]))
    heat.step()
    assert heat.gather().counts[:, 0].tolist() == [[1, 0, 2]] * 3 + [[0, 1, 0]]


def test_gather_of_an_empty_window_is_empty_not_an_error() -> None:
    plan = eplb_native.default_placement(num_layers=2, num_experts=4, num_ranks=1, num_redundant_experts=1)
    window = HeatRecorder(plan, collection_interval=4).gather()
    assert window.num_steps == 0
    assert window.counts.shape == (0, 2, 4)
    assert window.rank_load.tolist() == [[0], [0]]


def test_dense_layers_have_no_buffer() -> None:
    layer_map = MoeLayerMap.from_first_k_dense(num_model_layers=4, first_k_dense=1)
    plan = eplb_native.default_placement(num_layers=3, num_experts=4, num_ranks=1)
    heat = HeatRecorder(plan, collection_interval=1, layer_map=layer_map)
    assert heat.buffer_for_model_layer(0) is None
    for model_layer, moe_layer in ((1, 0), (2, 1), (3, 2)):
        buffer = heat.buffer_for_model_layer(model_layer)
        assert buffer is not None
        assert buffer.data_ptr() == heat.buffer(moe_layer).data_ptr()


def test_from_config_takes_window_length_and_stage() -> None:
    config = EplbConfig.from_dict({"expert_heat_collection_interval": 12, "eplb_heat_collection_stage": "prefill"})
    plan = eplb_native.default_placement(num_layers=1, num_experts=2, num_ranks=1)
    heat = HeatRecorder.from_config(config, plan)
    assert (heat.collection_interval, heat.collection_stage) == (12, "prefill")


_PLAN = eplb_native.default_placement(num_layers=2, num_experts=4, num_ranks=1)


@pytest.mark.parametrize(
    ("call", "error", "field"),
    [
        (lambda: HeatRecorder(_PLAN, collection_interval=0), ValueError, "collection_interval"),
        (lambda: HeatRecorder(_PLAN, collection_interval=True), ValueError, "collection_interval"),
        (
            lambda: HeatRecorder(_PLAN, collection_interval=1, layer_map=MoeLayerMap.all_moe(3)),
            ValueError,
            "layer_map",
        ),
        (lambda: HeatRecorder(_PLAN, collection_interval=1).buffer(2), ValueError, "layer_idx"),
        (lambda: HeatRecorder(_PLAN, collection_interval=1).buffer(-1), ValueError, "layer_idx"),
        (
            lambda: HeatRecorder(_PLAN, collection_interval=1).record(0, torch.ones(3)),
            TypeError,
            "topk_ids",
        ),
        (
            lambda: HeatRecorder(_PLAN, collection_interval=1).record(0, [0, 1]),
            TypeError,
            "topk_ids",
        ),
        (
            lambda: HeatRecorder(_PLAN, collection_interval=1).set_layer_placement(0, [0, 1, 2]),
            ValueError,
            "phy2log",
        ),
        (
            lambda: HeatRecorder(_PLAN, collection_interval=1).set_layer_placement(0, [0, 1, 2, 2]),
            ValueError,
            "phy2log",
        ),
    ],
)
def test_bad_input_raises_naming_the_field(call, error, field) -> None:
    with pytest.raises(error, match=field):
        call()


def test_steps_of_the_other_stage_do_not_count() -> None:
    plan = eplb_native.default_placement(num_layers=1, num_experts=2, num_ranks=1)
    heat = HeatRecorder.from_config(
        EplbConfig.from_dict({"expert_heat_collection_interval": 2, "eplb_heat_collection_stage": "decode"}), plan)
    assert heat.collection_stage == "decode"
    heat.record(0, torch.tensor([0, 0]))
    with pytest.raises(ValueError, match=r"^stage: expected 'prefill' or 'decode'"):
        heat.step()
    assert heat.step(stage="prefill") is None  # the prefill counts [2, 0] are dropped
    heat.record(0, torch.tensor([1]))
    assert heat.step(stage="decode") is None
    for _ in range(3):  # prefill steps neither count nor close the window
        heat.record(0, torch.tensor([1, 1, 1]))
        assert heat.step(stage="prefill") is None
    heat.record(0, torch.tensor([0, 1, 1]))
    window = heat.step(stage="decode")  # the second decode step closes it
    assert window is not None and window.num_steps == 2
    assert window.counts[:, 0].tolist() == [[0, 1], [1, 2]]


def _gather_two_ranks(rank: int, world_size: int, defer: bool) -> None:
    # N = 3 experts on P = 4 slots: rank 0 holds [0, 1], rank 1 holds [2, 0] in layer 0.
    plan = Plan.from_phy2log([[0, 1, 2, 0], [2, 1, 0, 1]], 3)
    heat = HeatRecorder(plan, collection_interval=2)
    pointer = heat._outgoing.data_ptr()
    for step in range(2):
        heat.buffer(0).copy_(torch.tensor([10 * rank + step, 1]))
        heat.buffer(1).copy_(torch.tensor([rank, 100 + step]))
        window = heat.step(defer_gather=defer)
    if defer:
        # Posted in the background: the window arrives with the next step, unchanged by that
        # step's counts and by a placement change after it closed.
        assert window is None
        heat.set_layer_placement(0, [1, 0, 2, 0])
        heat.buffer(0).copy_(torch.tensor([1000, 1000]))
        window = heat.step(defer_gather=defer)
    assert window is not None
    assert window.num_steps == 2
    assert heat._outgoing.data_ptr() == pointer
    # Slot counts per step: [[0, 1, 10, 1], [0, 100, 1, 100]] and [[1, 1, 11, 1], [0, 101, 1, 101]].
    want_experts = [[[1, 1, 10], [1, 200, 0]], [[2, 1, 11], [1, 202, 0]]]
    assert window.counts.tolist() == want_experts, f"{rank=}"
    assert window.rank_load.tolist() == [[1 + 2, 11 + 12], [100 + 101, 101 + 102]], f"{rank=}"


@pytest.mark.parametrize("defer", [False, True], ids=["blocking", "deferred"])
def test_two_ranks_gather_every_slot_count(defer: bool) -> None:
    run_on_ranks(_gather_two_ranks, 2, defer)


def test_runtime_without_torch_says_how_to_install_it() -> None:
    # A fresh interpreter where torch cannot be imported: the planning API still imports.
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import eplb_native\n"
        "try:\n"
        "    import eplb_native.runtime\n"
        "except ImportError as error:\n"
        "    sys.stdout.write(str(error))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout == "eplb_native.runtime needs torch: pip install 'eplb-native[torch]'"
