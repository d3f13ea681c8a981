"""MoeLayerMap: model layer index <-> MoE layer index, dense layers skipped and reported."""

from __future__ import annotations

import logging

import pytest

from eplb_native import MoeLayerMap


def test_first_k_dense_skips_and_reports(caplog):
    with caplog.at_level(logging.INFO, logger="eplb_native.layers"):
        layers = MoeLayerMap.from_first_k_dense(61, first_k_dense=3)
    assert layers.num_moe_layers == 58
    assert layers.dense_layer_ids == (0, 1, 2)
    assert layers.moe_index(3) == 0 and layers.moe_index(60) == 57
    assert layers.moe_index(1) is None
    assert "dense layers skipped" in caplog.text and "[0, 1, 2]" in caplog.text


def test_interleaved_moe_layers():
    layers = MoeLayerMap.from_first_k_dense(8, first_k_dense=0, moe_layer_freq=2)
    assert layers.moe_layer_ids == (0, 2, 4, 6)
    assert layers.moe_index(5) is None


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: MoeLayerMap(4, ()), "moe_layer_ids: the model has no MoE layer"),
        (lambda: MoeLayerMap(4, (2, 1)), "moe_layer_ids: expected distinct ascending ids"),
        (lambda: MoeLayerMap(4, (0, 4)), "moe_layer_ids: expected distinct ascending ids in [0, 4)"),
        (lambda: MoeLayerMap.all_moe(3).moe_index(7), "model_layer_idx: expected an integer in [0, 3), got 7"),
    ],
)
def test_bad_layer_maps(build, message):
    with pytest.raises(ValueError) as info:
        build()
    assert message in str(info.value)


def test_default_placement_covers_moe_layers_only_and_reports_dense_ones(caplog):
    import eplb_native

    layers = MoeLayerMap.from_first_k_dense(6, first_k_dense=2)
    with caplog.at_level(logging.INFO, logger="eplb_native.plan"):
        plan = eplb_native.default_placement(layers, 8, 2, 2)
    assert plan.num_layers == 4
    assert "dense layers skipped: [0, 1]" in caplog.text
