"""HeatDump: writes heat windows as simulator traces, so that the next start can be placed from
the heat this one served (``eplb-native plan --trace dump.npz -o map.json``, then
``expert_map_path: map.json``; SGLang's ``--init-expert-location`` does the same from its own
dumps)."""

from __future__ import annotations

import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from eplb_native.runtime.heat import HeatWindow

logger = logging.getLogger(__name__)


class HeatDump:
    """Writes each heat window to one ``.npz`` file in the trace format ``load_trace`` reads,
    replacing the previous window, on a background thread (the serving thread only hands the
    window over).

    Example::

        dump = HeatDump("/var/run/eplb/heat.npz", num_ranks=16)
        dump.write(window)   # every window (``EplbUpdateManager`` does it on rank 0)
        dump.close()         # waits for the last write

    File contents: ``load`` int64 [T, L, N], tokens routed to each logical expert in each
    counted step of the window (all ranks summed); ``first_step`` (counted steps before the
    window) and ``num_ranks`` as metadata. Written to a temporary file beside ``path`` and
    renamed, so a reader never sees half a file.
    """

    def __init__(self, path: str | os.PathLike[str], *, num_ranks: int) -> None:
        self.path = Path(path)
        if self.path.suffix != ".npz":
            msg = f"path: expected a path ending in .npz, got {str(path)!r}"
            raise ValueError(msg)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.num_ranks = num_ranks
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eplb-heat-dump")
        self._pending: Future[None] | None = None
        self.num_written = 0

    def write(self, window: HeatWindow) -> None:
        """Queues ``window`` for writing (a write still running is finished first)."""
        self.flush()
        self._pending = self._executor.submit(self._write, window)

    def flush(self) -> None:
        """Waits for the queued write; a failed write is logged, not raised (serving goes on)."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        try:
            pending.result()
        except OSError as error:
            logger.warning("EPLB heat dump to %s failed: %s", self.path, error)

    def close(self) -> None:
        """Finishes the queued write and stops the thread."""
        self.flush()
        self._executor.shutdown(wait=True)

    def _write(self, window: HeatWindow) -> None:
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        with temporary.open("wb") as handle:
            np.savez_compressed(handle, load=window.counts, first_step=np.int64(window.first_step),
                                num_ranks=np.int64(self.num_ranks))
        temporary.replace(self.path)
        self.num_written += 1
        logger.debug("EPLB heat dump: steps %d..%d written to %s", window.first_step,
                     window.first_step + window.num_steps - 1, self.path)


__all__ = ["HeatDump"]
