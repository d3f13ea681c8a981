"""Expert-load traces: reading them from the formats users have, and the synthetic series.

A trace is ``load``: float64 ``[T, L, N]``, tokens routed to each logical expert of each MoE
layer at each step (a step is one forward pass, or whatever window the recorder summed over).

Supported files (chosen by extension):

- ``.npz`` (ours): array ``load`` ``[T, L, N]`` or ``[L, N]``; any other array is metadata
  (0-d or small arrays, kept as text). Read with ``allow_pickle=False``.
- ``.npy``: one array ``[T, L, N]`` or ``[L, N]``.
- ``.csv``, with a header row, in one of two layouts:
  long, columns ``step,layer,expert,count`` (any order; absent cells are 0), or
  wide, columns ``step,layer`` then one column per expert (``N`` columns, any names), one row
  per (step, layer); absent (step, layer) rows are 0.
- ``.pt`` / ``.pth`` (needs torch; loaded with ``weights_only=True``): a tensor ``[T, L, N]``
  or ``[L, N]``; or a dict with
  ``logical_count`` ``[T, L, N]`` / ``[L, N]`` (SGLang's expert distribution recorder in
  ``stat`` mode, ``expert_distribution_recorder_{time}.pt``, and SGLang's
  ``--init-expert-location`` files); or
  ``records`` + ``last_physical_to_logical_map`` (SGLang's ``per_pass`` / ``per_token`` dumps:
  each record's ``global_physical_count`` ``[L, P]`` is mapped to logical experts; records of
  one ``forward_pass_id`` are summed, steps ordered by it); or
  ``expert_load_window`` ``[W, L, P]`` + ``physical_to_logical_map`` ``[L, P]``: vLLM's
  ``EplbModelState`` fields, saved by the user with ``torch.save`` (vLLM writes no load file:
  ``--eplb-config '{"log_balancedness": true}'`` only logs a balancedness number); or ``load``.
- ``.json``: an object with ``logical_count`` (SGLang ``--init-expert-location`` JSON) or
  ``load``, nested lists ``[T, L, N]`` or ``[L, N]``.

SGLang's ``stat`` recorder keeps a circular buffer of ``expert_distribution_recorder_buffer_size``
steps (default 1000) that starts zero-filled; steps with no token in any layer are dropped (and
logged). Once that buffer has wrapped, its rows are in buffer order, not time order: record
fewer steps than the buffer holds (or set it to -1, unbounded) for a faithful time series. The
``per_pass`` / ``per_token`` modes write one file per rank (``..._{rank}.pt``) holding that
rank's tokens; replay one file, or sum the ranks' files into one ``.npy`` first.

A malformed trace (unreadable or unknown file, missing key, wrong number of dimensions, empty,
negative counts, NaN or inf) raises ValueError naming the file and the problem.

A single aggregate step (``T == 1``, like the shipped trace) has no time structure; the
simulator then replays a synthetic series built by ``synthesize_series`` from it, and says so.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import tokenize
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from eplb_native.checks import FloatArray, check_array_size, check_int, check_load, is_integer
from eplb_native.json_files import read_json_file
from eplb_native.plan import Plan, expert_load_from_slot_load

logger = logging.getLogger(__name__)

TRACE_EXTENSIONS: tuple[str, ...] = (".npz", ".npy", ".csv", ".pt", ".pth", ".json")
SHIPPED_TRACE = "qwen3_30b_a3b_decode.npz"
_LONG_COLUMNS = ("step", "layer", "expert", "count")
# An archive member (.npz, .pt) larger than _SMALL_MEMBER_BYTES may expand at most
# _MAX_EXPANSION times; recorded traces compress 2-20x, DEFLATE'd zeros about 1000x.
_MAX_EXPANSION = 200
_SMALL_MEMBER_BYTES = 64 << 20
# A CSV gives counts sparsely (absent cells are 0); its dense array may have at most
# _MAX_DENSE_PER_COUNT cells per count given, or _SMALL_DENSE_CELLS cells in all.
_MAX_DENSE_PER_COUNT = 1024
_SMALL_DENSE_CELLS = 1 << 20
# numpy refuses .npy headers longer than this unless told otherwise.
_MAX_NPY_HEADER_BYTES = 10_000
# Per-step std of the synthetic series' log popularity: beyond this one expert takes a step.
_MAX_DRIFT = 100.0


@dataclass(frozen=True)
class Trace:
    """An expert-load trace.

    Attributes:
        load: float64 [T, L, N], tokens per (step, MoE layer, logical expert); finite, >= 0.
        source: where it came from (a path, or a description).
        metadata: text metadata found beside the load (model, top_k, ...).
        synthetic: None for recorded data; else how the series was made (parameter -> value).
    """

    load: FloatArray
    source: str
    metadata: dict[str, str] = field(default_factory=dict)
    synthetic: dict[str, Any] | None = None

    @property
    def num_steps(self) -> int:
        return int(self.load.shape[0])

    @property
    def num_layers(self) -> int:
        return int(self.load.shape[1])

    @property
    def num_experts(self) -> int:
        return int(self.load.shape[2])


def shipped_trace_path() -> Path:
    """Path of the trace shipped inside the package (Qwen3-30B-A3B decode, MIT; see
    ``eplb_native/data/SOURCE.md``)."""
    return Path(str(resources.files("eplb_native").joinpath("data", SHIPPED_TRACE)))


def load_trace(path: str | os.PathLike[str]) -> Trace:
    """Reads a trace file (see the module docstring for the formats).

    Returns:
        Trace with ``load`` float64 [T, L, N] (a [L, N] file becomes T = 1).

    Raises:
        ValueError naming the file and the problem for any unreadable or malformed trace.
    """
    file_path = Path(path)
    suffix = file_path.suffix.lower()
    if suffix not in TRACE_EXTENSIONS:
        msg = f"trace {file_path}: unknown extension {suffix or '(none)'!r}; supported: {', '.join(TRACE_EXTENSIONS)}"
        raise ValueError(msg)
    if not file_path.is_file():
        msg = f"trace {file_path}: no such file"
        raise ValueError(msg)
    metadata: dict[str, str] = {}
    raw: npt.ArrayLike
    try:
        if suffix == ".npz":
            raw, metadata = _read_npz(file_path)
        elif suffix == ".npy":
            raw = _read_npy(file_path)
        elif suffix == ".csv":
            raw = _read_csv(file_path)
        elif suffix == ".json":
            raw = _read_json(file_path)
        else:
            raw = _read_torch(file_path)
    except ValueError as error:
        msg = f"trace {file_path}: {error}"
        raise ValueError(msg) from error
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, csv.Error, RecursionError) as error:
        msg = f"trace {file_path}: unreadable ({type(error).__name__}: {error})"
        raise ValueError(msg) from error
    return Trace(load=_checked_load(raw, file_path), source=str(file_path), metadata=metadata)


def _checked_load(raw: npt.ArrayLike, file_path: Path) -> FloatArray:
    """float64 [T, L, N] from [T, L, N] or [L, N], finite and >= 0, or ValueError naming the file."""
    try:
        load = check_load(raw, "load", allow_steps=True)
    except ValueError as error:
        msg = f"trace {file_path}: {error}"
        raise ValueError(msg) from error
    if load.ndim == 2:
        load = load[None]
    busy = load.sum(axis=(1, 2)) > 0  # [T]
    if not busy.any():
        msg = f"trace {file_path}: load: every count is zero"
        raise ValueError(msg)
    if not busy.all():
        logger.info("trace %s: dropped %d steps with no tokens", file_path, int((~busy).sum()))
        load = np.ascontiguousarray(load[busy])
    return load


def _open_archive(file_path: Path, kind: str) -> zipfile.ZipFile:
    """The zip archive at ``file_path`` once every member is plainly readable and expands at
    most ``_MAX_EXPANSION`` times (a member of a few MB must not claim GBs: a zip bomb);
    ValueError otherwise."""
    try:
        archive = zipfile.ZipFile(file_path)
    except (zipfile.BadZipFile, NotImplementedError) as error:
        msg = f"not a readable {kind} archive ({error})"
        raise ValueError(msg) from error
    try:
        _check_members(archive)
    except ValueError:
        archive.close()
        raise
    return archive


def _check_members(archive: zipfile.ZipFile) -> None:
    for info in archive.infolist():
        if info.flag_bits & 0x1:
            msg = f"member {info.filename!r} is encrypted"
            raise ValueError(msg)
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            msg = f"member {info.filename!r}: compression method {info.compress_type} is not read"
            raise ValueError(msg)
        if info.file_size > _SMALL_MEMBER_BYTES and info.file_size > _MAX_EXPANSION * info.compress_size:
            msg = (f"member {info.filename!r} expands {info.compress_size} compressed bytes into "
                   f"{info.file_size}, more than {_MAX_EXPANSION}x (a zip bomb?)")
            raise ValueError(msg)


def _npy_header(stream: IO[bytes], size: int, name: str) -> tuple[tuple[int, ...], np.dtype[Any]]:
    """(shape, dtype) of the .npy data at the start of ``stream`` (``size`` bytes in all), after
    checking that the array the header declares fits in the bytes that follow it."""
    # The header length sits after the magic and the version (2 bytes in format 1, 4 later):
    # numpy would read that many bytes before judging them.
    prelude = stream.read(12)
    length_bytes = prelude[8:10] if prelude[6:7] == b"\x01" else prelude[8:12]
    if int.from_bytes(length_bytes, "little") > min(size, _MAX_NPY_HEADER_BYTES):
        msg = f"{name}: the header claims {int.from_bytes(length_bytes, 'little')} bytes"
        raise ValueError(msg)
    stream.seek(0)
    try:
        version = np.lib.format.read_magic(stream)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, _fortran_order, dtype = read_header(stream)
    except (SyntaxError, tokenize.TokenError, TypeError, RecursionError) as error:
        # numpy parses the header as a Python literal: a corrupt one fails in the parser.
        msg = f"{name}: unreadable .npy header ({type(error).__name__}: {error})"
        raise ValueError(msg) from error
    declared = math.prod(shape) * dtype.itemsize
    available = size - stream.tell()
    # Extents far beyond the bytes available are absurd even when another extent is 0.
    nonzero = math.prod(extent for extent in shape if extent) * max(dtype.itemsize, 1)
    if declared > available or nonzero > max(available, 1 << 20):
        msg = (f"{name}: the header declares shape {shape} of {dtype} ({declared} bytes), but "
               f"only {available} bytes follow it")
        raise ValueError(msg)
    return shape, dtype


def _read_npz(file_path: Path) -> tuple[npt.NDArray[Any], dict[str, str]]:
    with _open_archive(file_path, ".npz") as archive:
        members = {name.removesuffix(".npy"): archive.getinfo(name) for name in archive.namelist()}
        if "load" not in members:
            msg = f"missing array 'load' (found: {', '.join(members) or 'nothing'})"
            raise ValueError(msg)
        metadata = {}
        for key, info in members.items():
            with archive.open(info) as stream:
                shape, _ = _npy_header(stream, info.file_size, info.filename)
            if key == "load" or math.prod(shape) > 16:
                continue
            with archive.open(info) as stream:
                value = np.lib.format.read_array(stream, allow_pickle=False)
            metadata[key] = str(value.item() if value.ndim == 0 else value.tolist())
        with archive.open(members["load"]) as stream:
            return np.lib.format.read_array(stream, allow_pickle=False), metadata


def _read_npy(file_path: Path) -> npt.NDArray[Any]:
    with file_path.open("rb") as stream:
        try:
            _npy_header(stream, file_path.stat().st_size, "load")
            stream.seek(0)
            return np.lib.format.read_array(stream, allow_pickle=False)
        except ValueError as error:
            msg = f"not a readable .npy array ({error})"
            raise ValueError(msg) from error


def _read_csv(file_path: Path) -> npt.NDArray[np.float64]:
    with file_path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    if len(rows) < 2:
        msg = "expected a header row and at least one data row"
        raise ValueError(msg)
    header = [name.strip().lower() for name in rows[0]]
    body = [row for row in rows[1:] if row]
    widths = {len(row) for row in body}
    if widths != {len(header)}:
        msg = (
            f"every row needs {len(header)} cells like the header, found rows with {sorted(widths)}"
        )
        raise ValueError(msg)
    try:
        values = np.asarray([[float(cell) for cell in row] for row in body], dtype=np.float64)
    except ValueError as error:
        msg = f"non-numeric cell ({error})"
        raise ValueError(msg) from error
    if sorted(header) == sorted(_LONG_COLUMNS):
        columns = [header.index(name) for name in _LONG_COLUMNS]
        step, layer, expert = (
            _index_column(values[:, c], name)
            for c, name in zip(columns[:3], _LONG_COLUMNS[:3], strict=True)
        )
        load = _dense_zeros((step.max() + 1, layer.max() + 1, expert.max() + 1), len(body))
        np.add.at(load, (step, layer, expert), values[:, columns[3]])
        return load
    if header[:2] == ["step", "layer"] and len(header) > 2:
        step = _index_column(values[:, 0], "step")
        layer = _index_column(values[:, 1], "layer")
        load = _dense_zeros((step.max() + 1, layer.max() + 1, len(header) - 2), values[:, 2:].size)
        np.add.at(load, (step, layer), values[:, 2:])
        return load
    msg = (
        f"unrecognised CSV header {rows[0]}; expected long format 'step,layer,expert,count' "
        "or wide format 'step,layer,<one column per expert>'"
    )
    raise ValueError(msg)


def _index_column(column: npt.NDArray[np.float64], name: str) -> npt.NDArray[np.int64]:
    if not np.all((column >= 0) & (column == np.round(column)) & (column < 2.0**62)):
        msg = f"column {name!r}: expected integers >= 0"
        raise ValueError(msg)
    return column.astype(np.int64)


def _dense_zeros(shape: tuple[int, ...], num_given: int) -> npt.NDArray[np.float64]:
    """The zero [T, L, N] array a CSV's ``num_given`` counts are added into; ValueError when the
    indices make it more than ``_MAX_DENSE_PER_COUNT`` times larger than the counts given (an
    index such as step 2**40 in one short row)."""
    extents = [int(extent) for extent in shape]
    cells = math.prod(extents)
    if cells > max(_SMALL_DENSE_CELLS, _MAX_DENSE_PER_COUNT * num_given):
        msg = (f"indices span [steps, layers, experts] = {extents} ({cells} cells) but the file "
               f"gives only {num_given} counts: an index is far too large")
        raise ValueError(msg)
    return np.zeros(shape, dtype=np.float64)


def _read_json(file_path: Path) -> npt.ArrayLike:
    data = read_json_file(file_path)
    if not isinstance(data, dict):
        msg = "expected a JSON object with 'logical_count' or 'load'"
        raise ValueError(msg)
    for key in ("logical_count", "load"):
        if key in data:
            try:
                values = np.asarray(data[key])
            except (TypeError, ValueError, OverflowError, RecursionError) as error:
                msg = f"{key!r}: not a rectangular array of numbers ({error})"
                raise ValueError(msg) from error
            if values.dtype.kind not in "iuf":
                msg = f"{key!r}: expected nested lists of numbers within float64, got {values.dtype} values"
                raise ValueError(msg)
            return values
    msg = f"missing key 'logical_count' or 'load' (found: {', '.join(map(str, data)) or 'nothing'})"
    raise ValueError(msg)


def _read_torch(file_path: Path) -> npt.ArrayLike:
    try:
        import torch
    except ImportError as error:
        msg = "reading .pt traces needs torch: pip install 'eplb-native[torch]'"
        raise ValueError(msg) from error
    if zipfile.is_zipfile(file_path):  # torch.save's format since torch 1.6
        _open_archive(file_path, "torch").close()
    try:
        data = torch.load(file_path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types (UnpicklingError, RuntimeError, ...)
        msg = f"not a readable torch file ({type(error).__name__}: {error})"
        raise ValueError(msg) from error
    return _from_torch_object(data, torch)


def _from_torch_object(data: object, torch: Any) -> npt.ArrayLike:
    def numpy_of(value: object, key: str) -> npt.NDArray[Any]:
        """The tensor's values: integer tensors as they are, floating ones as float64."""
        if not isinstance(value, torch.Tensor):
            msg = f"{key!r}: expected a tensor, got {type(value).__name__}"
            raise ValueError(msg)
        if value.layout != torch.strided or value.device.type != "cpu" or value.is_quantized:
            msg = (f"{key!r}: expected a dense CPU tensor, got layout {value.layout} on "
                   f"{value.device.type}{' (quantized)' if value.is_quantized else ''}")
            raise ValueError(msg)
        if value.is_complex() or value.dtype == torch.bool:
            msg = f"{key!r}: expected real numbers, got dtype {value.dtype}"
            raise ValueError(msg)
        stored = value.untyped_storage().nbytes() // value.element_size()
        if value.numel() > stored:
            msg = (f"{key!r}: an expanded view ({value.numel()} elements over {stored} stored); "
                   "save the tensor itself")
            raise ValueError(msg)
        tensor: Any = value.detach()
        return np.asarray((tensor.to(torch.float64) if tensor.is_floating_point() else tensor).numpy())

    if isinstance(data, torch.Tensor):
        return numpy_of(data, "tensor")
    if not isinstance(data, Mapping):
        msg = f"expected a tensor or a dict, got {type(data).__name__}"
        raise ValueError(msg)
    for key in ("logical_count", "load"):
        if key in data:
            return numpy_of(data[key], key)
    if "expert_load_window" in data and "physical_to_logical_map" in data:
        window = numpy_of(data["expert_load_window"], "expert_load_window")
        phy2log = numpy_of(data["physical_to_logical_map"], "physical_to_logical_map")
        return _logical_from_physical(window, phy2log, "expert_load_window")
    if "records" in data and "last_physical_to_logical_map" in data:
        phy2log = numpy_of(data["last_physical_to_logical_map"], "last_physical_to_logical_map")
        return _logical_from_records(data["records"], phy2log, numpy_of)
    msg = (
        "no expert load found: expected a tensor or a dict with 'logical_count', 'load', "
        "'expert_load_window' + 'physical_to_logical_map', or 'records' + "
        f"'last_physical_to_logical_map' (found keys: {', '.join(map(str, data))})"
    )
    raise ValueError(msg)


def _logical_from_records(
    records: object, phy2log: npt.NDArray[Any], numpy_of: Any
) -> npt.NDArray[np.float64]:
    """SGLang per-pass records -> float64 [T, L, N], one step per forward_pass_id."""
    if not isinstance(records, list) or not records:
        msg = "'records': expected a non-empty list"
        raise ValueError(msg)
    by_pass: dict[Any, npt.NDArray[np.float64]] = {}
    for position, record in enumerate(records):
        if not isinstance(record, Mapping) or "global_physical_count" not in record:
            msg = f"'records'[{position}]: expected a dict with 'global_physical_count'"
            raise ValueError(msg)
        counts = numpy_of(
            record["global_physical_count"], f"records[{position}].global_physical_count"
        )
        if counts.shape != phy2log.shape:
            msg = (f"'records'[{position}].global_physical_count: expected the map's shape "
                   f"{phy2log.shape} [layers, physical], got {counts.shape}")
            raise ValueError(msg)
        pass_id = record.get("forward_pass_id", position)
        if not is_integer(pass_id):  # a one-element integer tensor
            key = f"records[{position}].forward_pass_id"
            values = numpy_of(pass_id, key)
            if values.size != 1 or values.dtype.kind not in "iu":
                msg = f"{key!r}: expected one integer, got {values.dtype} values of shape {values.shape}"
                raise ValueError(msg)
            pass_id = values.item()
        by_pass[pass_id] = by_pass[pass_id] + counts if pass_id in by_pass else counts
    physical = np.stack([by_pass[pass_id] for pass_id in sorted(by_pass)])  # [T, L, P]
    return _logical_from_physical(physical, phy2log, "records")


def _logical_from_physical(
    physical: npt.NDArray[Any], phy2log: npt.NDArray[Any], field_name: str
) -> npt.NDArray[np.float64]:
    """Counts per physical slot [T, L, P] -> per logical expert [T, L, N] via phy2log [L, P]."""
    if physical.ndim != 3 or phy2log.ndim != 2 or physical.shape[1:] != phy2log.shape:
        msg = (
            f"{field_name!r}: expected [steps, layers, physical] matching the map [layers, physical] "
            f"{phy2log.shape}, got {physical.shape}"
        )
        raise ValueError(msg)
    plan = Plan.from_phy2log(phy2log)
    return expert_load_from_slot_load(plan, check_load(physical, field_name, allow_steps=True))


@dataclass(frozen=True)
class SyntheticSeries:
    """How ``synthesize_series`` turns one aggregate ``[L, N]`` into ``[T, L, N]`` steps.

    Each layer's expert popularity starts at the aggregate's shares and drifts: its log follows
    a mean-reverting random walk (log-normal multiplier ``exp(x)``, ``x <- (1 - reversion) * x +
    drift * N(0, 1)`` per step and expert). Each step routes ``tokens_per_step * top_k``
    selections per layer, drawn multinomially from the drifted shares (the distinct-experts-per-
    token rule of top-k is not modelled).

    Attributes:
        num_steps: T, steps to generate.
        tokens_per_step: tokens in one step's batch.
        top_k: experts chosen per token.
        drift: standard deviation of the per-step log-popularity change.
        reversion: pull of the log popularity back to 0 per step (0: pure random walk).
        seed: the RNG seed; the same parameters give the same series.
    """

    num_steps: int = 300
    tokens_per_step: int = 256
    top_k: int = 8
    drift: float = 0.05
    reversion: float = 0.02
    seed: int = 0

    def describe(self, source: str) -> dict[str, Any]:
        """The parameters and method, as written to the CLI output and its JSON."""
        return {
            "from": source,
            "method": (
                "multinomial sampling of tokens_per_step * top_k selections per layer and step "
                "from the aggregate expert shares, drifted by a mean-reverting log-normal random "
                "walk on each expert's popularity"
            ),
            "num_steps": self.num_steps,
            "tokens_per_step": self.tokens_per_step,
            "top_k": self.top_k,
            "drift": self.drift,
            "reversion": self.reversion,
            "seed": self.seed,
        }


def synthesize_series(aggregate: npt.ArrayLike, series: SyntheticSeries) -> FloatArray:
    """A synthetic per-step series from an aggregate load (see ``SyntheticSeries``).

    Args:
        aggregate: float [L, N], tokens per logical expert over a whole run.
        series: the generation parameters.

    Returns:
        float64 [T, L, N] integer-valued counts; each step and layer sums to
        ``tokens_per_step * top_k``.
    """
    shares = check_load(aggregate, "aggregate")
    for value, name in (
        (series.num_steps, "num_steps"),
        (series.tokens_per_step, "tokens_per_step"),
        (series.top_k, "top_k"),
    ):
        check_int(value, name, minimum=1)
    check_int(series.tokens_per_step * series.top_k, "tokens_per_step", minimum=1)  # draws per layer
    check_array_size("num_steps", "the series [steps, layers, experts]", series.num_steps, *shares.shape)
    if not 0 <= series.drift <= _MAX_DRIFT or not 0 <= series.reversion <= 1:  # NaN fails too
        msg = (f"drift, reversion: expected 0 <= drift <= {_MAX_DRIFT} and 0 <= reversion <= 1, "
               f"got {series.drift}, {series.reversion}")
        raise ValueError(msg)
    totals = shares.sum(axis=1, keepdims=True)
    if np.any(totals <= 0):
        msg = "aggregate: a layer has no load; its expert shares are undefined"
        raise ValueError(msg)
    # A small floor keeps never-seen experts reachable once their popularity drifts up.
    base = shares / totals + 1e-6  # [L, N]
    rng = np.random.default_rng(series.seed)
    log_popularity = np.zeros_like(base)
    selections = series.tokens_per_step * series.top_k
    out = np.empty((series.num_steps, *base.shape), dtype=np.float64)
    for step in range(series.num_steps):
        # Shifted by each layer's largest exponent so that exp cannot overflow.
        probabilities = base * np.exp(log_popularity - log_popularity.max(axis=1, keepdims=True))
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        out[step] = rng.multinomial(selections, probabilities)
        log_popularity = (
            1.0 - series.reversion
        ) * log_popularity + series.drift * rng.standard_normal(base.shape)
    return out


def as_time_series(trace: Trace, series: SyntheticSeries) -> Trace:
    """The trace the simulator replays: ``trace`` itself when it has several steps; a single
    aggregate step is expanded into a synthetic series made with ``series``."""
    if trace.num_steps > 1:
        return trace
    logger.info("trace %s has one aggregate step: replaying a synthetic series", trace.source)
    return Trace(
        load=synthesize_series(trace.load[0], series),
        source=trace.source,
        metadata=trace.metadata,
        synthetic=series.describe(trace.source),
    )


__all__ = [
    "SHIPPED_TRACE",
    "TRACE_EXTENSIONS",
    "SyntheticSeries",
    "Trace",
    "as_time_series",
    "load_trace",
    "shipped_trace_path",
    "synthesize_series",
]
