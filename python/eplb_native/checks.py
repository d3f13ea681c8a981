"""Input checks shared by the package (planning, metrics, runtime, integrations): each converts
once and raises ValueError naming the field."""

from __future__ import annotations

import math
from typing import Any, NoReturn, TypeGuard

import numpy as np
import numpy.typing as npt

from eplb_native import _core
from eplb_native.limits import MAX_ARRAY_ELEMENTS, MAX_THREADS

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

#: Integers handed to the C++ core are int64: below this.
INT64_LIMIT = 2**63
#: The largest sum of a load array accepted (the C++ core's kMaxLoadTotal): far enough below
#: the float64 limit (1.8e308) that no sum of its values in any order overflows.
MAX_LOAD_TOTAL = 1e300


def is_integer(value: object) -> TypeGuard[int | np.integer[Any]]:
    """Whether ``value`` is a Python or numpy integer (a bool is not one)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_int(value: object, field: str, *, minimum: int, below: int = INT64_LIMIT) -> int:
    """``value`` as an int when it is an integer (not a bool) with ``minimum <= value < below``
    (by default: within int64); ValueError naming ``field`` otherwise. An index into ``n``
    items: ``check_int(index, field, minimum=0, below=n)``."""
    if is_integer(value) and minimum <= value < below:
        return int(value)
    if below != INT64_LIMIT:
        wanted = f"in [{minimum}, {below})"
    elif not is_integer(value) or value < minimum:
        wanted = f">= {minimum}"
    else:
        wanted = "< 2**63"
    msg = f"{field}: expected an integer {wanted}, got {value!r}"
    raise ValueError(msg)


def check_positive_int(value: object, field: str) -> int:
    """``value`` as an int when it is an integer > 0 (within int64); ValueError naming
    ``field`` otherwise."""
    if not is_integer(value) or value <= 0:
        msg = f"{field}: expected a positive integer, got {value!r}"
        raise ValueError(msg)
    return check_int(value, field, minimum=1)


def check_divisor(value: object, field: str, total: int, of: str) -> int:
    """``value`` as an int when it is a positive integer dividing ``total``; ValueError
    "<field>: expected a positive divisor of <of>, got <value>" otherwise (``of`` names the
    total, e.g. "8 ranks")."""
    if not is_integer(value) or value <= 0 or total % value:
        msg = f"{field}: expected a positive divisor of {of}, got {value!r}"
        raise ValueError(msg)
    return int(value)


def as_array(values: npt.ArrayLike, field: str) -> npt.NDArray[Any]:
    """``np.asarray(values)``, a ragged or unconvertible sequence being a ValueError naming
    ``field``."""
    try:
        return np.asarray(values)
    except (TypeError, ValueError, OverflowError) as error:
        msg = f"{field}: expected a rectangular array of numbers ({error})"
        raise ValueError(msg) from error


def as_float_array(values: npt.ArrayLike, field: str) -> FloatArray:
    """C-contiguous float64 copy (or view) of a bool, integer or float array; complex, string
    and object arrays are a ValueError naming ``field``."""
    array = as_array(values, field)
    if array.dtype.kind not in "biuf":
        msg = f"{field}: expected a numeric array, got dtype {array.dtype}"
        raise ValueError(msg)
    return np.ascontiguousarray(array, dtype=np.float64)


def as_int_array(values: npt.ArrayLike, field: str) -> IntArray:
    """``values`` as a C-contiguous int64 array: integer dtypes within int64, or floats holding
    whole numbers; anything else (fractions, bool, complex, strings, objects, ragged lists) is a
    ValueError naming ``field``."""
    array = as_array(values, field)
    if array.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            whole = np.isfinite(array) & (array == np.round(array)) & (np.abs(array) < 2.0**63)
        if not np.all(whole):
            msg = f"{field}: expected integer expert ids, got non-integer floats"
            raise ValueError(msg)
    elif array.dtype.kind not in "iu":
        msg = f"{field}: expected an integer array, got dtype {array.dtype}"
        raise ValueError(msg)
    elif array.dtype.kind == "u" and array.size and int(array.max()) >= INT64_LIMIT:
        msg = f"{field}: id {int(array.max())} does not fit int64"
        raise ValueError(msg)
    return np.ascontiguousarray(array, dtype=np.int64)


def check_layer_ids(layers: npt.ArrayLike, num_layers: int, field: str = "layers") -> IntArray:
    """``layers`` as int64 [K] when they are distinct layer ids in [0, num_layers); ValueError
    naming ``field`` otherwise."""
    ids = as_int_array(layers, field).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= num_layers or np.unique(ids).size != ids.size):
        msg = f"{field}: expected distinct layer ids in [0, {num_layers}), got {ids.tolist()}"
        raise ValueError(msg)
    return ids


def check_load(
    load: npt.ArrayLike, field: str, *, allow_steps: bool = False, check_values: bool = True
) -> FloatArray:
    """Converts a load array once to float64 and checks it: [L, N] (or [T, L, N] when
    ``allow_steps``), non-empty, finite and >= 0. Raises ValueError naming ``field``.

    ``check_values=False`` skips the finite / >= 0 scan, for arrays handed to a C++ core that
    scans them itself (a long history is 100+ MB: one scan, not two). Values summing beyond
    ``MAX_LOAD_TOTAL`` are refused too (every rank load and PAR is a sum of them)."""
    array = as_float_array(load, field)
    allowed = (2, 3) if allow_steps else (2,)
    if array.ndim not in allowed or array.size == 0:
        dims = "[layers, experts] or [steps, layers, experts]" if allow_steps else "[layers, experts]"
        msg = f"{field}: expected a non-empty array {dims}, got shape {array.shape}"
        raise ValueError(msg)
    if not check_values:
        return array
    all_valid, total = _core.scan_load_values(array)  # one pass, without the GIL
    if not all_valid:
        _raise_bad_value(array, field)
    if not total <= MAX_LOAD_TOTAL:
        msg = (f"{field}: the values sum beyond 1e300, where sums over ranks, layers and steps "
               "overflow float64 (scale them down)")
        raise ValueError(msg)
    return array


def _raise_bad_value(array: FloatArray, field: str) -> NoReturn:
    """Raises the ValueError naming ``field`` and the index of the first NaN or inf of
    ``array``, else of its first negative value (there is one)."""
    if not np.all(np.isfinite(array)):
        bad = np.argwhere(~np.isfinite(array))[0]
        kind = "NaN" if np.isnan(array[tuple(bad)]) else "inf"
        msg = f"{field}: {kind} at index {tuple(int(i) for i in bad)} (loads must be finite and >= 0)"
        raise ValueError(msg)
    bad = np.argwhere(array < 0)[0]
    msg = f"{field}: negative value at index {tuple(int(i) for i in bad)} (loads must be >= 0)"
    raise ValueError(msg)


def check_history(
    history: npt.ArrayLike, expert_shape: tuple[int, ...], field: str = "history"
) -> IntArray | FloatArray:
    """The per-step heat [T, L, N] for a C++ core: int64 when it holds integer token counts
    (read in place there: no float64 copy of a long window), float64 otherwise.

    Checks the dtype and that the shape is [T, *expert_shape] with T >= 1; raises ValueError
    naming ``field``. Values (NaN, inf, negative) are left to the C++ core's single scan."""
    array = as_array(history, field)
    checked: IntArray | FloatArray
    if array.dtype.kind in "iu" and np.can_cast(array.dtype, np.int64):
        checked = np.ascontiguousarray(array, dtype=np.int64)
    else:
        checked = check_load(array, field, allow_steps=True, check_values=False)
    if checked.ndim != 3 or checked.shape[0] == 0 or checked.shape[1:] != tuple(expert_shape):
        shape = ", ".join(str(extent) for extent in expert_shape)
        msg = f"{field}: expected a non-empty array [steps, {shape}], got shape {checked.shape}"
        raise ValueError(msg)
    return checked


def check_num_threads(value: object, field: str = "num_threads") -> int:
    """``value`` as a planner thread count: an integer in [0, MAX_THREADS], 0 meaning every
    usable core. A call runs on at most ``usable_cores()`` threads whatever it asks.

    Raises:
        ValueError naming ``field`` for anything else (bool, float, negative, too large).
    """
    if not is_integer(value) or not 0 <= value <= MAX_THREADS:
        msg = f"{field}: expected an integer from 0 (all usable cores) to {MAX_THREADS}, got {value!r}"
        raise ValueError(msg)
    return int(value)


def check_array_size(field: str, what: str, *extents: int) -> int:
    """The product of ``extents`` (each >= 0); ValueError naming ``field`` when it exceeds
    ``MAX_ARRAY_ELEMENTS`` (``what`` names the array, e.g. "a plan of layers x slots")."""
    size = math.prod(int(extent) for extent in extents)
    if size > MAX_ARRAY_ELEMENTS:
        sizes = " x ".join(str(int(extent)) for extent in extents)
        msg = f"{field}: {what} ({sizes} elements) exceeds the limit of {MAX_ARRAY_ELEMENTS} elements"
        raise ValueError(msg)
    return size


__all__ = [
    "INT64_LIMIT",
    "MAX_LOAD_TOTAL",
    "as_array",
    "as_float_array",
    "as_int_array",
    "check_array_size",
    "check_divisor",
    "check_history",
    "check_int",
    "check_layer_ids",
    "check_load",
    "check_num_threads",
    "check_positive_int",
    "is_integer",
]
