"""The ``expert_map_path`` JSON format that vllm-ascend reads, to and from a Plan.

Format::

    {"moe_layer_count": L,
     "layer_list": [{"layer_id": l, "device_count": D,
                     "device_list": [{"device_id": r, "device_expert": [S expert ids]}, ...]},
                    ...]}

Device ``r``'s ``device_expert`` lists the logical experts of its S slots in slot order, so the
physical slot of ``device_expert[s]`` is ``r * S + s``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from eplb_native.json_files import read_json_file
from eplb_native.plan import Plan, validate_plan

logger = logging.getLogger(__name__)



def _require(condition: bool, where: str, message: str) -> None:
    if not condition:
        msg = f"expert_map: {where}: {message}"
        raise ValueError(msg)


def plan_from_expert_map_dict(
    data: Any, source: str = "expert_map", *, allow_duplicate_on_rank: bool = False
) -> tuple[Plan, int]:
    """Reads the parsed JSON ``data`` into (Plan, D). Raises ValueError naming layer and device."""
    _require(isinstance(data, dict), source, "top level must be a JSON object")
    _require("layer_list" in data, source, "missing key 'layer_list'")
    layers = data["layer_list"]
    _require(isinstance(layers, list) and len(layers) > 0, source, "'layer_list' must be a non-empty list")
    if "moe_layer_count" in data:
        _require(
            data["moe_layer_count"] == len(layers),
            source,
            f"moe_layer_count={data['moe_layer_count']} but layer_list has {len(layers)} layers",
        )
    tables: list[list[int]] = []
    num_ranks = num_slots = -1
    for position, layer in enumerate(layers):
        _require(isinstance(layer, dict), f"{source}: layer_list[{position}]", "must be an object")
        layer_id = layer.get("layer_id", position)
        where = f"{source}: layer {layer_id}"
        _require(layer_id == position, where, f"layer_id must be {position} (layers in order)")
        devices = layer.get("device_list")
        _require(isinstance(devices, list) and len(devices) > 0, where, "'device_list' must be a non-empty list")
        if "device_count" in layer:
            _require(
                layer["device_count"] == len(devices),
                where,
                f"device_count={layer['device_count']} but device_list has {len(devices)} devices",
            )
        if num_ranks < 0:
            num_ranks = len(devices)
        _require(len(devices) == num_ranks, where, f"has {len(devices)} devices, layer 0 has {num_ranks}")
        row: list[int] = []
        for device_pos, device in enumerate(devices):
            device_where = f"{where}, device {device_pos}"
            _require(isinstance(device, dict), device_where, "must be an object")
            _require(
                device.get("device_id", device_pos) == device_pos,
                device_where,
                f"device_id must be {device_pos} (devices in order)",
            )
            experts = device.get("device_expert")
            _require(
                isinstance(experts, list)
                and all(isinstance(e, int) and not isinstance(e, bool) for e in experts),
                device_where,
                "'device_expert' must be a list of integer expert ids",
            )
            if num_slots < 0:
                num_slots = len(experts)
            _require(
                len(experts) == num_slots and num_slots > 0,
                device_where,
                f"has {len(experts)} slots, expected {num_slots} (every device holds the same number)",
            )
            # Experts are 0..N-1, each on >= 1 of the layer's D * S slots: ids are below D * S.
            bad = next((e for e in experts if not 0 <= e < num_ranks * num_slots), None)
            _require(
                bad is None,
                device_where,
                f"expert id {bad} outside [0, {num_ranks * num_slots}) (experts are numbered "
                f"0..N-1 and each needs one of the layer's {num_ranks * num_slots} slots)",
            )
            row.extend(experts)
        tables.append(row)
    table = np.asarray(tables, dtype=np.int64)
    num_experts = int(table.max()) + 1
    for layer_idx, row_ids in enumerate(table):
        missing = np.setdiff1d(np.arange(num_experts), row_ids)
        _require(
            missing.size == 0,
            f"{source}: layer {layer_idx}",
            f"experts {missing.tolist()} have no slot (experts are 0..{num_experts - 1})",
        )
    plan = Plan.from_phy2log(table, num_experts)
    try:
        validate_plan(plan, num_ranks, allow_duplicate_on_rank=allow_duplicate_on_rank)
    except ValueError as error:
        msg = f"expert_map: {source}: {error}"
        raise ValueError(msg) from error
    return plan, num_ranks


def load_expert_map(path: str | os.PathLike[str], *, allow_duplicate_on_rank: bool = False) -> Plan:
    """Reads a vllm-ascend ``expert_map_path`` JSON file into a Plan.

    Raises ValueError naming the file, layer and device for inconsistent files (wrong counts,
    missing experts, unequal slots per device). The number of ranks is the file's
    ``device_count``; see ``load_expert_map_with_ranks`` to get it.
    """
    return load_expert_map_with_ranks(path, allow_duplicate_on_rank=allow_duplicate_on_rank)[0]


def load_expert_map_with_ranks(
    path: str | os.PathLike[str], *, allow_duplicate_on_rank: bool = False
) -> tuple[Plan, int]:
    """As ``load_expert_map``, also returning D, the number of devices in the file."""
    file_path = Path(path)
    try:
        data = read_json_file(file_path)
    except ValueError as error:
        msg = f"expert_map: {file_path}: {error}"
        raise ValueError(msg) from error
    return plan_from_expert_map_dict(
        data, str(file_path), allow_duplicate_on_rank=allow_duplicate_on_rank
    )


def expert_map_dict(
    plan: Plan, num_ranks: int, *, allow_duplicate_on_rank: bool = False
) -> dict[str, Any]:
    """The JSON object of ``plan`` on ``num_ranks`` devices (see the module docstring)."""
    validate_plan(plan, num_ranks, allow_duplicate_on_rank=allow_duplicate_on_rank)
    num_slots = plan.slots_per_rank(num_ranks)
    table = plan.phy2log.reshape(plan.num_layers, num_ranks, num_slots)
    return {
        "moe_layer_count": plan.num_layers,
        "layer_list": [
            {
                "layer_id": layer_idx,
                "device_count": num_ranks,
                "device_list": [
                    {"device_id": rank, "device_expert": table[layer_idx, rank].tolist()}
                    for rank in range(num_ranks)
                ],
            }
            for layer_idx in range(plan.num_layers)
        ],
    }


def save_expert_map(
    plan: Plan,
    path: str | os.PathLike[str],
    num_ranks: int,
    *,
    allow_duplicate_on_rank: bool = False,
) -> None:
    """Writes ``plan`` on ``num_ranks`` devices as an ``expert_map_path`` JSON file.

    The file is written to a temporary name and renamed, so a reader never sees half a file.
    """
    file_path = Path(path)
    payload = json.dumps(
        expert_map_dict(plan, num_ranks, allow_duplicate_on_rank=allow_duplicate_on_rank), indent=1
    )
    tmp_path = file_path.with_name(file_path.name + ".tmp")
    try:
        tmp_path.write_text(payload)
        tmp_path.replace(file_path)
    except OSError as error:
        msg = f"expert_map: cannot write {file_path} ({error.strerror or error})"
        raise ValueError(msg) from error
    logger.info("wrote expert map (%d layers, %d devices) to %s", plan.num_layers, num_ranks, file_path)
