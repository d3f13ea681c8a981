"""Figures of a replay: PAR over time per policy, and rank load before/after for one layer.

Needs matplotlib (``pip install 'eplb-native[plot]'``), imported on first use with the Agg
backend so no display is needed.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from eplb_native.sim.replay import STATIC, ReplayResult

logger = logging.getLogger(__name__)


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as error:
        msg = "plots need matplotlib: pip install 'eplb-native[plot]'"
        raise ImportError(msg) from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_replay(
    result: ReplayResult, path: str | os.PathLike[str], layer: int = 0, title: str = ""
) -> Path:
    """Writes one PNG: per-step PAR of every policy (top), and for ``layer`` the tokens per rank
    at each served step under the default placement ("before", the static row) and under each
    policy ("after"), as heatmaps sharing one colour scale (below).

    Args:
        result: a replay.
        path: the PNG to write.
        layer: the MoE layer of the heatmaps, 0 <= layer < L.
        title: figure title.

    Returns:
        The path written.
    """
    first = next(iter(result.policies.values()))
    num_layers = first.rank_load.shape[1]
    if not 0 <= layer < num_layers:
        msg = f"layer: expected 0 <= layer < {num_layers}, got {layer}"
        raise ValueError(msg)
    plt = _pyplot()
    runs = list(result.policies.values())
    steps = range(result.first_step, result.first_step + first.par_steps.shape[0])
    figure, axes = plt.subplots(
        1 + len(runs),
        1,
        figsize=(10, 3 + 1.6 * len(runs)),
        squeeze=False,
        constrained_layout=True,
        gridspec_kw={"height_ratios": [2.5] + [1.0] * len(runs)},
    )
    par_axis = axes[0, 0]
    for run in runs:
        par_axis.plot(steps, run.par_steps, label=run.name, linewidth=1.0)
    par_axis.set_xlabel("step")
    par_axis.set_ylabel("PAR (max / mean rank load)")
    par_axis.set_title(title or "per-step PAR, layer mean (out of sample)")
    par_axis.legend(loc="upper right", fontsize="small")
    peak = max(float(run.rank_load[:, layer, :].max()) for run in runs)
    image = None
    for axis, run in zip(axes[1:, 0], runs, strict=True):
        label = "before (default placement)" if run.name == STATIC else f"after: {run.name}"
        image = axis.imshow(
            run.rank_load[:, layer, :].T,
            aspect="auto",
            interpolation="nearest",
            vmin=0,
            vmax=peak,
            extent=(steps.start, steps.stop, result.settings.num_ranks - 0.5, -0.5),
            cmap="viridis",
        )
        axis.set_ylabel("rank")
        axis.set_title(f"layer {layer} tokens per rank, {label}", fontsize="small")
    axes[-1, 0].set_xlabel("step")
    if image is not None:
        figure.colorbar(image, ax=list(axes[1:, 0]), label="tokens")
    out = Path(path)
    figure.savefig(out, format="png", dpi=100)
    plt.close(figure)
    logger.info("wrote %s", out)
    return out


__all__ = ["plot_replay"]
