"""Runs a test function on several real gloo processes (CPU), for the distributed tests."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WorkerFn = Callable[..., None]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _worker(rank: int, fn: WorkerFn, world_size: int, port: int, args: tuple[Any, ...]) -> None:
    # NOTE: forked children must not enter the OpenMP pool the parent already started (libgomp
    # deadlocks after fork); one intra-op thread keeps torch out of it.
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=timedelta(seconds=60))
    try:
        fn(rank, world_size, *args)
    finally:
        dist.destroy_process_group()


def warm_operator() -> None:
    """Calls ``fused_moe_decode`` once in this process: its first call imports torch's
    dispatcher helpers (sympy and ~800 modules, seconds), which forked ranks then inherit
    instead of each importing them."""
    from eplb_native import ops

    x = torch.zeros(1, 2)
    ops.fused_moe_decode(x, torch.zeros(1, 1, dtype=torch.int32), torch.ones(1, 1), [torch.zeros(2, 2)],
                         [torch.zeros(1, 2)])


def run_on_ranks(fn: WorkerFn, world_size: int, *args: Any, daemon: bool = False) -> None:
    """Calls ``fn(rank, world_size, *args)`` on ``world_size`` gloo processes and waits.

    Processes are forked (about 0.2 s for four, against ~10 s to spawn fresh interpreters that
    import torch); ``daemon`` makes them daemonic, as engine worker processes often are (they
    may not start ``multiprocessing`` children). An exception in any worker fails the caller
    with that worker's traceback (``torch.multiprocessing.ProcessRaisedException``).
    """
    mp.start_processes(
        _worker,
        args=(fn, world_size, _free_port(), args),
        nprocs=world_size,
        join=True,
        daemon=daemon,
        start_method="fork",
    )
