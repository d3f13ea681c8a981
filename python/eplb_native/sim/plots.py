"""Figures of a replay: PAR over time per policy, and rank load before/after for one layer.

Needs matplotlib (``pip install 'eplb-native[plot]'``), imported on first use with the Agg
backend so no display is needed.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from eplb_native.checks import check_int
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
    """Writes ``replay_figure(result, layer, title)`` as a PNG to ``path``; returns the path."""
    plt = _pyplot()
    figure = replay_figure(result, layer, title)
    out = Path(path)
    figure.savefig(out, format="png", dpi=100)
    plt.close(figure)
    logger.info("wrote %s", out)
    return out


def replay_figure(result: ReplayResult, layer: int = 0, title: str = "") -> Any:
    """The matplotlib Figure of a replay: per-step PAR of the static placement (top, its own scale: it sits far
    above the others) and of every rebalancing policy (below it, re-plan steps marked), then for
    ``layer`` the tokens per rank at each served step under the default placement ("before",
    the static row) and under each policy ("after"), as heatmaps sharing one colour scale.
    Legends sit right of the plots.

    Args:
        result: a replay.
        layer: the MoE layer of the heatmaps, 0 <= layer < L.
        title: figure title.

    Returns:
        The Figure; its axes, top to bottom: static PAR, policies' PAR, one heatmap per row.
    """
    first = next(iter(result.policies.values()))
    num_layers = first.rank_load.shape[1]
    check_int(layer, "layer", minimum=0, below=num_layers)
    plt = _pyplot()
    runs = list(result.policies.values())
    static = result.policies[STATIC]
    rebalanced = [run for run in runs if run.name != STATIC]
    steps = range(result.first_step, result.first_step + first.par_steps.shape[0])
    replans = range(result.first_step, steps.stop, result.settings.interval)
    figure, axes = plt.subplots(
        2 + len(runs),
        1,
        figsize=(11, 4.5 + 1.5 * len(runs)),
        squeeze=False,
        sharex=True,
        constrained_layout=True,
        gridspec_kw={"height_ratios": [0.9, 2.4] + [1.0] * len(runs)},
    )
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    static_axis, par_axis = axes[0, 0], axes[1, 0]
    static_axis.plot(steps, static.par_steps, color="grey", linewidth=1.0, label="static")
    static_axis.set_ylabel("PAR")
    static_axis.set_title(title or "per-step PAR, layer mean (out of sample)")
    static_axis.legend(
        ["static (default\nplacement, no\nrebalancing)"], loc="upper left",
        bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False,
    )  # fmt: skip
    for index, run in enumerate(rebalanced):
        par_axis.plot(
            steps, run.par_steps, label=run.name, linewidth=1.0, color=colours[index % len(colours)]
        )
    for step in replans:
        par_axis.axvline(step, color="lightgrey", linewidth=0.6, zorder=0)
    par_axis.set_ylabel("PAR (max / mean rank load)")
    if rebalanced:
        par_axis.legend(
            title=f"re-planned every\n{result.settings.interval} steps (grey)",
            loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small",
            title_fontsize="small", frameon=False,
        )  # fmt: skip
    peak = max(float(run.rank_load[:, layer, :].max()) for run in runs)
    image = None
    for axis, run in zip(axes[2:, 0], runs, strict=True):
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
        figure.colorbar(image, ax=list(axes[2:, 0]), label="tokens", location="right")
    return figure


__all__ = ["plot_replay", "replay_figure"]
