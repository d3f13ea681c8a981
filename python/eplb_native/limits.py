"""Bounds on what a call may ask of the machine: planner threads and array sizes.

Planner calls share one pool of ``usable_cores()`` worker threads per process (started on the
first parallel call); ``num_threads`` caps how many of them one call uses. A plan array, or a
map derived from one, holds at most ``MAX_ARRAY_ELEMENTS`` elements: larger sizes are refused
with a ValueError before anything is allocated (``checks.check_num_threads`` and
``checks.check_array_size`` enforce both).
"""

from __future__ import annotations

from eplb_native import _core

#: The largest ``num_threads`` a call may ask for (0 means every usable core).
MAX_THREADS: int = _core.MAX_THREADS
#: The most elements one plan array (or a map derived from it) may hold: 2**28.
MAX_ARRAY_ELEMENTS: int = _core.MAX_ARRAY_ELEMENTS


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity (``os.sched_getaffinity``) capped by a
    cgroup CPU quota (``cpu.max``, or v1 ``cpu.cfs_quota_us``), rounded up; at least 1."""
    return int(_core.usable_cores())


__all__ = ["MAX_ARRAY_ELEMENTS", "MAX_THREADS", "usable_cores"]
