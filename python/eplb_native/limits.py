"""Bounds on what a call may ask of the machine: planner threads and array sizes.

Planner calls share one pool of ``usable_cores()`` worker threads per process (started on the
first parallel call); ``num_threads`` caps how many of them one call uses. A plan array, or a
map derived from one, holds at most ``MAX_ARRAY_ELEMENTS`` elements: larger sizes are refused
with a ValueError before anything is allocated.
"""

from __future__ import annotations

import math

from eplb_native import _core
from eplb_native.checks import is_integer

#: The largest ``num_threads`` a call may ask for (0 means every usable core).
MAX_THREADS: int = _core.MAX_THREADS
#: The most elements one plan array (or a map derived from it) may hold: 2**28.
MAX_ARRAY_ELEMENTS: int = _core.MAX_ARRAY_ELEMENTS


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity (``os.sched_getaffinity``) capped by a
    cgroup CPU quota (``cpu.max``, or v1 ``cpu.cfs_quota_us``), rounded up; at least 1."""
    return int(_core.usable_cores())


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


__all__ = ["MAX_ARRAY_ELEMENTS", "MAX_THREADS", "check_array_size", "check_num_threads", "usable_cores"]
