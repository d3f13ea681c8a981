"""Input checks shared by the planning modules: each converts once and raises ValueError naming
the field."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


def check_int(value: object, field: str, *, minimum: int, below: int | None = None) -> int:
    """``value`` as an int when it is an integer (not a bool) with ``minimum <= value`` (and
    ``value < below`` when given); ValueError naming ``field`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        msg = f"{field}: expected an integer >= {minimum}, got {value!r}"
        raise ValueError(msg)
    if below is not None and value >= below:
        msg = f"{field}: expected an integer < {below}, got {value!r}"
        raise ValueError(msg)
    return int(value)


def check_positive_int(value: object, field: str) -> int:
    """``value`` as an int when it is an integer > 0; ValueError naming ``field`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        msg = f"{field}: expected a positive integer, got {value!r}"
        raise ValueError(msg)
    return int(value)


def as_int_array(values: npt.ArrayLike, field: str) -> IntArray:
    """``values`` as a C-contiguous int64 array: integer dtypes, or floats holding whole
    numbers; ValueError naming ``field`` otherwise."""
    array = np.asarray(values)
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            msg = f"{field}: expected integer expert ids, got non-integer floats"
            raise ValueError(msg)
    elif array.dtype.kind not in "iu":
        msg = f"{field}: expected an integer array, got dtype {array.dtype}"
        raise ValueError(msg)
    return np.ascontiguousarray(array, dtype=np.int64)


def check_load(
    load: npt.ArrayLike, field: str, *, allow_steps: bool = False, check_values: bool = True
) -> FloatArray:
    """Converts a load array once to float64 and checks it: [L, N] (or [T, L, N] when
    ``allow_steps``), non-empty, finite and >= 0. Raises ValueError naming ``field``.

    ``check_values=False`` skips the finite / >= 0 scan, for arrays handed to a C++ core that
    scans them itself (a long history is 100+ MB: one scan, not two)."""
    array = np.asarray(load)
    if array.dtype.kind not in "biuf":
        msg = f"{field}: expected a numeric array, got dtype {array.dtype}"
        raise ValueError(msg)
    array = np.ascontiguousarray(array, dtype=np.float64)
    allowed = (2, 3) if allow_steps else (2,)
    if array.ndim not in allowed or array.size == 0:
        dims = "[layers, experts] or [steps, layers, experts]" if allow_steps else "[layers, experts]"
        msg = f"{field}: expected a non-empty array {dims}, got shape {array.shape}"
        raise ValueError(msg)
    if not check_values:
        return array
    if not np.all(np.isfinite(array)):
        bad = np.argwhere(~np.isfinite(array))[0]
        kind = "NaN" if np.isnan(array[tuple(bad)]) else "inf"
        msg = f"{field}: {kind} at index {tuple(int(i) for i in bad)} (loads must be finite and >= 0)"
        raise ValueError(msg)
    if np.any(array < 0):
        bad = np.argwhere(array < 0)[0]
        msg = f"{field}: negative value at index {tuple(int(i) for i in bad)} (loads must be >= 0)"
        raise ValueError(msg)
    return array


def check_history(
    history: npt.ArrayLike, expert_shape: tuple[int, ...], field: str = "history"
) -> IntArray | FloatArray:
    """The per-step heat [T, L, N] for a C++ core: int64 when it holds integer token counts
    (read in place there: no float64 copy of a long window), float64 otherwise.

    Checks the dtype and that the shape is [T, *expert_shape] with T >= 1; raises ValueError
    naming ``field``. Values (NaN, inf, negative) are left to the C++ core's single scan."""
    array = np.asarray(history)
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


__all__ = ["as_int_array", "check_history", "check_int", "check_load", "check_positive_int"]
