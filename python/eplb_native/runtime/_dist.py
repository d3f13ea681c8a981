"""The torch.distributed calls the runtime makes: this rank's place in its group, the gather."""

from __future__ import annotations

import torch
import torch.distributed as dist


def group_rank_and_size(group: dist.ProcessGroup | None) -> tuple[int, int]:
    """(rank, number of ranks) of this process in ``group``; (0, 1) when torch.distributed is
    not initialised (single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        if group is not None:
            msg = "group: a process group was given but torch.distributed is not initialised"
            raise ValueError(msg)
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def all_gather_into_tensor(
    output: torch.Tensor, tensor: torch.Tensor, group: dist.ProcessGroup | None, *, async_op: bool = False
) -> dist.Work | None:
    """One all-gather of every rank's ``tensor`` into the preallocated ``output`` (rank-major);
    with ``async_op`` it runs in the background and the returned work handle waits for it.

    torch 2.13 renamed ``all_gather_into_tensor`` to ``all_gather_single`` (the old name warns
    FutureWarning); both are the same single collective and both run on gloo.
    """
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    work: dist.Work | None = gather(output, tensor, group=group, async_op=async_op)
    return work
