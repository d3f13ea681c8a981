"""A cap on the address space a test may add, so that an absurd allocation fails the test
(MemoryError) instead of succeeding slowly or swapping. Linux only."""

from __future__ import annotations

import resource
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

import eplb_native

HEADROOM = 1 << 30
"""Bytes of address space a capped block may map beyond what the process holds already."""


def _mapped_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    msg = "no VmSize in /proc/self/status"
    raise RuntimeError(msg)


@contextmanager
def memory_cap(headroom: int = HEADROOM) -> Iterator[None]:
    """Lowers RLIMIT_AS to the current address space plus ``headroom`` inside the block."""
    if not sys.platform.startswith("linux"):
        pytest.skip("the memory cap reads /proc/self/status (Linux)")
    # The planner pool starts its workers on the first parallel call: start them uncapped.
    eplb_native.rebalance_experts(np.ones((2, 4)), 4, 1, 1, 2)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _mapped_bytes() + headroom
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
