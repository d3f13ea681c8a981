"""The eplb-native command line end to end on tiny traces: exit codes, JSON schema, the plan
file, inspect, the PNG, and error messages without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import eplb_native
from eplb_native.cli import build_parser, main, policy_options
from eplb_native.expert_map import load_expert_map, load_expert_map_with_ranks
from eplb_native.plan import validate_plan
from eplb_native.policies import rebalance_experts

SUMMARY_TYPES = {
    "par_mean": float,
    "par_p99": float,
    "par_aggregate": float,
    "gap_to_lower_bound": float,
    "weight_copies_per_rebalance": float,
    "layers_updated": int,
    "plan_ms": float,
}
TINY = ["--ranks", "2", "--redundant", "2", "--interval", "5", "--episode", "2", "--threads", "1"]


@pytest.fixture
def tiny_trace(tmp_path: Path) -> Path:
    """A [T=16, L=3, N=6] skewed trace as .npz."""
    rng = np.random.default_rng(5)
    base = np.array([30, 10, 5, 5, 3, 2], dtype=np.float64)
    load = rng.poisson(np.stack([np.roll(base, layer) for layer in range(3)]), size=(16, 3, 6))
    path = tmp_path / "tiny.npz"
    np.savez(path, load=load, model=np.array("tiny"))
    return path


def test_simulate_as_a_module_writes_the_json_schema(tiny_trace: Path, tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "eplb_native",
            "simulate",
            "--trace",
            str(tiny_trace),
            *TINY,
            "--policies",
            "default_eplb,swift_balancer",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert "default_eplb" in completed.stdout
    assert "static" in completed.stdout
    data = json.loads(out.read_text())
    assert data["version"] == eplb_native.__version__
    assert (data["trace"], data["trace_name"], data["model"]) == (str(tiny_trace),) * 2 + ("tiny",)
    assert (data["steps"], data["layers"], data["experts"]) == (16, 3, 6)
    assert data["replay"] == {
        "ranks": 2, "slots": 4, "redundant": 2, "interval": 5, "episode": None,
        "first_scored_step": 5, "threads": 1, "seed": 0,
    }  # fmt: skip
    assert list(data["policies"]) == ["static", "default_eplb", "swift_balancer"]
    for name, row in data["policies"].items():
        assert set(row) == set(SUMMARY_TYPES), name
        for key, kind in SUMMARY_TYPES.items():
            assert type(row[key]) is kind, f"{name}.{key} is {type(row[key]).__name__}"
    assert data["synthetic"] is None  # a recorded multi-step trace is replayed as is
    assert list(data["routing"]) == list(data["policies"])
    for name, rules in data["routing"].items():
        assert set(rules) == {"fixed", "spread"}, name
        assert all(set(row) == {"par_mean", "par_p99", "par_aggregate"} for row in rules.values())
    assert "  spread routing" in completed.stdout


def test_simulate_compares_every_policy_but_random_by_default(
    tiny_trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r.json"
    assert main(["simulate", "--trace", str(tiny_trace), *TINY, "--json", str(out)]) == 0
    rows = ["static", "default_eplb", "swift_balancer", "flashlb"]  # the README's table
    assert list(json.loads(out.read_text())["policies"]) == rows
    table = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in table if line.split()[0] in rows] == rows


def test_flashlb_gets_its_episode_length_from_the_command_line(
    tiny_trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert policy_options(["default_eplb", "flashlb"], 7)["flashlb"].episode_steps == 7
    assert policy_options(["default_eplb"], 7) == {}
    out = tmp_path / "r.json"
    code = main(
        ["simulate", "--trace", str(tiny_trace), *TINY, "--policies", "flashlb", "--json", str(out)]
    )
    assert code == 0
    assert "FlashLB episodes of 2" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert set(data["policies"]) == {"static", "flashlb"}
    assert data["replay"]["episode"] == 2


@pytest.mark.parametrize(
    ("argv", "verbose"),
    [
        (["simulate"], False),
        (["-v", "simulate"], True),
        (["simulate", "-v"], True),
        (["plan", "--ranks", "2", "-o", "x.json", "--verbose"], True),
        (["inspect", "x.json", "-v"], True),
    ],
)
def test_verbose_is_accepted_before_and_after_the_command(argv: list[str], verbose: bool) -> None:
    assert build_parser().parse_args(argv).verbose is verbose


def test_plan_of_default_eplb_on_the_readme_setting_is_slot_stable(tmp_path: Path) -> None:
    out = tmp_path / "map.json"
    argv = ["plan", "--ranks", "8", "--redundant", "8", "--policy", "default_eplb", "-o", str(out)]
    assert main(argv) == 0
    validate_plan(load_expert_map(out), 8)  # no expert twice on a rank


def test_deepseek_parity_writes_deepseeks_own_plan(
    tiny_trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "map.json"
    shape = ["--trace", str(tiny_trace), "--ranks", "2", "--slots", "7", "-o", str(out)]
    # 7 slots per rank for 6 experts: some rank must hold an expert twice.
    with pytest.raises(SystemExit) as stop:
        main(["plan", *shape, "--policy", "default_eplb"])
    assert stop.value.code == 2
    error = capsys.readouterr().err
    assert "--slots: 7 slots per rank for 6 experts" in error
    assert "--deepseek-parity" in error
    assert "allow_duplicate_on_rank" not in error
    assert main(["plan", *shape, "--policy", "default_eplb", "--deepseek-parity"]) == 0
    load = np.load(tiny_trace)["load"].sum(axis=0)
    deepseek = rebalance_experts(load, 14, 1, 1, 2)  # no table in force: DeepSeek EPLB's output
    written = load_expert_map(out, allow_duplicate_on_rank=True)
    np.testing.assert_array_equal(written.phy2log, deepseek.phy2log)
    assert main(["inspect", str(out), "--trace", str(tiny_trace)]) == 0
    with pytest.raises(SystemExit) as stop:
        main(["plan", *shape, "--policy", "flashlb", "--deepseek-parity"])
    assert stop.value.code == 2
    assert "--deepseek-parity: DeepSeek EPLB's plan is --policy default_eplb's" in capsys.readouterr().err


def test_simulate_single_step_trace_says_it_is_synthetic(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "aggregate.npy"
    np.save(path, np.array([[50.0, 20, 10, 10, 5, 5]]))
    out = tmp_path / "r.json"
    code = main(
        [
            "simulate",
            "--trace",
            str(path),
            *TINY,
            "--steps",
            "12",
            "--tokens-per-step",
            "8",
            "--top-k",
            "2",
            "--policies",
            "default_eplb",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    assert "SYNTHETIC" in capsys.readouterr().out
    synthetic = json.loads(out.read_text())["synthetic"]
    assert synthetic["num_steps"] == 12
    assert synthetic["top_k"] == 2


def test_simulate_slots_sets_the_physical_count(tiny_trace: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    code = main(
        [
            "simulate",
            "--trace",
            str(tiny_trace),
            "--ranks",
            "3",
            "--slots",
            "3",
            "--interval",
            "5",
            "--policies",
            "default_eplb",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    assert json.loads(out.read_text())["replay"]["slots"] == 3


def test_plot_is_a_png(tiny_trace: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="plots need matplotlib")
    png = tmp_path / "replay.png"
    code = main(
        [
            "simulate",
            "--trace",
            str(tiny_trace),
            *TINY,
            "--policies",
            "default_eplb",
            "--plot",
            str(png),
            "--layer",
            "2",
        ]
    )
    assert code == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plan_writes_a_valid_expert_map_and_inspect_reads_it(
    tiny_trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "expert_map.json"
    code = main(
        [
            "plan",
            "--trace",
            str(tiny_trace),
            "--ranks",
            "2",
            "--redundant",
            "2",
            "--policy",
            "swift_balancer",
            "-o",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "PAR before" in printed
    assert "PAR after" in printed
    plan, num_ranks = load_expert_map_with_ranks(out)
    assert num_ranks == 2
    assert plan.phy2log.shape == (3, 8)
    validate_plan(load_expert_map(out), 2)

    assert main(["inspect", str(out), "--trace", str(tiny_trace)]) == 0
    report = capsys.readouterr().out
    assert "this map" in report
    assert "default placement" in report
    assert "gap to lower bound per layer" in report


def test_inspect_rejects_a_map_of_another_model(
    tiny_trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "expert_map.json"
    assert (
        main(["plan", "--ranks", "8", "--policy", "swift_balancer", "-o", str(out)]) == 0
    )  # shipped trace
    capsys.readouterr()
    assert main(["inspect", str(out), "--trace", str(tiny_trace)]) == 2
    assert "128 experts in 48 layers" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (np.ones((4, 3)), None),  # valid shape, used as a control below
        (-np.ones((6, 3, 6)), "negative value"),
        (np.full((6, 3, 6), np.nan), "NaN"),
        (np.ones(7), "expected a non-empty array"),
    ],
    ids=["control", "negative", "nan", "wrong-shape"],
)
def test_malformed_trace_exits_2_with_the_file_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: np.ndarray, problem: str | None
) -> None:
    path = tmp_path / "trace.npy"
    np.save(path, content)
    code = main(["plan", "--trace", str(path), "--ranks", "3", "-o", str(tmp_path / "m.json")])
    err = capsys.readouterr().err
    if problem is None:
        assert code == 0, err
        return
    assert code == 2
    assert str(path) in err
    assert problem in err
    assert "Traceback" not in err


def test_missing_trace_key_and_unknown_extension_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    no_load = tmp_path / "x.npz"
    np.savez(no_load, counts=np.ones((2, 2, 2)))
    assert main(["simulate", "--trace", str(no_load), "--policies", "default_eplb"]) == 2
    assert "missing array 'load'" in capsys.readouterr().err
    assert (
        main(["simulate", "--trace", str(tmp_path / "x.parquet"), "--policies", "default_eplb"])
        == 2
    )
    assert "unknown extension" in capsys.readouterr().err


def test_module_error_has_no_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bad.npy"
    np.save(path, np.full((3, 2, 2), -1.0))
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "eplb_native",
            "simulate",
            "--trace",
            str(path),
            "--policies",
            "default_eplb",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert completed.returncode == 2
    assert "negative value" in completed.stderr
    assert "Traceback" not in completed.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["simulate", "--slots", "4", "--redundant", "2"],
        ["simulate", "--policies", "no_such_policy"],
        ["simulate", "--ranks", "0"],
        ["plan", "--ranks", "2", "-o", "x.json", "--policy", "nope"],
        ["plan", "-o", "x.json"],
        ["frobnicate"],
        ["simulate", "--plot", "x.png", "--layer", "48"],
    ],
    ids=[
        "slots-and-redundant",
        "unknown-policy",
        "zero-ranks",
        "plan-unknown-policy",
        "plan-no-ranks",
        "unknown-command",
        "layer-out-of-range",
    ],
)
def test_bad_options_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    assert "usage:" in capsys.readouterr().err
