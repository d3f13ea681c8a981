"""The vllm-ascend expert_map_path JSON format: fixture layout, round trip, bad files."""

from __future__ import annotations

import json

import numpy as np
import pytest

import eplb_native

# vllm-ascend's fixture layout: 2 devices x 5 slots, experts 0..7, experts 7 and 2 replicated.
FIXTURE = {
    "moe_layer_count": 1,
    "layer_list": [
        {
            "layer_id": 0,
            "device_count": 2,
            "device_list": [
                {"device_id": 0, "device_expert": [7, 2, 0, 3, 5]},
                {"device_id": 1, "device_expert": [6, 1, 4, 7, 2]},
            ],
        }
    ],
}


def write(tmp_path, data, name="expert_map.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_fixture_loads_validates_and_round_trips(tmp_path):
    plan = eplb_native.load_expert_map(write(tmp_path, FIXTURE))
    eplb_native.validate_plan(plan, 2)
    assert plan.phy2log.tolist() == [[7, 2, 0, 3, 5, 6, 1, 4, 7, 2]]
    assert plan.logcnt.tolist() == [[1, 1, 2, 1, 1, 1, 1, 2]]
    out = tmp_path / "again.json"
    eplb_native.save_expert_map(plan, out, 2)
    assert json.loads(out.read_text()) == FIXTURE
    maps = eplb_native.rank_expert_maps(plan, 2)
    assert maps[0, 0].tolist() == [2, -1, 1, 3, -1, 4, -1, 0]
    assert maps[1, 0].tolist() == [-1, 1, 4, -1, 2, -1, 0, 3]


def _mutated(change):
    data = json.loads(json.dumps(FIXTURE))
    change(data)
    return data


BAD_FILES = [
    ("layer count", lambda d: d.update(moe_layer_count=2), "moe_layer_count=2"),
    ("device count", lambda d: d["layer_list"][0].update(device_count=3), "layer 0: device_count=3"),
    (
        "unequal slots",
        lambda d: d["layer_list"][0]["device_list"][1]["device_expert"].pop(),
        "layer 0, device 1: has 4 slots",
    ),
    (
        "missing expert",
        lambda d: d["layer_list"][0]["device_list"][0]["device_expert"].__setitem__(2, 6),
        "layer 0: experts [0] have no slot",
    ),
    (
        "duplicate on device",
        lambda d: d["layer_list"][0]["device_list"][0]["device_expert"].__setitem__(1, 7),
        "rank 0 holds expert 7 twice",
    ),
    (
        "non-integer id",
        lambda d: d["layer_list"][0]["device_list"][0]["device_expert"].__setitem__(0, "7"),
        "layer 0, device 0: 'device_expert' must be a list of integer",
    ),
    ("no layer_list", lambda d: d.pop("layer_list"), "missing key 'layer_list'"),
]


@pytest.mark.parametrize(("case", "change", "message"), BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_inconsistent_files_are_rejected_naming_layer_and_device(tmp_path, case, change, message):
    path = write(tmp_path, _mutated(change))
    with pytest.raises(ValueError, match="expert_map") as info:
        eplb_native.load_expert_map(path)
    assert message in str(info.value), str(info.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        eplb_native.load_expert_map(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        eplb_native.load_expert_map(bad)


def test_save_is_atomic_and_rejects_invalid_plans(tmp_path):
    plan = eplb_native.Plan.from_phy2log(np.array([[0, 0, 1, 2]]), 3)  # expert 0 twice on rank 0
    with pytest.raises(ValueError, match="twice"):
        eplb_native.save_expert_map(plan, tmp_path / "x.json", 2)
    assert not list(tmp_path.iterdir()), "nothing is written when the plan is invalid"
