"""Fuzzing every public entry point: policies, the stateful interface, evaluate and the plan
maps, expert-map files, the config, the trace readers and the CLI. The only allowed outcomes
are a valid result or a ValueError / TypeError naming the argument (the file, for readers);
the CLI returns 0 or 2 and prints no traceback. Each test runs under a memory cap, so an
absurd allocation fails it.

Inputs are mostly near-valid problems with one or two arguments replaced by hostile values
(absurd sizes and ids, NaN, complex, strings, ragged lists, truncated or corrupted files), so
that the checks deep inside each call are reached. Mid-size valid values (a 10**5-step series)
are left out: they are legal and only cost time.

Examples per test: ``EPLB_FUZZ_EXAMPLES`` (default 100: the file runs in about 10 s on two
cores); ``EPLB_FUZZ_EXAMPLES=2000 pytest tests/python/test_fuzz.py`` is a deep run.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from memory_cap import memory_cap

import eplb_native
from eplb_native import (
    EplbConfig,
    FlashLBOptions,
    Plan,
    SwiftBalancerOptions,
    default_placement,
    evaluate,
    make_policy,
    rebalance_experts,
    validate_plan,
)
from eplb_native.cli import main
from eplb_native.config import POLICY_NAMES
from eplb_native.expert_map import expert_map_dict, load_expert_map_with_ranks
from eplb_native.flashlb import layer_balance
from eplb_native.sim.traces import TRACE_EXTENSIONS, load_trace

settings.register_profile(
    "eplb-fuzz",
    max_examples=int(os.environ.get("EPLB_FUZZ_EXAMPLES", "100")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
FUZZ = settings.get_profile("eplb-fuzz")


@pytest.fixture(autouse=True)
def _capped() -> Iterator[None]:
    with memory_cap():
        yield


def outcome(call: Callable[[], Any], names: Sequence[str]) -> Any:
    """``call()``'s result, or None when it raised ValueError / TypeError whose message names one
    of ``names``; any other exception (or an unnamed error) fails the test."""
    try:
        return call()
    except (ValueError, TypeError) as error:
        caught: ValueError | TypeError = error
    message = str(caught)
    assert any(name in message for name in names), f"{type(caught).__name__} names none of {list(names)}: {message}"
    return None


# --- values ---------------------------------------------------------------------------------

ABSURD_INTS = st.sampled_from([2**31, 2**40, 2**62, 2**63 - 1, 2**63, 2**70, -(2**63), -1])
WEIRD = st.one_of(
    st.booleans(), st.floats(allow_nan=True, allow_infinity=True), st.none(), st.text(max_size=3),
    st.just([1, 2]), st.just(np.int64(3)), st.just(1 + 2j),
)
COUNTS = st.one_of(st.integers(0, 12), st.integers(-3, 40), ABSURD_INTS, WEIRD)
FLOATS = st.one_of(
    st.floats(0, 1000),
    st.sampled_from([0.0, 5e307, 1e160, 1e-300, -1.0, math.nan, math.inf, 1.7976931348623157e308]),
)


def hostile_array(draw: st.DrawFn, shape: tuple[int, ...], ids: bool) -> Any:
    """An array-like close to ``shape`` whose dtype, shape or values are wrong in some way."""
    kind = draw(st.sampled_from(["values", "dtype", "shape", "ragged", "scalar"]))
    base = np.zeros(shape, dtype=np.int64 if ids else np.float64)
    if kind == "values" and base.size:
        flat = base.reshape(-1)
        index = draw(st.integers(0, flat.size - 1))
        value = draw(st.one_of(ABSURD_INTS, st.integers(-3, 20))) if ids else draw(FLOATS)
        if not -(2**63) <= value < 2**63:  # beyond int64: nested lists, as a user would pass
            values = flat.tolist()
            values[index] = value
            return np.reshape(np.array(values, dtype=object), shape).tolist()
        flat[index] = value
        return base
    if kind == "dtype":
        dtype = draw(st.sampled_from(["complex128", "object", "U3", "float32", "float64", "bool", "uint64", "int8"]))
        return (base + (0.5 if ids and dtype.startswith("float") else 0)).astype(dtype)
    if kind == "shape":
        return np.zeros(draw(st.lists(st.integers(0, 4), max_size=4)), dtype=base.dtype)
    if kind == "ragged":
        return [[1.0, 2.0], [3.0]]
    return draw(WEIRD)


@st.composite
def problems(draw: st.DrawFn) -> dict[str, Any]:
    """Valid arguments of rebalance_experts (load [L, N], P, G, H, D and friends)."""
    num_layers = draw(st.integers(1, 3))
    num_experts = draw(st.integers(1, 10))
    num_ranks = draw(st.integers(1, 4))
    num_slots = draw(st.integers(-(-num_experts // num_ranks), -(-num_experts // num_ranks) + 2))
    num_groups = draw(st.sampled_from([g for g in range(1, num_experts + 1) if num_experts % g == 0]))
    num_nodes = draw(st.sampled_from([h for h in range(1, num_ranks + 1) if num_ranks % h == 0]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    load = rng.integers(0, 100, size=(num_layers, num_experts)).astype(np.float64)
    num_physical = num_ranks * num_slots
    current = default_placement(num_layers, num_experts, num_ranks, num_physical - num_experts)
    history = None
    if draw(st.booleans()):
        history = rng.integers(0, 50, size=(draw(st.integers(1, 20)), num_layers, num_experts))
        if draw(st.booleans()):
            history = history.astype(np.float64)
    return {
        "load": load, "num_replicas": num_physical, "num_groups": num_groups, "num_nodes": num_nodes,
        "num_ranks": num_ranks, "policy": draw(st.sampled_from(POLICY_NAMES)),
        "current": current if draw(st.booleans()) else current.phy2log, "history": history,
        "num_threads": draw(st.integers(0, 3)), "seed": draw(st.integers(0, 99)),
    }  # fmt: skip


OPTION_FIELDS = [f.name for f in fields(FlashLBOptions)] + [f.name for f in fields(SwiftBalancerOptions)]


def options_for(draw: st.DrawFn, policy: str) -> Callable[[], Any]:
    """A thunk building the policy's options with some fields fuzzed (construction may raise)."""
    if policy not in ("flashlb", "swift_balancer") or draw(st.booleans()):
        return lambda: None
    cls = FlashLBOptions if policy == "flashlb" else SwiftBalancerOptions
    changes = {
        f.name: draw(st.one_of(COUNTS, FLOATS)) for f in fields(cls) if draw(st.integers(0, 3)) == 0
    }
    return lambda: cls(**changes)


def mutate(draw: st.DrawFn, args: dict[str, Any], shapes: dict[str, tuple[tuple[int, ...], bool]]) -> None:
    """Replaces 0-2 arguments of ``args`` with hostile values (arrays by ``shapes``)."""
    for name in draw(st.lists(st.sampled_from(sorted(args)), max_size=2, unique=True)):
        if name in shapes:
            shape, ids = shapes[name]
            args[name] = hostile_array(draw, shape, ids)
        elif name == "policy":
            args[name] = draw(st.one_of(st.sampled_from(POLICY_NAMES), st.text(max_size=8), WEIRD))
        else:
            args[name] = draw(COUNTS)


# --- planning -------------------------------------------------------------------------------


@FUZZ
@given(data=st.data())
def test_rebalance_experts(data: st.DataObject) -> None:
    args = data.draw(problems())
    load_shape = args["load"].shape
    current = args["current"]
    shapes = {"load": (load_shape, False), "current": (current_shape(current), True)}
    if args["history"] is not None:
        shapes["history"] = (args["history"].shape, args["history"].dtype.kind == "i")
    policy = args["policy"]
    mutate(data.draw, args, shapes)
    options = options_for(data.draw, policy if isinstance(policy, str) else "")
    names = [*args, "num_gpus", "options", *OPTION_FIELDS]
    plan = outcome(lambda: rebalance_experts(**args, options=options()), names)
    if plan is not None:
        assert plan.phy2log.shape == (np.asarray(args["load"]).shape[0], args["num_replicas"])
        validate_plan(plan, args["num_ranks"], allow_duplicate_on_rank=True)


def current_shape(current: Any) -> tuple[int, ...]:
    return (current.phy2log if isinstance(current, Plan) else current).shape  # type: ignore[no-any-return]


@FUZZ
@given(data=st.data())
def test_stateful_policy(data: st.DataObject) -> None:
    problem = data.draw(problems())
    num_ranks = problem["num_ranks"]
    table = problem["current"]
    table = (table.phy2log if isinstance(table, Plan) else table).reshape(len(problem["load"]), num_ranks, -1)
    steps = data.draw(st.sampled_from([(), (3,)]))
    workload = np.random.default_rng(0).random((*steps, *table.shape)) * 10
    args = {"name": problem["policy"], "num_groups": 1, "num_nodes": 1, "num_threads": 1, "seed": 0,
            "current_table": table, "workload": workload}  # fmt: skip
    mutate(data.draw, args, {"current_table": (table.shape, True), "workload": (workload.shape, False)})
    options = options_for(data.draw, problem["policy"])
    names = [*args, "options", "policy", *OPTION_FIELDS, "num_replicas", "num_experts", "load"]

    def call() -> Any:
        policy = make_policy(args["name"], args["num_groups"], args["num_nodes"], options(),
                             args["num_threads"], args["seed"])  # fmt: skip
        return policy.rebalance(args["current_table"], args["workload"])

    result = outcome(call, names)
    if result is not None:
        changed, layers, new_table = result
        assert isinstance(changed, bool)
        assert new_table.shape == np.asarray(args["current_table"]).shape
        assert len(set(layers.tolist())) == layers.size
        assert ((layers >= 0) & (layers < new_table.shape[0])).all()


# --- plans, maps and evaluation ------------------------------------------------------------


@st.composite
def phy2log_tables(draw: st.DrawFn) -> tuple[Any, Any, int]:
    """(phy2log, num_experts, num_ranks), valid or with one part hostile."""
    problem = draw(problems())
    current = problem["current"]
    table = (current.phy2log if isinstance(current, Plan) else current).copy()
    num_experts: Any = problem["load"].shape[1] if draw(st.booleans()) else None
    num_ranks: Any = problem["num_ranks"]
    part = draw(st.sampled_from(["none", "table", "experts", "ranks"]))
    if part == "table":
        table = hostile_array(draw, table.shape, ids=True)
    elif part == "experts":
        num_experts = draw(COUNTS)
    elif part == "ranks":
        num_ranks = draw(COUNTS)
    return table, num_experts, num_ranks


@FUZZ
@given(case=phy2log_tables(), data=st.data())
def test_plan_maps_and_evaluation(case: tuple[Any, Any, int], data: st.DataObject) -> None:
    table, num_experts, num_ranks = case
    names = ["phy2log", "num_experts", "num_ranks", "plan", "load", "slot_load", "old", "new",
             "num_physical", "table", "log2phy", "logcnt", "num_layers", "num_redundant_experts"]  # fmt: skip
    plan = outcome(lambda: Plan.from_phy2log(table, num_experts), names)
    if plan is None:
        return
    rng = np.random.default_rng(1)
    load: Any = rng.random((data.draw(st.integers(1, 3)), *plan.logcnt.shape)) * 50
    if data.draw(st.booleans()):
        load = hostile_array(data.draw, load.shape, ids=False)
    calls: list[Callable[[], Any]] = [
        lambda: validate_plan(plan, num_ranks, allow_duplicate_on_rank=True),
        lambda: eplb_native.rank_expert_maps(plan, num_ranks),
        lambda: eplb_native.rank_log2phy(plan, num_ranks),
        lambda: evaluate(plan, load, num_ranks),
        lambda: eplb_native.mean_par(plan, load, num_ranks),
        lambda: eplb_native.rank_loads(plan, load, num_ranks),
        lambda: eplb_native.slot_load_from_expert_load(plan, load),
        lambda: eplb_native.expert_load_from_slot_load(plan, load),
        lambda: eplb_native.count_weight_copies(plan, table, num_ranks),
        lambda: eplb_native.lower_bound_max_load(load, plan.num_physical, num_ranks),
        lambda: layer_balance(plan, load, num_ranks),
        lambda: default_placement(plan.num_layers, num_experts, num_ranks, plan.num_physical - plan.num_experts),
    ]  # fmt: skip
    for call in calls:
        result = outcome(call, names)
        if isinstance(result, eplb_native.PlanStats):
            assert math.isfinite(result.par) and result.par >= 1 - 1e-9
            assert np.isfinite(result.gap).all()


# --- expert-map files and the config -------------------------------------------------------

JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=4)),
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)),
    max_leaves=12,
)


def mutate_json(draw: st.DrawFn, value: Any) -> Any:
    """``value`` with one node somewhere inside replaced by a random JSON value."""
    if not isinstance(value, (dict, list)) or not value or draw(st.integers(0, 3)) == 0:
        return draw(JSON_VALUES)
    keys = sorted(value) if isinstance(value, dict) else list(range(len(value)))
    key = draw(st.sampled_from(keys))
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[key] = mutate_json(draw, value[key])  # type: ignore[index]
    return copy


@contextlib.contextmanager
def temporary_file(name: str, content: bytes) -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(content)
        yield path


@FUZZ
@given(data=st.data())
def test_expert_map_files(data: st.DataObject) -> None:
    problem = data.draw(problems())
    current = problem["current"]
    plan = current if isinstance(current, Plan) else Plan.from_phy2log(current)
    document = expert_map_dict(plan, problem["num_ranks"], allow_duplicate_on_rank=True)
    how = data.draw(st.sampled_from(["json", "bytes", "big id"]))
    if how == "json":
        content = json.dumps(mutate_json(data.draw, document)).encode()
    elif how == "big id":
        document["layer_list"][0]["device_list"][0]["device_expert"][0] = data.draw(ABSURD_INTS)
        content = json.dumps(document).encode()
    else:
        content = corrupt(data.draw, json.dumps(document).encode())
    with temporary_file("map.json", content) as path:
        result = outcome(lambda: load_expert_map_with_ranks(path, allow_duplicate_on_rank=True), [f"expert_map: {path}"])
    if result is not None:
        loaded, num_ranks = result
        validate_plan(loaded, num_ranks, allow_duplicate_on_rank=True)


@FUZZ
@given(data=st.data())
def test_config(data: st.DataObject) -> None:
    keys = list(EplbConfig.keys())
    values = data.draw(st.dictionaries(st.sampled_from([*keys, "num_redundant_expert", "bogus"]),
                                       st.one_of(JSON_VALUES, COUNTS, FLOATS), max_size=5))  # fmt: skip
    config = outcome(lambda: EplbConfig.from_dict(values), [*keys, "eplb_config"])
    if config is not None:
        # A key absent or null holds its default; a key given holds a value ...
        defaults = EplbConfig()
        for key in keys:
            if values.get(key) is None:
                assert getattr(config, key) == getattr(defaults, key), key
            else:
                assert getattr(config, key) is not None, key
        # ... and the config round-trips, as a dict and as JSON, to an equal config.
        assert EplbConfig.from_dict(config.to_dict()) == config
        assert EplbConfig.from_json(json.dumps(config.to_dict())) == config


@FUZZ
@given(text=st.one_of(st.text(max_size=30), st.just("[" * 10_000), st.just('{"episode_steps": ' + "9" * 5000 + "}")))
def test_config_json(text: str) -> None:
    outcome(lambda: EplbConfig.from_json(text), [*EplbConfig.keys(), "eplb_config"])


# --- trace readers ----------------------------------------------------------------------------


def valid_trace_bytes(extension: str, load: np.ndarray) -> bytes:
    """A valid trace file of ``load`` [T, L, N] in ``extension``'s format."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"t{extension}"
        if extension == ".npz":
            np.savez(path, load=load, top_k=np.array(2))
        elif extension == ".npy":
            np.save(path, load)
        elif extension == ".csv":
            rows = ["step,layer,expert,count"] + [
                f"{t},{layer},{e},{load[t, layer, e]}" for t, layer, e in np.ndindex(*load.shape)
            ]
            path.write_text("\n".join(rows) + "\n")
        elif extension == ".json":
            path.write_text(json.dumps({"load": load.tolist()}))
        else:
            import torch

            torch.save({"logical_count": torch.from_numpy(load)}, path)
        return path.read_bytes()


def corrupt(draw: st.DrawFn, content: bytes) -> bytes:
    """``content`` truncated, with bytes overwritten, or with bytes inserted."""
    how = draw(st.sampled_from(["truncate", "overwrite", "insert", "random"]))
    if how == "random" or not content:
        return draw(st.binary(max_size=300))
    at = draw(st.integers(0, len(content) - 1))
    if how == "truncate":
        return content[:at]
    patch = draw(st.binary(min_size=1, max_size=16))
    if how == "overwrite":
        return content[:at] + patch + content[at + len(patch):]
    return content[:at] + patch + content[at:]


CSV_FIELDS = st.one_of(st.integers(0, 5).map(str), ABSURD_INTS.map(str), st.sampled_from(["nan", "inf", "-1", "1e400", "x", ""]))


@FUZZ
@given(data=st.data(), extension=st.sampled_from(TRACE_EXTENSIONS))
def test_trace_readers(data: st.DataObject, extension: str) -> None:
    if extension in (".pt", ".pth"):
        pytest.importorskip("torch")
    load = np.random.default_rng(data.draw(st.integers(0, 99))).integers(0, 9, size=(3, 2, 4)).astype(np.float64)
    how = data.draw(st.sampled_from(["valid", "corrupt", "structured"]))
    content = valid_trace_bytes(extension, load)
    if how == "corrupt":
        content = corrupt(data.draw, content)
    elif how == "structured" and extension == ".csv":
        header = data.draw(st.sampled_from(["step,layer,expert,count", "step,layer,e0,e1", "count,expert,layer,step"]))
        rows = data.draw(st.lists(st.lists(CSV_FIELDS, min_size=3, max_size=5), min_size=1, max_size=5))
        content = ("\n".join([header] + [",".join(row) for row in rows]) + "\n").encode()
    elif how == "structured" and extension == ".json":
        content = json.dumps({data.draw(st.sampled_from(["load", "logical_count", "x"])): data.draw(JSON_VALUES)}).encode()
    elif how == "structured" and extension == ".npy":
        stream = io.BytesIO()
        shape = tuple(data.draw(st.lists(st.one_of(st.integers(0, 5), ABSURD_INTS.filter(lambda v: v > 0)), max_size=3)))
        dtype = data.draw(st.sampled_from(["<f8", "<i8", "<c16", "|b1", "<U3", "|O"]))
        np.lib.format.write_array_header_1_0(stream, {"descr": dtype, "fortran_order": False, "shape": shape})
        content = stream.getvalue() + data.draw(st.binary(max_size=64))
    with temporary_file(f"trace{extension}", content) as path:
        trace = outcome(lambda: load_trace(path), [f"trace {path}"])
    if trace is not None:
        assert trace.load.dtype == np.float64 and trace.load.ndim == 3
        assert np.isfinite(trace.load).all() and (trace.load >= 0).all()


# --- the command line --------------------------------------------------------------------------


def cli_value(draw: st.DrawFn) -> str:
    return str(draw(st.one_of(st.integers(0, 6), ABSURD_INTS, st.sampled_from(["x", "-3", "nan", "1e400", "", "2.5"]))))


@FUZZ
@given(data=st.data())
def test_cli(data: st.DataObject) -> None:
    load = np.random.default_rng(data.draw(st.integers(0, 99))).integers(1, 30, size=(8, 2, 4))
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        trace = root / "trace.npz"
        np.savez(trace, load=load)
        broken = root / f"broken{data.draw(st.sampled_from(TRACE_EXTENSIONS))}"
        broken.write_bytes(corrupt(data.draw, trace.read_bytes()))
        expert_map = root / "map.json"
        plan = default_placement(2, 4, 2, 2)
        expert_map.write_text(json.dumps(mutate_json(data.draw, expert_map_dict(plan, 2)) if data.draw(st.booleans())
                                         else expert_map_dict(plan, 2)))  # fmt: skip
        command = data.draw(st.sampled_from(["simulate", "plan", "inspect", "bogus"]))
        argv = [command]
        if command == "inspect":
            argv.append(str(data.draw(st.sampled_from([expert_map, root / "missing.json", root, broken]))))
        argv += ["--trace", str(data.draw(st.sampled_from([trace, trace, broken, root / "missing.npz"])))]
        options = {
            "simulate": ["--ranks", "--slots", "--redundant", "--threads", "--seed", "--interval",
                         "--episode", "--steps", "--tokens-per-step", "--top-k", "--drift", "--layer"],
            "plan": ["--ranks", "--slots", "--redundant", "--threads", "--seed", "--episode"],
        }.get(command, [])  # fmt: skip
        for option in data.draw(st.lists(st.sampled_from(options), max_size=3, unique=True)) if options else []:
            argv += [option, cli_value(data.draw)]
        if command == "simulate":
            argv += ["--policies", ",".join(data.draw(st.lists(st.sampled_from([*POLICY_NAMES, "nope"]), min_size=1, max_size=2)))]
            if "--steps" not in argv:
                argv += ["--steps", "12"]
            if data.draw(st.booleans()):
                argv += ["--json", str(data.draw(st.sampled_from([root / "out.json", root / "missing" / "out.json"])))]
        if command == "plan":
            argv += ["-o", str(data.draw(st.sampled_from([root / "p.json", root / "missing" / "p.json"])))]
            if "--ranks" not in argv:
                argv += ["--ranks", "2"]
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                code = main(argv)
            except SystemExit as exit_info:  # argparse's usage errors
                code = exit_info.code
        assert code in (0, 2), (argv, stderr.getvalue())
        assert "Traceback" not in stderr.getvalue()
        if code == 2:
            assert stderr.getvalue().strip(), argv
