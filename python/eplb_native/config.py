"""EplbConfig: the EPLB settings users already know from vllm-ascend, validated key by key."""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args

PolicyName = Literal["random", "default_eplb", "swift_balancer", "flashlb"]
POLICY_NAMES: tuple[str, ...] = get_args(PolicyName)
# vllm-ascend's integer policy ids (policy_factory.py): 0 random, 1 default, 2 swift, 3 flashlb.
POLICY_IDS: dict[int, str] = dict(enumerate(POLICY_NAMES))

HeatStage = Literal["all", "prefill", "decode"]
HEAT_STAGES: tuple[str, ...] = get_args(HeatStage)

PlannerPlacement = Literal["rank0", "per_node", "per_rank"]
PLANNER_PLACEMENTS: tuple[str, ...] = get_args(PlannerPlacement)


def policy_name(value: object, key: str = "eplb_policy_type") -> str:
    """The registry name of a policy given by name or vllm-ascend id; ValueError otherwise."""
    if isinstance(value, bool):
        pass
    elif isinstance(value, int):
        if value in POLICY_IDS:
            return POLICY_IDS[value]
        msg = f"{key}: unknown policy id {value}; valid ids: " + ", ".join(
            f"{i} ({n})" for i, n in POLICY_IDS.items()
        )
        raise ValueError(msg)
    elif isinstance(value, str):
        if value in POLICY_NAMES:
            return value
        msg = f"{key}: unknown policy {value!r}; valid policies: {', '.join(POLICY_NAMES)}"
        close = difflib.get_close_matches(value, POLICY_NAMES, n=1)
        if close:
            msg += f" (did you mean {close[0]!r}?)"
        raise ValueError(msg)
    msg = f"{key}: expected a policy name or id, got {value!r}"
    raise ValueError(msg)


@dataclass(frozen=True)
class EplbConfig:
    """EPLB settings, immutable once built; build it with ``from_dict`` / ``from_json``.

    Example:
        >>> cfg = EplbConfig.from_dict({"dynamic_eplb": True, "num_redundant_experts": 16})
        >>> cfg.policy
        'swift_balancer'

    Attributes:
        dynamic_eplb: rebalance while serving (False: the initial placement stays).
        expert_heat_collection_interval: steps of expert heat gathered for each plan (> 0).
        algorithm_execution_interval: steps the planner worker gets before its result is
            applied (> 0; vllm-ascend deadlocks on 0).
        num_redundant_experts: extra physical slots R beyond the N logical experts (>= 0).
        expert_map_path: an existing ``expert_map_path`` JSON defining the initial placement.
        expert_map_record_path: a ``.json`` path where the placement in force is written.
        eplb_heat_collection_stage: which forward passes count as heat: all, prefill or decode
            (the caller names each step's stage: ``EplbUpdateManager.post_forward(stage=...)``).
        eplb_policy_type: the policy, by name or vllm-ascend id (0 random, 1 default_eplb,
            2 swift_balancer, 3 flashlb); stored as the name. Upstream's default is 2.
        episode_steps: steps folded into one heat episode for multi-episode policies (> 0).
        update_threshold_ratio: re-plan a layer when its balance fell below this fraction of
            its balance when last planned (0 < x <= 1); None: the policy's default.
        update_threshold_value: re-plan a layer whose balance (mean / peak) fell below this
            absolute value (0 < x <= 1); None: the policy's default.
        max_layers_per_update: cap on the layers changed per update; None: no cap.
        max_layers_per_step: layers whose weights move in one forward step (> 0).
        num_planner_threads: threads of the planning worker (0: all cores).
        planner_placement: where planner worker processes run: ``rank0`` (one worker, its plan
            broadcast to all ranks), ``per_node`` (one worker on the first rank of every node)
            or ``per_rank`` (one worker on every rank, nothing broadcast). With several
            workers all plan from the identical gathered heat, and ranks apply a plan only when
            its checksum agrees on every rank.
    """

    dynamic_eplb: bool = False
    expert_heat_collection_interval: int = 600
    algorithm_execution_interval: int = 50
    num_redundant_experts: int = 0
    expert_map_path: str | None = None
    expert_map_record_path: str | None = None
    eplb_heat_collection_stage: HeatStage = "all"
    eplb_policy_type: PolicyName = "swift_balancer"
    episode_steps: int = 16
    update_threshold_ratio: float | None = None
    update_threshold_value: float | None = None
    max_layers_per_update: int | None = None
    max_layers_per_step: int = 1
    num_planner_threads: int = 0
    planner_placement: PlannerPlacement = "rank0"
    # Filled from expert_map_path when given: (num_experts N, num_ranks D) the file implies.
    expert_map_shape: tuple[int, int] | None = field(default=None, compare=False, repr=False)

    @property
    def policy(self) -> str:
        """The policy's registry name."""
        return self.eplb_policy_type

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """The accepted configuration keys."""
        return tuple(f.name for f in fields(cls) if f.name != "expert_map_shape")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> EplbConfig:
        """Validates ``data`` key by key; unknown keys, wrong types and out-of-range values
        raise ValueError naming the key (with a did-you-mean suggestion for near misses)."""
        if data is None:
            data = {}
        if not isinstance(data, dict):
            msg = f"eplb_config: expected a mapping of keys to values, got {type(data).__name__}"
            raise ValueError(msg)
        valid = cls.keys()
        for key in data:
            if key not in valid:
                msg = f"eplb_config: unknown key {key!r}"
                close = difflib.get_close_matches(str(key), valid, n=1)
                msg += f" (did you mean {close[0]!r}?)" if close else f"; valid keys: {', '.join(valid)}"
                raise ValueError(msg)
        values: dict[str, Any] = {}
        values["dynamic_eplb"] = _bool(data, "dynamic_eplb", False)
        values["expert_heat_collection_interval"] = _int(data, "expert_heat_collection_interval", 600, 1)
        values["algorithm_execution_interval"] = _int(data, "algorithm_execution_interval", 50, 1)
        values["episode_steps"] = _int(data, "episode_steps", 16, 1)
        values["max_layers_per_step"] = _int(data, "max_layers_per_step", 1, 1)
        values["num_planner_threads"] = _int(data, "num_planner_threads", 0, 0)
        values["max_layers_per_update"] = _optional_int(data, "max_layers_per_update", 1)
        values["update_threshold_ratio"] = _optional_fraction(data, "update_threshold_ratio")
        values["update_threshold_value"] = _optional_fraction(data, "update_threshold_value")
        values["eplb_heat_collection_stage"] = _choice(data, "eplb_heat_collection_stage", "all", HEAT_STAGES)
        values["planner_placement"] = _choice(data, "planner_placement", "rank0", PLANNER_PLACEMENTS)
        values["eplb_policy_type"] = policy_name(data.get("eplb_policy_type", "swift_balancer"))
        values["expert_map_record_path"] = _record_path(data.get("expert_map_record_path"))

        redundant_given = "num_redundant_experts" in data
        num_redundant = _int(data, "num_redundant_experts", 0, 0)
        map_path = data.get("expert_map_path")
        if map_path is not None:
            from eplb_native.expert_map import load_expert_map_with_ranks

            if not isinstance(map_path, (str, os.PathLike)):
                msg = f"expert_map_path: expected a path to a .json file, got {map_path!r}"
                raise ValueError(msg)
            path = Path(map_path)
            if path.suffix != ".json" or not path.is_file():
                msg = f"expert_map_path: {str(path)!r} is not an existing .json file"
                raise ValueError(msg)
            plan, num_ranks = load_expert_map_with_ranks(path)
            implied = plan.num_physical - plan.num_experts
            if redundant_given and implied != num_redundant:
                msg = (
                    f"num_redundant_experts: set to {num_redundant}, but expert_map_path {str(path)!r} "
                    f"places {plan.num_experts} experts on {plan.num_physical} slots, i.e. "
                    f"{implied} redundant experts; make them agree or drop one of the two keys"
                )
                raise ValueError(msg)
            num_redundant = implied
            values["expert_map_path"] = str(path)
            values["expert_map_shape"] = (plan.num_experts, num_ranks)
        values["num_redundant_experts"] = num_redundant
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> EplbConfig:
        """Parses a JSON object string (vLLM's ``additional_config`` style) and validates it."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            msg = f"eplb_config: not valid JSON ({error})"
            raise ValueError(msg) from error
        return cls.from_dict(data)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> EplbConfig:
        """Reads and validates a JSON config file."""
        return cls.from_json(Path(path).read_text())

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a plain dict that ``from_dict`` accepts."""
        return {key: getattr(self, key) for key in self.keys()}

    def with_updates(self, **changes: Any) -> EplbConfig:
        """A copy with some keys changed, validated like ``from_dict``."""
        merged = {k: v for k, v in self.to_dict().items() if v is not None}
        merged.update(changes)
        if "expert_map_path" in changes and "num_redundant_experts" not in changes:
            merged.pop("num_redundant_experts", None)
        return type(self).from_dict(merged)

    def thresholds(self, num_ranks: int) -> tuple[float, float]:
        """(update_threshold_ratio, update_threshold_value) in force for ``num_ranks`` ranks:
        the configured values, else FlashLB's published defaults (0.9, 0.85), or (0.95, 0.9)
        for fewer than 32 ranks."""
        ratio, value = (0.95, 0.9) if num_ranks < 32 else (0.9, 0.85)
        return (
            ratio if self.update_threshold_ratio is None else self.update_threshold_ratio,
            value if self.update_threshold_value is None else self.update_threshold_value,
        )


def _type_error(key: str, expected: str, value: object) -> ValueError:
    return ValueError(f"{key}: expected {expected}, got {value!r} ({type(value).__name__})")


def _bool(data: dict[str, Any], key: str, default: bool) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise _type_error(key, "true or false", value)
    return value


def _int(data: dict[str, Any], key: str, default: int, minimum: int) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _type_error(key, "an integer", value)
    if value < minimum:
        msg = f"{key}: must be >= {minimum}, got {value}"
        if key == "algorithm_execution_interval":
            msg += " (0 would never hand the plan back: vllm-ascend deadlocks on it)"
        raise ValueError(msg)
    return value


def _choice(data: dict[str, Any], key: str, default: str, choices: tuple[str, ...]) -> str:
    value = data.get(key, default)
    if value in choices:
        return str(value)
    msg = f"{key}: expected one of {', '.join(choices)}, got {value!r}"
    close = difflib.get_close_matches(value, choices, n=1) if isinstance(value, str) else []
    if close:
        msg += f" (did you mean {close[0]!r}?)"
    raise ValueError(msg)


def _optional_int(data: dict[str, Any], key: str, minimum: int) -> int | None:
    if data.get(key) is None:
        return None
    return _int(data, key, 0, minimum)


def _optional_fraction(data: dict[str, Any], key: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _type_error(key, "a number in (0, 1]", value)
    if not 0.0 < float(value) <= 1.0:
        msg = f"{key}: must be in (0, 1], got {value}"
        raise ValueError(msg)
    return float(value)


def _record_path(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)) or Path(value).suffix != ".json":
        msg = f"expert_map_record_path: expected a path ending in .json, got {value!r}"
        raise ValueError(msg)
    parent = Path(value).parent
    if not parent.is_dir():
        msg = f"expert_map_record_path: folder {str(parent)!r} does not exist"
        raise ValueError(msg)
    return str(value)


__all__ = ["HEAT_STAGES", "PLANNER_PLACEMENTS", "POLICY_IDS", "POLICY_NAMES", "EplbConfig", "PlannerPlacement",
           "PolicyName", "policy_name"]
