"""Hostile and careless inputs: each known way to hang, crash or allocate absurdly now ends in a
ValueError naming the argument (or file), or for the CLI in exit 2 with one line; the planner
pool is one per process, survives fork and concurrent callers, and runs on the threads the
system grants."""

from __future__ import annotations

import io
import json
import logging
import math
import multiprocessing
import os
import struct
import subprocess
import sys
import textwrap
import threading
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from memory_cap import memory_cap

import eplb_native
from eplb_native import Plan, evaluate, make_policy, rebalance_experts
from eplb_native.checks import check_num_threads
from eplb_native.cli import main
from eplb_native.expert_map import load_expert_map
from eplb_native.limits import MAX_THREADS, usable_cores
from eplb_native.policies import check_policy_shape
from eplb_native.sim.traces import load_trace

PACKAGE_ROOT = Path(eplb_native.__file__).parents[1]  # the checkout's python/ or site-packages


def _run_python(code: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Runs ``code`` in a fresh interpreter that imports the package these tests import."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PACKAGE_ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
        timeout=timeout, env=env, check=False,
    )  # fmt: skip


# --- threads ---------------------------------------------------------------------------------


def test_no_hang_when_the_system_refuses_planner_threads() -> None:
    """Under an address-space limit that leaves no room for a thread stack, the pool runs on the
    threads it could start; it used to hang unwinding its constructor."""
    completed = _run_python(
        """
        import resource
        import numpy as np
        import eplb_native
        from eplb_native import rebalance_experts

        load = np.ones((2000, 8))
        status = open("/proc/self/status").read().split("VmSize:")[1].split()[0]
        limit = (int(status) + 6 * 1024) * 1024  # 6 MiB more: less than one 8 MiB stack
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))
        plan = rebalance_experts(load, 8, 1, 1, 2, num_threads=2000)
        eplb_native.validate_plan(plan, 2, allow_duplicate_on_rank=True)
        print("planned", plan.phy2log.shape)
        """,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    assert "planned (2000, 8)" in completed.stdout


def test_num_threads_is_bounded_and_capped_at_the_usable_cores() -> None:
    cores = usable_cores()
    assert 1 <= cores <= len(os.sched_getaffinity(0))
    assert check_num_threads(0) == 0
    assert check_num_threads(MAX_THREADS) == MAX_THREADS
    for bad in (-1, MAX_THREADS + 1, 2**70, True, 2.0, "4"):
        with pytest.raises(ValueError, match=r"^num_threads: "):
            rebalance_experts(np.ones((2, 4)), 4, 1, 1, 2, num_threads=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^num_threads: "):
        eplb_native.plan_flashlb(np.ones((2, 4)), 4, 1, 1, 2, num_threads=MAX_THREADS + 1)
    # A request above the usable cores is capped, not refused: same plan as one thread.
    load = np.random.default_rng(0).random((6, 8))
    many = rebalance_experts(load, 12, 1, 1, 4, num_threads=MAX_THREADS)
    one = rebalance_experts(load, 12, 1, 1, 4, num_threads=1)
    np.testing.assert_array_equal(many.phy2log, one.phy2log)


def _task_count() -> int:
    return len(list(Path("/proc/self/task").iterdir()))


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads in /proc")
def test_planner_calls_share_one_pool() -> None:
    load = np.random.default_rng(1).random((16, 8))
    rebalance_experts(load, 12, 1, 1, 4, policy="flashlb")
    threads = _task_count()
    for policy in ("default_eplb", "random", "flashlb"):
        for _ in range(10):
            rebalance_experts(load, 12, 1, 1, 4, policy=policy)
    assert _task_count() == threads  # no pool started or left behind per call


def test_several_python_threads_plan_at_once() -> None:
    rng = np.random.default_rng(2)
    loads = [rng.random((12, 16)) for _ in range(6)]
    policies = ["default_eplb", "flashlb", "random"]
    expected = [rebalance_experts(load, 24, 1, 1, 4, policy=policies[i % 3]).phy2log for i, load in enumerate(loads)]
    results: dict[int, Any] = {}

    def plan(i: int) -> None:
        for _ in range(3):
            results[i] = rebalance_experts(loads[i], 24, 1, 1, 4, policy=policies[i % 3]).phy2log

    threads = [threading.Thread(target=plan, args=(i,)) for i in range(len(loads))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
        assert not thread.is_alive()
    for i, want in enumerate(expected):
        np.testing.assert_array_equal(results[i], want)


def _plan_in_child(queue: Any) -> None:
    load = np.random.default_rng(3).random((16, 8))
    queue.put(rebalance_experts(load, 12, 1, 1, 4, policy="flashlb").phy2log)


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_plans_with_a_pool_of_its_own() -> None:
    load = np.random.default_rng(3).random((16, 8))
    want = rebalance_experts(load, 12, 1, 1, 4, policy="flashlb").phy2log  # the parent's pool runs
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_plan_in_child, args=(queue,))
    child.start()
    got = queue.get(timeout=60)
    child.join(timeout=60)
    assert child.exitcode == 0
    np.testing.assert_array_equal(got, want)


def test_cli_threads_out_of_bounds_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["simulate", "--policies", "flashlb", "--threads", "100000"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --threads: expected an integer from 0 (all usable cores) to {MAX_THREADS}, got 100000" in err


# --- trace readers and expert maps -------------------------------------------------------------


def _valid_npz(path: Path) -> bytes:
    np.savez(path, load=np.arange(24, dtype=np.float64).reshape(2, 3, 4) + 1)
    return path.read_bytes()


def _npy_header(shape: tuple[int, ...]) -> bytes:
    stream = io.BytesIO()
    np.lib.format.write_array_header_1_0(stream, {"descr": "<f8", "fortran_order": False, "shape": shape})
    return stream.getvalue()


def _zip_bomb(path: Path, total: int) -> None:
    """An .npz whose 'load.npy' holds `total` bytes of float64 ones, DEFLATEd about 1000x: each
    16 MiB chunk ends on a full flush, so its compressed bytes are made once and repeated."""
    chunk = np.ones(1 << 21).tobytes()  # 16 MiB
    count = total // len(chunk)
    header = _npy_header((count * len(chunk) // 8,))
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = deflate.compress(header) + deflate.flush(zlib.Z_FULL_FLUSH)
    body = deflate.compress(chunk) + deflate.flush(zlib.Z_FULL_FLUSH)
    tail = deflate.flush()
    data = head + body * count + tail
    crc = zlib.crc32(header)
    for _ in range(count):
        crc = zlib.crc32(chunk, crc)
    size = len(header) + count * len(chunk)
    name = b"load.npy"
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0x21, crc, len(data), size, len(name), 0)
    central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0x21, crc, len(data), size,
                          len(name), 0, 0, 0, 0, 0, 0)
    offset = len(local) + len(name) + len(data)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central) + len(name), offset, 0)
    path.write_bytes(local + name + data + central + name + end)


def _write(path: Path, content: bytes | str) -> Path:
    if isinstance(content, str):
        path.write_text(content)
    else:
        path.write_bytes(content)
    return path


@pytest.mark.parametrize(
    ("name", "make", "problem"),
    [
        ("truncated.npz", lambda p: _write(p, _valid_npz(p)[:300]), r"not a readable \.npz archive"),
        ("corrupt.npz", lambda p: _write(p, _valid_npz(p)[:200] + b"\xff" * 16 + _valid_npz(p)[216:]),
         r"(CRC|unreadable|not a readable)"),
        ("long.csv", lambda p: _write(p, "step,layer,expert,count\n0,0,0," + "1" * 200_000 + "\n"),
         r"field larger than field limit"),
        ("digits.json", lambda p: _write(p, '{"load": [[' + "9" * 400 + "]]}"), r"'load'"),
        ("nested.json", lambda p: _write(p, '{"load": ' + "[" * 100_000 + "]" * 100_000 + "}"),
         r"nested too deeply"),
        ("claims.npy", lambda p: _write(p, _npy_header((2**40, 1, 1))), r"header declares shape \(1099511627776, 1, 1\)"),
        ("row.csv", lambda p: _write(p, "step,layer,expert,count\n1099511627776,0,0,5\n"),
         r"an index is far too large"),
        ("bomb.npz", lambda p: _zip_bomb(p, 2 << 30), r"zip bomb"),
    ],
)
def test_malformed_or_absurd_trace_is_a_value_error_naming_the_file(
    tmp_path: Path, name: str, make: Any, problem: str
) -> None:
    path = tmp_path / name
    make(path)
    if name == "claims.npy":
        assert path.stat().st_size == 128
    with memory_cap(), pytest.raises(ValueError, match=problem) as error:
        load_trace(path)
    assert str(error.value).startswith(f"trace {path}: ")


def test_the_zip_bomb_is_a_real_one(tmp_path: Path) -> None:
    """The 2 GiB bomb above is a ~2 MB file; a 64 MiB one built the same way decompresses to
    what it claims (numpy reads it when nothing stops it)."""
    path = tmp_path / "bomb.npz"
    _zip_bomb(path, 2 << 30)
    assert path.stat().st_size < 3 << 20
    with zipfile.ZipFile(path) as archive:
        assert archive.getinfo("load.npy").file_size > 2 << 30
    small = tmp_path / "small.npz"
    _zip_bomb(small, 64 << 20)
    with np.load(small) as archive:
        np.testing.assert_array_equal(archive["load"], np.ones(8 << 20))


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda torch: torch.ones(2, 3, 4).to_sparse(), "dense CPU tensor"),
        (lambda torch: {"load": torch.empty(2, 3, 4, device="meta")}, "dense CPU tensor"),
        (lambda torch: torch.ones(1).expand(2**20, 2**20), "expanded view"),
        (lambda torch: torch.ones(2, 3, 4, dtype=torch.complex64), "real numbers"),
        (lambda torch: {"expert_load_window": torch.ones(3, 2, 4),
                        "physical_to_logical_map": torch.tensor([[0, 1, 2, 2**40]] * 2)}, "expert id 1099511627776"),
    ],
)
def test_unusable_tensors_in_a_pt_trace_name_the_file(tmp_path: Path, make: Any, problem: str) -> None:
    torch = pytest.importorskip("torch")
    path = tmp_path / "trace.pt"
    torch.save(make(torch), path)
    with memory_cap(), pytest.raises(ValueError, match=problem) as error:
        load_trace(path)
    assert str(error.value).startswith(f"trace {path}: ")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "is a directory"),
        ({"layer_list": [{"device_list": [{"device_expert": [0, 2**70]}]}]}, "expert id 1180591620717411303424"),
        ({"layer_list": [{"device_list": [{"device_expert": [0, 2**40]}]}]}, "expert id 1099511627776"),
        ('{"layer_list": ' + "[" * 100_000, "nested too deeply"),
    ],
)
def test_bad_expert_map_file_names_the_file(tmp_path: Path, content: Any, problem: str) -> None:
    path = tmp_path / "map.json"
    if content is None:
        path.mkdir()
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    with memory_cap(), pytest.raises(ValueError, match=problem) as error:
        load_expert_map(path)
    assert str(error.value).startswith(f"expert_map: {path}: ")


def test_cli_maps_reader_and_output_errors_to_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = _write(tmp_path / "claims.npy", _npy_header((2**40, 1, 1)))
    assert main(["plan", "--trace", str(bad), "--ranks", "2", "-o", str(tmp_path / "p.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "header declares shape" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as exit_info:
        main(["plan", "--ranks", "2", "-o", str(tmp_path / "missing_dir" / "p.json")])
    assert exit_info.value.code == 2
    assert "-o: folder" in capsys.readouterr().err
    directory = tmp_path / "dir.json"
    directory.mkdir()
    assert main(["inspect", str(directory)]) == 2
    assert "is a directory" in capsys.readouterr().err


# --- sizes, ids and sums -------------------------------------------------------------------


def test_sizes_and_ids_are_checked_before_allocating() -> None:
    with memory_cap():
        with pytest.raises(ValueError, match=r"^num_replicas: a plan of layers x slots"):
            rebalance_experts(np.ones((2, 4)), 2**40, 1, 1, 2)
        with pytest.raises(ValueError, match=r"^num_replicas: "):
            rebalance_experts(np.ones((2, 4)), 2**40, 1, 1, 2, policy="flashlb")
        with pytest.raises(ValueError, match=r"^phy2log: expert id 1099511627776 implies"):
            Plan.from_phy2log(np.array([[0, 1, 2**40]]))
        with pytest.raises(ValueError, match=r"^phy2log: 3 physical slots cannot hold num_experts"):
            Plan.from_phy2log(np.array([[0, 1, 2]]), 2**40)
        table = np.array([[[0, 1], [2, 2**40]]])  # a runtime table [L, D, S]
        with pytest.raises(ValueError, match=r"^current_table: phy2log: expert id 1099511627776"):
            make_policy("default_eplb").rebalance(table, np.ones((1, 2, 2)))
        with pytest.raises(ValueError, match=r"^num_layers: a plan of layers x slots"):
            eplb_native.default_placement(2**40, 4, 2)


def test_finite_loads_whose_sum_overflows_are_a_value_error() -> None:
    load = np.full((3, 16), 5e307)
    for policy in ("default_eplb", "flashlb", "swift_balancer", "random"):
        current = eplb_native.default_placement(3, 16, 4, 8)
        with pytest.raises(ValueError, match=r"^load: the values sum beyond 1e300"):
            rebalance_experts(load, 24, 1, 1, 4, policy=policy, current=current)
    plan = rebalance_experts(np.ones((3, 16)), 24, 1, 1, 4)
    with pytest.raises(ValueError, match=r"^load: the values sum beyond 1e300"):
        evaluate(plan, load, 4)
    # FlashLB squares episode loads: a float history summing beyond 1e150 is refused by name.
    with pytest.raises(ValueError, match=r"^history: the values sum beyond 1e150"):
        rebalance_experts(np.ones((3, 16)), 24, 1, 1, 4, policy="flashlb", history=np.full((40, 3, 16), 1e160))


def test_internal_errors_name_files_relative_to_the_source_tree() -> None:
    # A broken invariant's message carries __FILE__; the build maps the source root away.
    import eplb_native._core as core

    so_text = Path(core.__file__).read_bytes()
    root = str(Path(__file__).parents[2]).encode()
    assert b"csrc/src/flashlb/placement.cpp" in so_text
    assert root + b"/csrc/src/flashlb/placement.cpp" not in so_text


def test_strict_dtypes_for_loads_and_ids() -> None:
    load = np.ones((3, 16))
    for bad in (load + 1j, load.astype(object), load.astype(str)):
        with pytest.raises(ValueError, match=r"^load: expected a numeric array"):
            rebalance_experts(bad, 24, 1, 1, 4)
    current = eplb_native.default_placement(3, 16, 4, 8).phy2log
    with pytest.raises(ValueError, match=r"^current: expected integer expert ids"):
        rebalance_experts(load, 24, 1, 1, 4, policy="swift_balancer", current=current + 0.5)
    # The bindings convert nothing silently either.
    from eplb_native import _core

    with pytest.raises(ValueError, match=r"^phy2log: expected integers"):
        _core.plan_from_phy2log(np.array([[0.5, 1.0]]), 2)
    with pytest.raises(ValueError, match=r"^load: expected real numbers"):
        _core.plan_policy("default_eplb", load + 1j, 24, 1, 1, 4)
    with pytest.raises(ValueError, match=r"^current: expected integers"):
        _core.plan_policy("swift_balancer", load, 24, 1, 1, 4, current=current.astype(np.float64))
    with pytest.raises(ValueError, match=r"^history: expected real numbers"):
        _core.plan_policy("flashlb", load, 24, 1, 1, 4, history=np.array([["a"] * 16] * 3 * 2).reshape(2, 3, 16))


def test_errors_name_the_argument_instead_of_attribute_or_index_errors() -> None:
    with pytest.raises(TypeError, match=r"^plan: expected a Plan"):
        eplb_native.rank_loads((np.zeros((1, 2)),), np.ones((1, 2)), 1)  # type: ignore[arg-type]
    plan = Plan.from_phy2log(np.array([[0, 1]]))
    with pytest.raises(ValueError, match=r"^load: expected"):
        eplb_native.slot_load_from_expert_load(plan, np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"^load: expected a rectangular array"):
        rebalance_experts([[1.0, 2.0], [3.0]], 2, 1, 1, 1)
    # Comparing wide tables allocates memory linear in them (not L x P x S).
    old = np.tile(np.arange(20_000), (4, 1))
    with memory_cap():
        assert eplb_native.count_weight_copies(old, old[:, ::-1], 1) == 0


# --- the runtime loader --------------------------------------------------------------------


def _loader() -> Any:
    """A single-process loader (every move a local copy) on table [L=2, D=1, S=4], N = 4."""
    torch = pytest.importorskip("torch")
    from eplb_native.runtime.loader import WeightLoader

    table = np.array([[[0, 1, 2, 3]], [[3, 2, 1, 0]]])
    slots = [[[torch.full((2,), float(e)) for e in row[0]]] for row in table]
    return WeightLoader(slots, lambda *_: None, table, rank=0), table, slots


@pytest.mark.parametrize(
    ("change", "layers", "problem"),
    [
        (lambda t: t.__setitem__((0, 0, 0), 2), [0], r"^new_table: phy2log: layer 0: expert 3 has no replica"),
        (lambda t: t.__setitem__((1, 0, 3), 4), [1], r"^new_table: phy2log: layer 1, slot 3: expert id 4 outside \[0, 4\)"),
        (lambda t: None, [0, 0], r"^layers: expected distinct layer ids"),
        (lambda t: None, [2], r"^layers: expected distinct layer ids in \[0, 2\)"),
        (lambda t: None, [True], r"^layers: expected an integer array"),
    ],
)
def test_loader_schedule_validates_before_queueing(change: Any, layers: list[Any], problem: str) -> None:
    loader, table, _ = _loader()
    new = table[:, :, ::-1].copy()  # every slot of every layer changes
    change(new)
    with pytest.raises(ValueError, match=problem):
        loader.schedule(new, layers)
    assert loader.pending == 0  # nothing queued: a dropped expert's weights stay in place
    with pytest.raises(ValueError, match=r"^new_table: expected integer expert ids"):
        loader.schedule(new + 0.5, [0])
    assert loader.pending == 0
    loader.close()


def test_loader_schedules_a_valid_table() -> None:
    loader, table, slots = _loader()
    new = table[:, :, ::-1].copy()
    loader.schedule(new, [1, 0])
    assert loader.pending == 2
    assert all(update.applied for update in loader.run_to_completion())
    np.testing.assert_array_equal(loader.table, new)
    for layer_idx in range(2):
        assert [float(t[0]) for t in slots[layer_idx][0]] == new[layer_idx, 0].tolist()
    loader.close()


def test_a_policy_that_cannot_plan_the_shape_says_so_before_serving() -> None:
    # FlashLB holds no expert twice on a rank: 2 experts on 2 ranks x 3 slots cannot be planned.
    with pytest.raises(ValueError, match=r"^num_replicas: 6 slots exceed num_experts \* num_ranks"):
        check_policy_shape("flashlb", num_experts=2, num_physical=6, num_ranks=2)
    check_policy_shape("flashlb", num_experts=4, num_physical=6, num_ranks=2)
    check_policy_shape("default_eplb", num_experts=4, num_physical=6, num_ranks=2)
    with pytest.raises(ValueError, match=r"^num_groups: "):
        check_policy_shape("swift_balancer", num_experts=4, num_physical=6, num_ranks=2, num_groups=3)


def test_found_by_the_fuzz_suite(caplog: pytest.LogCaptureFixture) -> None:
    # The INFO line's PAR before a table with an empty slot (-1) once failed the whole call.
    with caplog.at_level(logging.INFO, logger="eplb_native"):
        plan = rebalance_experts(np.ones((1, 1)), 2, 1, 1, 2, policy="random", current=[[-1, 0]])
    eplb_native.validate_plan(plan, 2)
    assert "PAR - ->" in caplog.text
    # A policy given by its vllm-ascend id plans under its name.
    table = eplb_native.default_placement(1, 4, 2, 2).table(2)
    changed, _, _ = make_policy(0).rebalance(table, np.ones((1, 2, 3)))  # type: ignore[arg-type]
    assert isinstance(changed, bool)


def test_random_policy_on_a_table_with_unavoidable_duplicates_is_a_value_error() -> None:
    # 2 experts in 4 slots of one rank: a slot-stable plan cannot keep one replica per rank.
    with pytest.raises(ValueError, match=r"^num_replicas: 4 slots over 1 node\(s\) exceed"):
        make_policy("random").rebalance(np.array([[[0, 1, 0, 1]]]), np.ones((3, 1, 1, 4)))


@pytest.mark.parametrize(("field", "value"), [("z_score", 101.0), ("z_score", math.nan), ("keep_margin", 2.0)])
def test_flashlb_weights_are_bounded(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"^{field}: expected a value in"):
        eplb_native.FlashLBOptions(**{field: value})
