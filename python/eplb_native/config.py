"""EplbConfig: the EPLB settings users already know from vllm-ascend, plus one key per option of
the policies, each validated with bounds; ``policy_options`` is the one way from a config to
the policy and options that plan."""

from __future__ import annotations

import difflib
import math
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, get_args

from eplb_native.flashlb import FlashLBOptions
from eplb_native.json_files import parse_json, read_json_file
from eplb_native.planning import (
    OPTIONS_TYPES,
    POLICY_IDS,
    POLICY_NAMES,
    PolicyName,
    SwiftBalancerOptions,
    policy_name,
)

HeatStage = Literal["all", "prefill", "decode"]
HEAT_STAGES: tuple[str, ...] = get_args(HeatStage)

PlannerPlacement = Literal["rank0", "per_node", "per_rank"]
PLANNER_PLACEMENTS: tuple[str, ...] = get_args(PlannerPlacement)

#: Keys of older vllm-ascend releases (and of its Model Runner V2) -> the key to use instead
#: (None: there is no equivalent).
RENAMED_KEYS: dict[str, str | None] = {
    "num_iterations_eplb_update": "expert_heat_collection_interval",
    "num_wait_worker_iterations": "algorithm_execution_interval",
    "init_redundancy_expert": "num_redundant_experts",
    "gate_eplb": None,
    "load_collection_phase": "eplb_heat_collection_stage",
}


@dataclass(frozen=True)
class _Bounds:
    """What one key accepts: ``kind`` int, number (finite float), bool, choice or path (ending
    in ``suffix``); the closed range [low, high] of numbers (``open_low``: low excluded); the
    choices; the policies whose options it sets (empty: it is no policy option)."""

    kind: Literal["int", "number", "bool", "choice", "path"]
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    choices: tuple[str, ...] = ()
    policies: tuple[str, ...] = ()
    suffix: str = ".json"


_FLASHLB = ("flashlb",)
#: Every key's bounds. The largest values keep a window, a search or a buffer within what one
#: host can hold; the policy options are None until set (the policy's own default applies).
_KEYS: dict[str, _Bounds] = {
    "dynamic_eplb": _Bounds("bool"),
    "expert_heat_collection_interval": _Bounds("int", 1, 100_000),
    "algorithm_execution_interval": _Bounds("int", 1, 100_000),
    "num_redundant_experts": _Bounds("int", 0, 65_536),
    "expert_map_path": _Bounds("path"),
    "expert_map_record_path": _Bounds("path"),
    "expert_heat_dump_path": _Bounds("path", suffix=".npz"),
    "eplb_heat_collection_stage": _Bounds("choice", choices=HEAT_STAGES),
    "eplb_policy_type": _Bounds("choice", choices=POLICY_NAMES),
    "max_layers_per_step": _Bounds("int", 1, 1024),
    "num_planner_threads": _Bounds("int", 0, 1024),
    "planner_placement": _Bounds("choice", choices=PLANNER_PLACEMENTS),
    "max_plan_wait_s": _Bounds("number", 0.0, 3600.0),
    "update_threshold_ratio": _Bounds("number", 0.0, 1.0, open_low=True, policies=_FLASHLB),
    "update_threshold_value": _Bounds("number", 0.0, 1.0, open_low=True, policies=_FLASHLB),
    "max_layers_per_update": _Bounds("int", 1, 100_000, policies=("swift_balancer", "flashlb")),
    "max_moves_per_layer": _Bounds("int", 0, 1_000_000, policies=("swift_balancer", "flashlb")),
    "incremental": _Bounds("bool", policies=_FLASHLB),
    "z_score": _Bounds("number", 0.0, 10.0, policies=_FLASHLB),
    "max_depth": _Bounds("int", 1, 64, policies=_FLASHLB),
    "width": _Bounds("int", 1, 1024, policies=_FLASHLB),
    "episode_steps": _Bounds("int", 1, 100_000, policies=_FLASHLB),
    "max_episodes": _Bounds("int", 1, 100_000, policies=_FLASHLB),
    "keep_margin": _Bounds("number", 0.0, 1.0, policies=_FLASHLB),
}


@dataclass(frozen=True)
class EplbConfig:
    """EPLB settings, validated key by key when built (``EplbConfig(...)``, ``from_dict``,
    ``from_json``), immutable afterwards. Bad values raise ValueError naming the key. None (JSON
    null) for any key means "not set": the key's default below applies (for a policy option,
    the policy's own default).

    Example:
        >>> cfg = EplbConfig.from_dict({"eplb_config": {"dynamic_eplb": True, "eplb_policy_type": 3,
        ...                                             "episode_steps": 8}})
        >>> policy, options = cfg.policy_options()
        >>> policy, options.episode_steps
        ('flashlb', 8)

    vllm-ascend's keys (same names, defaults and meaning):
        dynamic_eplb: rebalance while serving (False: the initial placement stays).
        expert_heat_collection_interval: counted steps of expert heat each plan is made from
            (1 .. 100000); with a prefill or decode heat stage only steps of that stage count.
        algorithm_execution_interval: steps after the heat window before its plan may be
            applied (1 .. 100000; vllm-ascend deadlocks on 0).
        num_redundant_experts: extra physical slots R beyond the N logical experts
            (0 .. 65536); None: 0, or what ``expert_map_path`` implies (they must agree when
            both are given; checked when the map is read, ``runtime.initial_plan``).
        expert_map_path: a ``.json`` expert map defining the initial placement (read by the
            runtime, not here).
        expert_map_record_path: a ``.json`` path where the placement in force is written.
        eplb_heat_collection_stage: which forward passes count as heat: all, prefill or decode
            (the caller names each step's stage: ``EplbUpdateManager.post_forward(stage=...)``).
        eplb_policy_type: the policy, by name or vllm-ascend id (0 random, 1 default_eplb,
            2 swift_balancer, 3 flashlb); stored as the name. Upstream's default is 2.

    Runtime keys:
        max_layers_per_step: layers whose weights move in one forward step (1 .. 1024).
        num_planner_threads: threads of the planning worker (0: all cores; .. 1024).
        planner_placement: where planner workers run: ``rank0`` (one worker, its plan
            broadcast to all ranks), ``per_node`` (one on the first rank of every node) or
            ``per_rank`` (one on every rank, nothing broadcast). With several workers all plan
            from the identical gathered heat, and ranks apply a plan only when its checksum
            agrees on every rank.
        max_plan_wait_s: longest the serving thread waits for the planner at the step a plan
            is due (0 .. 3600 s). 0 (default): never; the plan is picked up at the first step
            that finds it ready. A positive value gives a fixed schedule when planning is
            quicker than that.
        expert_heat_dump_path: a ``.npz`` path where rank 0 writes each heat window, in the
            simulator's trace format (``load`` int64 [T, L, N]), replacing the previous one;
            ``eplb-native plan --trace`` turns it into an ``expert_map_path`` file for the next
            start.

    Policy options (None: the policy's default; a key the chosen policy does not take is an
    error, so every key set reaches its policy):
        update_threshold_ratio, update_threshold_value: flashlb, ``FlashLBOptions``' layer
            selection thresholds (0 < x <= 1).
        max_layers_per_update: flashlb and swift_balancer: layers switched per update at most.
        max_moves_per_layer: swift_balancer (default 32) and flashlb's incremental mode
            (needs ``incremental``): weight copies per layer at most.
        incremental, z_score (0 .. 10), max_depth (1 .. 64), width (1 .. 1024),
            episode_steps, max_episodes (1 .. 100000), keep_margin (0 .. 1): flashlb, as in
            ``FlashLBOptions``; ``episode_steps`` (steps summed into one heat episode) is the
            only place an episode length is set.
    """

    dynamic_eplb: bool = False
    expert_heat_collection_interval: int = 600
    algorithm_execution_interval: int = 50
    num_redundant_experts: int | None = None
    expert_map_path: str | None = None
    expert_map_record_path: str | None = None
    eplb_heat_collection_stage: HeatStage = "all"
    eplb_policy_type: PolicyName | int = "swift_balancer"
    max_layers_per_step: int = 1
    num_planner_threads: int = 0
    planner_placement: PlannerPlacement = "rank0"
    max_plan_wait_s: float = 0.0
    expert_heat_dump_path: str | None = None
    update_threshold_ratio: float | None = None
    update_threshold_value: float | None = None
    max_layers_per_update: int | None = None
    max_moves_per_layer: int | None = None
    incremental: bool | None = None
    z_score: float | None = None
    max_depth: int | None = None
    width: int | None = None
    episode_steps: int | None = None
    max_episodes: int | None = None
    keep_margin: float | None = None

    def __post_init__(self) -> None:
        for key in _KEYS:
            if getattr(self, key) is None:
                object.__setattr__(self, key, _DEFAULTS[key])
        policy = policy_name(self.eplb_policy_type)
        object.__setattr__(self, "eplb_policy_type", policy)
        for key, bounds in _KEYS.items():
            value = getattr(self, key)
            if value is None or key == "eplb_policy_type":
                continue
            object.__setattr__(self, key, _check(key, value, bounds))
            if bounds.policies and policy not in bounds.policies:
                msg = (f"{key}: an option of {' and '.join(bounds.policies)}; eplb_policy_type is "
                       f"{policy}, which does not take it (remove the key or change the policy)")
                raise ValueError(msg)
        if policy == "flashlb" and self.max_moves_per_layer is not None and not self.incremental:
            msg = "max_moves_per_layer: flashlb caps weight copies in its incremental mode only; set incremental: true"
            raise ValueError(msg)

    @property
    def policy(self) -> PolicyName:
        """The policy's registry name."""
        name: PolicyName = self.eplb_policy_type  # type: ignore[assignment]  # a name after __post_init__
        return name

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """The accepted configuration keys."""
        return tuple(f.name for f in fields(cls))

    def policy_options(self) -> tuple[PolicyName, Any]:
        """(policy name, its options object or None): the keys set for the policy, the
        options type's defaults for the others."""
        options_type = OPTIONS_TYPES[self.policy]
        if options_type is None:
            return self.policy, None
        names = {f.name for f in fields(options_type)}
        given = {key: getattr(self, key) for key in names if getattr(self, key, None) is not None}
        options: FlashLBOptions | SwiftBalancerOptions = options_type(**given)
        return self.policy, options

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> EplbConfig:
        """Validates ``data`` key by key (vllm-ascend's ``additional_config["eplb_config"]``, or
        the ``{"eplb_config": {...}}`` wrapper itself). Unknown keys, keys of older
        vllm-ascend releases, wrong types and out-of-range values raise ValueError naming the
        key (with the key to use, or a did-you-mean suggestion). Reads no file."""
        if data is None:
            data = {}
        if not isinstance(data, dict):
            msg = f"eplb_config: expected a mapping of keys to values, got {type(data).__name__}"
            raise ValueError(msg)
        if "eplb_config" in data:
            if len(data) != 1:
                others = sorted(str(key) for key in data if key != "eplb_config")
                msg = (f"eplb_config: give the EPLB keys alone or wrapped as {{'eplb_config': {{...}}}}, "
                       f"not next to other keys ({', '.join(others)})")
                raise ValueError(msg)
            return cls.from_dict(data["eplb_config"])
        valid = cls.keys()
        for key in data:
            if key in RENAMED_KEYS:
                new = RENAMED_KEYS[key]
                hint = (f"use {new!r} instead" if new is not None else
                        "it has no equivalent here (dynamic_eplb turns rebalancing on); remove it")
                msg = f"{key}: a key of older vllm-ascend releases; {hint}"
                raise ValueError(msg)
            if key not in valid:
                msg = f"eplb_config: unknown key {key!r}"
                close = difflib.get_close_matches(str(key), valid, n=1)
                msg += f" (did you mean {close[0]!r}?)" if close else f"; valid keys: {', '.join(valid)}"
                raise ValueError(msg)
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> EplbConfig:
        """Parses a JSON object string (vLLM's ``additional_config`` style) and validates it;
        text that is no readable JSON is a ValueError naming ``eplb_config``."""
        try:
            data = parse_json(text)
        except ValueError as error:
            msg = f"eplb_config: {error}"
            raise ValueError(msg) from error
        return cls.from_dict(data)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> EplbConfig:
        """Reads and validates a JSON config file; a file that cannot be read as JSON is a
        ValueError naming ``eplb_config`` and the path."""
        try:
            data = read_json_file(path)
        except ValueError as error:
            msg = f"eplb_config: {path}: {error}"
            raise ValueError(msg) from error
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """The keys set (not None) as a plain dict that ``from_dict`` accepts."""
        return {key: getattr(self, key) for key in self.keys() if getattr(self, key) is not None}

    def with_updates(self, **changes: Any) -> EplbConfig:
        """A copy with some keys changed, validated like ``from_dict``."""
        return type(self).from_dict({**self.to_dict(), **changes})


#: Each key's default (what None stands for).
_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(EplbConfig)}


def _check(key: str, value: object, bounds: _Bounds) -> object:
    """``value`` validated against ``bounds`` (ints and floats as Python scalars); ValueError
    naming ``key``."""
    if bounds.kind == "bool":
        if not isinstance(value, bool):
            raise _type_error(key, "true or false", value)
        return value
    if bounds.kind == "choice":
        if value in bounds.choices:
            return str(value)
        msg = f"{key}: expected one of {', '.join(bounds.choices)}, got {value!r}"
        close = difflib.get_close_matches(value, bounds.choices, n=1) if isinstance(value, str) else []
        if close:
            msg += f" (did you mean {close[0]!r}?)"
        raise ValueError(msg)
    if bounds.kind == "path":
        if not isinstance(value, (str, os.PathLike)) or Path(value).suffix != bounds.suffix:
            msg = f"{key}: expected a path ending in {bounds.suffix}, got {value!r}"
            raise ValueError(msg)
        return str(value)
    if bounds.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(key, "an integer", value)
    elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _type_error(key, "a finite number", value)
    low, high = bounds.low, bounds.high
    assert low is not None  # numeric keys have both bounds
    assert high is not None
    below = value <= low if bounds.open_low else value < low
    if below or value > high:
        interval = f"{'(' if bounds.open_low else '['}{_number(low)}, {_number(high)}]"
        msg = f"{key}: must be in {interval}, got {value}"
        if key == "algorithm_execution_interval" and value == 0:
            msg += " (0 would never hand the plan back: vllm-ascend deadlocks on it)"
        raise ValueError(msg)
    return value if bounds.kind == "int" else float(value)


def _number(value: float | None) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _type_error(key: str, expected: str, value: object) -> ValueError:
    return ValueError(f"{key}: expected {expected}, got {value!r} ({type(value).__name__})")


__all__ = ["HEAT_STAGES", "PLANNER_PLACEMENTS", "POLICY_IDS", "POLICY_NAMES", "RENAMED_KEYS", "EplbConfig",
           "HeatStage", "PlannerPlacement", "PolicyName", "policy_name"]
