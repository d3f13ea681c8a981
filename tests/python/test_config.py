"""EplbConfig: vllm-ascend keys and defaults, key-level errors with suggestions."""

from __future__ import annotations

import json

import pytest
from test_expert_map import FIXTURE

from eplb_native import EplbConfig


def test_defaults_match_vllm_ascend():
    cfg = EplbConfig.from_dict({})
    assert cfg.dynamic_eplb is False
    assert cfg.expert_heat_collection_interval == 600
    assert cfg.algorithm_execution_interval == 50
    assert cfg.num_redundant_experts == 0
    assert cfg.expert_map_path is None
    assert cfg.policy == "swift_balancer"  # upstream's default id 2
    assert EplbConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(("given", "name"), [(0, "random"), (1, "default_eplb"), (2, "swift_balancer"), (3, "flashlb"), ("flashlb", "flashlb")])
def test_policy_by_vllm_ascend_id_or_name(given, name):
    assert EplbConfig.from_dict({"eplb_policy_type": given}).policy == name


BAD = [
    ({"num_redundant_expert": 1}, "unknown key 'num_redundant_expert' (did you mean 'num_redundant_experts'?)"),
    ({"dynamic_eplb": 1}, "dynamic_eplb: expected true or false"),
    ({"expert_heat_collection_interval": 0}, "expert_heat_collection_interval: must be >= 1"),
    ({"algorithm_execution_interval": 0}, "algorithm_execution_interval: must be >= 1, got 0 (0 would never"),
    ({"algorithm_execution_interval": "50"}, "algorithm_execution_interval: expected an integer"),
    ({"num_redundant_experts": -1}, "num_redundant_experts: must be >= 0"),
    ({"eplb_policy_type": 7}, "eplb_policy_type: unknown policy id 7"),
    ({"eplb_policy_type": "flashbl"}, "eplb_policy_type: unknown policy 'flashbl'; valid policies: random, default_eplb, swift_balancer, flashlb (did you mean 'flashlb'?)"),
    ({"eplb_heat_collection_stage": "both"}, "eplb_heat_collection_stage: expected one of all, prefill, decode"),
    ({"expert_map_path": "/nonexistent/map.json"}, "expert_map_path: '/nonexistent/map.json' is not an existing .json file"),
    ({"expert_map_record_path": "/tmp/record.txt"}, "expert_map_record_path: expected a path ending in .json"),
    ({"update_threshold_ratio": 1.5}, "update_threshold_ratio: must be in (0, 1]"),
    ({"max_layers_per_update": 0}, "max_layers_per_update: must be >= 1"),
    ({"planner_placement": "per-node"}, "planner_placement: expected one of rank0, per_node, per_rank, got 'per-node' (did you mean 'per_node'?)"),
    ({"planner_placement": 0}, "planner_placement: expected one of rank0, per_node, per_rank, got 0"),
]


@pytest.mark.parametrize(("data", "message"), BAD, ids=[next(iter(d)) for d, _ in BAD])
def test_bad_config_names_the_key(data, message):
    with pytest.raises(ValueError) as info:
        EplbConfig.from_dict(data)
    assert message in str(info.value), str(info.value)


def test_expert_map_path_sets_redundancy_and_must_agree(tmp_path):
    path = tmp_path / "map.json"
    path.write_text(json.dumps(FIXTURE))  # 8 experts on 10 slots: 2 redundant
    cfg = EplbConfig.from_dict({"expert_map_path": str(path)})
    assert cfg.num_redundant_experts == 2
    assert cfg.expert_map_shape == (8, 2)
    assert EplbConfig.from_dict({"expert_map_path": str(path), "num_redundant_experts": 2}).num_redundant_experts == 2
    with pytest.raises(ValueError, match=r"num_redundant_experts: set to 4, but expert_map_path .* 2 redundant"):
        EplbConfig.from_dict({"expert_map_path": str(path), "num_redundant_experts": 4})


def test_from_json_and_thresholds():
    cfg = EplbConfig.from_json('{"dynamic_eplb": true, "eplb_policy_type": 3}')
    assert cfg.dynamic_eplb and cfg.policy == "flashlb"
    assert cfg.thresholds(16) == (0.95, 0.9)
    assert cfg.thresholds(64) == (0.9, 0.85)
    with pytest.raises(ValueError, match="not valid JSON"):
        EplbConfig.from_json("{")
    with pytest.raises(ValueError, match="expected a mapping"):
        EplbConfig.from_json("[1, 2]")
