"""EplbConfig: vllm-ascend keys and defaults, one key per policy option reaching its policy, and
key-level errors (bounds, types, old key names) from every way of building one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_expert_map import FIXTURE

from eplb_native import EplbConfig, FlashLBOptions, SwiftBalancerOptions
from eplb_native.runtime import initial_plan


def test_defaults_match_vllm_ascend():
    cfg = EplbConfig.from_dict({})
    assert cfg.dynamic_eplb is False
    assert cfg.expert_heat_collection_interval == 600
    assert cfg.algorithm_execution_interval == 50
    assert cfg.num_redundant_experts is None  # 0, or what expert_map_path implies
    assert cfg.expert_map_path is None
    assert cfg.policy == "swift_balancer"  # upstream's default id 2
    assert cfg.max_plan_wait_s == 0.0  # the serving thread never waits for the planner
    assert EplbConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg == EplbConfig()


@pytest.mark.parametrize(("given", "name"), [(0, "random"), (1, "default_eplb"), (2, "swift_balancer"), (3, "flashlb"), ("flashlb", "flashlb")])
def test_policy_by_vllm_ascend_id_or_name(given, name):
    assert EplbConfig.from_dict({"eplb_policy_type": given}).policy == name
    assert EplbConfig(eplb_policy_type=given).policy == name


def test_the_published_wrapper_is_accepted():
    inner = {"dynamic_eplb": True, "num_redundant_experts": 16, "eplb_policy_type": 3}
    assert EplbConfig.from_dict({"eplb_config": inner}) == EplbConfig.from_dict(inner)
    assert EplbConfig.from_json(json.dumps({"eplb_config": inner})).policy == "flashlb"


def test_every_option_key_reaches_its_policy_options():
    flashlb = EplbConfig.from_dict({
        "eplb_policy_type": "flashlb", "update_threshold_ratio": 0.7, "update_threshold_value": 0.6,
        "max_layers_per_update": 3, "incremental": True, "max_moves_per_layer": 5, "z_score": 1.5,
        "max_depth": 2, "width": 3, "episode_steps": 4, "max_episodes": 9, "keep_margin": 0.05,
    })  # fmt: skip
    assert flashlb.policy_options() == ("flashlb", FlashLBOptions(
        z_score=1.5, max_depth=2, width=3, episode_steps=4, max_episodes=9, update_threshold_ratio=0.7,
        update_threshold_value=0.6, max_layers_per_update=3, incremental=True, max_moves_per_layer=5,
        keep_margin=0.05,
    ))  # fmt: skip
    swift = EplbConfig.from_dict({"max_moves_per_layer": 7, "max_layers_per_update": 2})
    assert swift.policy_options() == ("swift_balancer", SwiftBalancerOptions(7, 2))
    # Unset keys leave each policy's own defaults.
    assert EplbConfig(eplb_policy_type=3).policy_options() == ("flashlb", FlashLBOptions())
    assert EplbConfig().policy_options() == ("swift_balancer", SwiftBalancerOptions())
    assert EplbConfig(eplb_policy_type=1).policy_options() == ("default_eplb", None)


BAD = [
    ({"num_redundant_expert": 1}, "unknown key 'num_redundant_expert' (did you mean 'num_redundant_experts'?)"),
    ({"dynamic_eplb": 1}, "dynamic_eplb: expected true or false"),
    ({"expert_heat_collection_interval": 0}, "expert_heat_collection_interval: must be in [1, 100000], got 0"),
    ({"expert_heat_collection_interval": 10**15}, "expert_heat_collection_interval: must be in [1, 100000]"),
    ({"expert_heat_collection_interval": 2.5}, "expert_heat_collection_interval: expected an integer"),
    ({"algorithm_execution_interval": 0}, "algorithm_execution_interval: must be in [1, 100000], got 0 (0 would never"),
    ({"algorithm_execution_interval": "50"}, "algorithm_execution_interval: expected an integer"),
    ({"num_redundant_experts": -1}, "num_redundant_experts: must be in [0, 65536]"),
    ({"max_layers_per_step": 10**9}, "max_layers_per_step: must be in [1, 1024], got 1000000000"),
    ({"num_planner_threads": 10**6}, "num_planner_threads: must be in [0, 1024]"),
    ({"max_plan_wait_s": -1}, "max_plan_wait_s: must be in [0, 3600]"),
    ({"max_plan_wait_s": float("nan")}, "max_plan_wait_s: expected a finite number"),
    ({"eplb_policy_type": 7}, "eplb_policy_type: unknown policy id 7"),
    ({"eplb_policy_type": "flashbl"}, "eplb_policy_type: unknown policy 'flashbl'; valid policies: random, default_eplb, swift_balancer, flashlb (did you mean 'flashlb'?)"),
    ({"eplb_heat_collection_stage": "both"}, "eplb_heat_collection_stage: expected one of all, prefill, decode"),
    ({"expert_map_path": "/tmp/map.txt"}, "expert_map_path: expected a path ending in .json"),
    ({"expert_map_record_path": "/tmp/record.txt"}, "expert_map_record_path: expected a path ending in .json"),
    ({"eplb_policy_type": 3, "update_threshold_ratio": 1.5}, "update_threshold_ratio: must be in (0, 1]"),
    ({"eplb_policy_type": 3, "update_threshold_value": 0}, "update_threshold_value: must be in (0, 1], got 0"),
    ({"max_layers_per_update": 0}, "max_layers_per_update: must be in [1, 100000]"),
    ({"max_moves_per_layer": 10**9}, "max_moves_per_layer: must be in [0, 1000000]"),
    ({"eplb_policy_type": 3, "width": 10**9}, "width: must be in [1, 1024]"),
    ({"eplb_policy_type": 3, "max_depth": 0}, "max_depth: must be in [1, 64]"),
    ({"eplb_policy_type": 3, "episode_steps": 10**7}, "episode_steps: must be in [1, 100000]"),
    ({"eplb_policy_type": 3, "z_score": float("inf")}, "z_score: expected a finite number"),
    ({"eplb_policy_type": 3, "incremental": 1}, "incremental: expected true or false"),
    ({"eplb_policy_type": 3, "keep_margin": 2.0}, "keep_margin: must be in [0, 1]"),
    ({"update_threshold_ratio": 0.9}, "update_threshold_ratio: an option of flashlb; eplb_policy_type is swift_balancer"),
    ({"eplb_policy_type": 1, "max_moves_per_layer": 4}, "max_moves_per_layer: an option of swift_balancer and flashlb; eplb_policy_type is default_eplb"),
    ({"episode_steps": 16}, "episode_steps: an option of flashlb"),
    ({"eplb_policy_type": 3, "max_moves_per_layer": 4}, "max_moves_per_layer: flashlb caps weight copies in its incremental mode only"),
    ({"planner_placement": "per-node"}, "planner_placement: expected one of rank0, per_node, per_rank, got 'per-node' (did you mean 'per_node'?)"),
    ({"planner_placement": 0}, "planner_placement: expected one of rank0, per_node, per_rank, got 0"),
    ({"num_iterations_eplb_update": 400}, "num_iterations_eplb_update: a key of older vllm-ascend releases; use 'expert_heat_collection_interval' instead"),
    ({"num_wait_worker_iterations": 20}, "num_wait_worker_iterations: a key of older vllm-ascend releases; use 'algorithm_execution_interval' instead"),
    ({"init_redundancy_expert": 2}, "init_redundancy_expert: a key of older vllm-ascend releases; use 'num_redundant_experts' instead"),
    ({"gate_eplb": False}, "gate_eplb: a key of older vllm-ascend releases; it has no equivalent here"),
    ({"eplb_config": {"dynamic_eplb": True}, "dynamic_eplb": True}, "eplb_config: give the EPLB keys alone or wrapped"),
    ({"eplb_config": {"init_redundancy_expert": 2}}, "init_redundancy_expert: a key of older vllm-ascend releases"),
]


@pytest.mark.parametrize(("data", "message"), BAD, ids=[next(iter(d)) + str(i) for i, (d, _) in enumerate(BAD)])
def test_bad_config_names_the_key(data, message):
    with pytest.raises(ValueError) as info:
        EplbConfig.from_dict(data)
    assert message in str(info.value), str(info.value)


@pytest.mark.parametrize(("data", "message"), [(d, m) for d, m in BAD if "eplb_config" not in d and not any(
    key in d for key in ("num_iterations_eplb_update", "num_wait_worker_iterations", "init_redundancy_expert", "gate_eplb",
                         "num_redundant_expert"))])
def test_direct_construction_validates_like_from_dict(data, message):
    with pytest.raises(ValueError) as info:
        EplbConfig(**data)
    assert message in str(info.value), str(info.value)


def test_from_dict_reads_no_file_and_the_runtime_checks_the_map(tmp_path: Path):
    missing = str(tmp_path / "missing.json")
    cfg = EplbConfig.from_dict({"expert_map_path": missing})  # no file I/O here
    with pytest.raises(ValueError, match=r"^expert_map_path: .*missing.json' is not an existing .json file"):
        initial_plan(cfg, 3, 8, 2)
    path = tmp_path / "map.json"
    path.write_text(json.dumps(FIXTURE))  # 8 experts on 10 slots: 2 redundant, 2 ranks, 1 layer
    assert initial_plan(EplbConfig(expert_map_path=str(path)), 1, 8, 2).num_physical == 10
    assert initial_plan(EplbConfig(expert_map_path=str(path), num_redundant_experts=2), 1, 8, 2).num_physical == 10
    with pytest.raises(ValueError, match=r"num_redundant_experts: set to 4, but expert_map_path .* 2 redundant"):
        initial_plan(EplbConfig(expert_map_path=str(path), num_redundant_experts=4), 1, 8, 2)


def test_from_json_and_with_updates():
    cfg = EplbConfig.from_json('{"dynamic_eplb": true, "eplb_policy_type": 3}')
    assert cfg.dynamic_eplb and cfg.policy == "flashlb"
    assert cfg.with_updates(episode_steps=8).policy_options()[1].episode_steps == 8
    with pytest.raises(ValueError, match="not valid JSON"):
        EplbConfig.from_json("{")
    with pytest.raises(ValueError, match="expected a mapping"):
        EplbConfig.from_json("[1, 2]")


def test_null_means_the_keys_default_for_every_key():
    nulls = dict.fromkeys(EplbConfig.keys())
    assert EplbConfig.from_dict(nulls) == EplbConfig()
    assert EplbConfig.from_json(json.dumps({"eplb_config": nulls})) == EplbConfig()
    assert EplbConfig(dynamic_eplb=None).dynamic_eplb is False  # type: ignore[arg-type]
    assert EplbConfig.from_dict({"eplb_policy_type": 3, "episode_steps": None}).policy_options()[1] == FlashLBOptions()


def test_unreadable_json_names_its_source(tmp_path: Path):
    with pytest.raises(ValueError, match=r"^eplb_config: not readable JSON: arrays or objects nested too deeply"):
        EplbConfig.from_json("[" * 100_000)
    with pytest.raises(ValueError, match=r"^eplb_config: not readable JSON \(Exceeds the limit"):
        EplbConfig.from_json('{"episode_steps": ' + "9" * 5000 + "}")
    with pytest.raises(ValueError, match=r"^eplb_config: .*missing.json: no such file"):
        EplbConfig.from_file(tmp_path / "missing.json")
    (tmp_path / "c.json").write_text('{"dynamic_eplb": true}')
    assert EplbConfig.from_file(tmp_path / "c.json").dynamic_eplb
