"""Trace loading: every supported format reads back the same load; malformed traces name the
file and the problem; the synthetic series is seeded and keeps its per-step totals."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from eplb_native.sim.traces import (
    SyntheticSeries,
    as_time_series,
    load_trace,
    shipped_trace_path,
    synthesize_series,
)


@pytest.fixture
def load() -> np.ndarray:
    """A small integer trace, float64 [T=4, L=2, N=5]."""
    return np.random.default_rng(7).poisson(20.0, size=(4, 2, 5)).astype(np.float64)


def test_shipped_trace_is_one_aggregate_step_of_qwen3() -> None:
    trace = load_trace(shipped_trace_path())
    assert trace.load.shape == (1, 48, 128)
    assert trace.metadata["top_k"] == "8"
    assert trace.synthetic is None


def test_npz_reads_load_and_metadata(tmp_path: Path, load: np.ndarray) -> None:
    path = tmp_path / "t.npz"
    np.savez(path, load=load.astype(np.int32), model=np.array("tiny-moe"), top_k=np.array(2))
    trace = load_trace(path)
    np.testing.assert_array_equal(trace.load, load)
    assert trace.load.dtype == np.float64
    assert trace.metadata == {"model": "tiny-moe", "top_k": "2"}


def test_two_dimensional_file_is_one_step(tmp_path: Path, load: np.ndarray) -> None:
    path = tmp_path / "t.npy"
    np.save(path, load[0])
    trace = load_trace(path)
    assert trace.load.shape == (1, 2, 5)
    np.testing.assert_array_equal(trace.load[0], load[0])


def test_npy_reads_steps(tmp_path: Path, load: np.ndarray) -> None:
    path = tmp_path / "t.npy"
    np.save(path, load)
    np.testing.assert_array_equal(load_trace(path).load, load)


def test_csv_long_format_in_any_column_order(tmp_path: Path, load: np.ndarray) -> None:
    path = tmp_path / "t.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["count", "expert", "layer", "step"])
        for (step, layer, expert), count in np.ndenumerate(load):
            if count:
                writer.writerow([count, expert, layer, step])
    np.testing.assert_array_equal(load_trace(path).load, load)


def test_csv_wide_format(tmp_path: Path, load: np.ndarray) -> None:
    path = tmp_path / "t.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", "layer", *[f"e{i}" for i in range(5)]])
        for step in range(4):
            for layer in range(2):
                writer.writerow([step, layer, *load[step, layer].tolist()])
    np.testing.assert_array_equal(load_trace(path).load, load)


def test_json_logical_count(tmp_path: Path, load: np.ndarray) -> None:
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"logical_count": load.tolist()}))
    np.testing.assert_array_equal(load_trace(path).load, load)


def test_all_zero_steps_are_dropped(tmp_path: Path, load: np.ndarray) -> None:
    padded = np.concatenate([load, np.zeros((3, 2, 5))])  # SGLang's zero-filled buffer tail
    path = tmp_path / "t.npy"
    np.save(path, padded)
    np.testing.assert_array_equal(load_trace(path).load, load)


class TestTorchDumps:
    @pytest.fixture(autouse=True)
    def _torch(self) -> None:
        self.torch = pytest.importorskip("torch", reason="reading .pt traces needs torch")

    def test_tensor(self, tmp_path: Path, load: np.ndarray) -> None:
        path = tmp_path / "t.pt"
        self.torch.save(self.torch.from_numpy(load), path)
        np.testing.assert_array_equal(load_trace(path).load, load)

    def test_sglang_stat_dump(self, tmp_path: Path, load: np.ndarray) -> None:
        path = tmp_path / "expert_distribution_recorder_1.pt"
        data = {
            "rank": 0,
            "logical_count": self.torch.from_numpy(load).to(self.torch.int32),
            "average_utilization_rate_over_window": None,
        }
        self.torch.save(data, path)
        np.testing.assert_array_equal(load_trace(path).load, load)

    def test_sglang_per_pass_records_map_physical_to_logical(self, tmp_path: Path) -> None:
        # 2 layers, 3 logical experts on 4 physical slots; slot 3 replicates expert 0 / 2.
        phy2log = np.array([[0, 1, 2, 0], [0, 1, 2, 2]])
        passes = [np.array([[1, 2, 3, 4], [5, 6, 7, 8]]), np.array([[0, 1, 0, 1], [1, 0, 1, 0]])]
        records = [
            {
                "forward_pass_id": 11,
                "rank": 0,
                "gatherer_key": "primary",
                "global_physical_count": self.torch.tensor(passes[1]),
            },
            {
                "forward_pass_id": 10,
                "rank": 0,
                "gatherer_key": "primary",
                "global_physical_count": self.torch.tensor(passes[0]),
            },
        ]
        path = tmp_path / "expert_distribution_recorder_1_0.pt"
        self.torch.save(
            {"records": records, "last_physical_to_logical_map": self.torch.tensor(phy2log)}, path
        )
        want = np.array(
            [
                [[1 + 4, 2, 3], [5, 6, 7 + 8]],  # forward pass 10 first
                [[0 + 1, 1, 0], [1, 0, 1 + 0]],
            ],
            dtype=np.float64,
        )
        np.testing.assert_array_equal(load_trace(path).load, want)

    def test_vllm_load_window_with_its_map(self, tmp_path: Path) -> None:
        phy2log = np.array([[1, 0, 1]])
        window = np.array([[[2, 3, 4]], [[1, 1, 1]]])  # [W=2, L=1, P=3]
        path = tmp_path / "vllm_eplb.pt"
        self.torch.save(
            {
                "expert_load_window": self.torch.tensor(window),
                "physical_to_logical_map": self.torch.tensor(phy2log),
            },
            path,
        )
        np.testing.assert_array_equal(load_trace(path).load, [[[3, 6]], [[1, 2]]])

    def test_dict_without_load_names_the_keys(self, tmp_path: Path) -> None:
        path = tmp_path / "other.pt"
        self.torch.save({"weights": self.torch.zeros(3)}, path)
        with pytest.raises(ValueError, match=r"other\.pt: no expert load found.*weights"):
            load_trace(path)


def _write_npy(array: np.ndarray):
    def write(path: Path) -> Path:
        path = path.with_suffix(".npy")
        np.save(path, array)
        return path

    return write


def _write_text(suffix: str, text: str):
    def write(path: Path) -> Path:
        path = path.with_suffix(suffix)
        path.write_text(text)
        return path

    return write


def _write_npz_without_load(path: Path) -> Path:
    path = path.with_suffix(".npz")
    np.savez(path, counts=np.ones((2, 2, 2)))
    return path


def _missing(path: Path) -> Path:
    return path.with_suffix(".npz")


NAN_LOAD = np.ones((2, 2, 3))
NAN_LOAD[1, 0, 2] = np.nan
NEGATIVE_LOAD = np.ones((2, 2, 3))
NEGATIVE_LOAD[0, 1, 1] = -4


@pytest.mark.parametrize(
    ("write", "problem"),
    [
        (_write_npy(np.ones(5)), r"expected a non-empty array .*got shape \(5,\)"),
        (_write_npy(np.ones((2, 2, 2, 2))), r"got shape \(2, 2, 2, 2\)"),
        (_write_npy(np.ones((0, 2, 3))), r"non-empty"),
        (_write_npy(NEGATIVE_LOAD), r"negative value at index \(0, 1, 1\)"),
        (_write_npy(NAN_LOAD), r"NaN at index \(1, 0, 2\)"),
        (_write_npy(np.full((1, 2, 2), np.inf)), r"inf at index"),
        (_write_npy(np.zeros((2, 2, 2))), r"every count is zero"),
        (_write_npy(np.array([["a", "b"]])), r"numeric"),
        (_write_npz_without_load, r"missing array 'load' \(found: counts\)"),
        (_write_text(".npz", "not a zip"), r"not a readable \.npz archive"),
        (_write_text(".npy", "not numpy"), r"not a readable \.npy array"),
        (_write_text(".parquet", "x"), r"unknown extension '\.parquet'"),
        (_missing, r"no such file"),
        (_write_text(".csv", "a,b,c\n1,2,3\n"), r"unrecognised CSV header"),
        (_write_text(".csv", "step,layer,expert,count\n0,0,x,3\n"), r"non-numeric cell"),
        (_write_text(".csv", "step,layer,expert,count\n0,0,1\n"), r"every row needs 4 cells"),
        (_write_text(".csv", "step,layer,expert,count\n0,-1,1,2\n"), r"column 'layer'"),
        (_write_text(".json", '{"counts": []}'), r"missing key 'logical_count' or 'load'"),
        (_write_text(".json", "{oops"), r"not valid JSON"),
        (_write_text(".json", '{"load": [[1, 2], [3]]}'), r"'load': not a rectangular array"),
        (_write_text(".pt", "not torch"), r"(not a readable torch file|needs torch)"),
    ],
    ids=[
        "1-d",
        "4-d",
        "empty",
        "negative",
        "nan",
        "inf",
        "all-zero",
        "strings",
        "npz-no-load",
        "npz-garbage",
        "npy-garbage",
        "unknown-extension",
        "missing-file",
        "csv-header",
        "csv-non-numeric",
        "csv-ragged",
        "csv-negative-index",
        "json-no-key",
        "json-garbage",
        "json-ragged",
        "pt-garbage",
    ],
)
def test_malformed_trace_names_file_and_problem(tmp_path: Path, write, problem: str) -> None:
    path = write(tmp_path / "bad_trace")
    with pytest.raises(ValueError, match=problem) as error:
        load_trace(path)
    assert str(path) in str(error.value)


def test_synthetic_series_keeps_totals_and_is_seeded() -> None:
    aggregate = np.array([[10.0, 30.0, 60.0, 0.0], [25.0, 25.0, 25.0, 25.0]])
    series = SyntheticSeries(num_steps=40, tokens_per_step=16, top_k=2, drift=0.1, seed=3)
    first = synthesize_series(aggregate, series)
    assert first.shape == (40, 2, 4)
    np.testing.assert_array_equal(first.sum(axis=2), np.full((40, 2), 32.0))
    np.testing.assert_array_equal(first, synthesize_series(aggregate, series))
    other = synthesize_series(
        aggregate, SyntheticSeries(num_steps=40, tokens_per_step=16, top_k=2, drift=0.1, seed=4)
    )
    assert not np.array_equal(first, other)


def test_synthetic_series_without_drift_follows_the_aggregate_shares() -> None:
    aggregate = np.array([[10.0, 30.0, 60.0]])
    series = SyntheticSeries(num_steps=400, tokens_per_step=50, top_k=2, drift=0.0, seed=0)
    shares = synthesize_series(aggregate, series).sum(axis=0) / (400 * 100)
    np.testing.assert_allclose(shares, [[0.1, 0.3, 0.6]], atol=0.01)


def test_synthetic_series_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match="num_steps"):
        synthesize_series(np.ones((1, 3)), SyntheticSeries(num_steps=0))
    with pytest.raises(ValueError, match="drift"):
        synthesize_series(np.ones((1, 3)), SyntheticSeries(drift=-1.0))
    with pytest.raises(ValueError, match="aggregate: a layer has no load"):
        synthesize_series(np.array([[1.0, 2.0], [0.0, 0.0]]), SyntheticSeries(num_steps=2))


def test_single_step_trace_becomes_a_described_synthetic_series(tmp_path: Path) -> None:
    path = tmp_path / "agg.npy"
    np.save(path, np.array([[5.0, 1.0, 2.0]]))
    series = SyntheticSeries(num_steps=6, tokens_per_step=4, top_k=1, seed=9)
    trace = as_time_series(load_trace(path), series)
    assert trace.load.shape == (6, 1, 3)
    assert trace.synthetic is not None
    assert trace.synthetic["seed"] == 9
    assert trace.synthetic["from"] == str(path)
    assert "multinomial" in trace.synthetic["method"]


def test_multi_step_trace_is_replayed_as_recorded(tmp_path: Path, load: np.ndarray) -> None:
    path = tmp_path / "t.npy"
    np.save(path, load)
    trace = as_time_series(load_trace(path), SyntheticSeries())
    assert trace.synthetic is None
    np.testing.assert_array_equal(trace.load, load)
