"""Seeded synthetic MoE workloads and trace loading for the benchmarks.

``deepseek_v3_like``: a per-step expert-load series [T, L, N] shaped like DeepSeek-V3 serving
(58 MoE layers, 256 routed experts, top-8): each layer has a log-normal expert popularity (the
hottest expert carries about 5-10x the mean, as in recorded traces of Qwen1.5-MoE and
Qwen3-30B-A3B), which drifts as a Gaussian random walk on the logits; each step routes
``tokens_per_step`` tokens (times top_k) by Poisson sampling. Synthetic: no real trace is copied.

Recorded traces are read from a folder the user names with ``--traces-dir`` (``.npz`` files with
``load`` [T, L, N]; ``harmoeny_traces.py`` writes the HarMoEny ones from a HarMoEny checkout).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import numpy.typing as npt

from eplb_native import sim

FloatArray = npt.NDArray[np.float64]



def add_traces_dir_argument(parser: argparse.ArgumentParser) -> None:
    """``--traces-dir DIR`` (default: none, and the benchmark skips its recorded-trace rows)."""
    parser.add_argument(
        "--traces-dir",
        type=Path,
        metavar="DIR",
        help="folder of recorded .npz traces, e.g. the HarMoEny ones written by "
        "benchmarks/harmoeny_traces.py; without it the recorded-trace rows are skipped",
    )


def deepseek_v3_like(
    num_steps: int = 1024,
    num_layers: int = 58,
    num_experts: int = 256,
    top_k: int = 8,
    tokens_per_step: int = 4096,
    popularity_sigma: float = 0.8,
    drift_per_step: float = 0.01,
    seed: int = 0,
) -> FloatArray:
    """Per-step expert loads, float64 [T, L, N] (tokens routed to each expert in each step).

    Args:
        num_steps, num_layers, num_experts, top_k: T, L, N and experts per token.
        tokens_per_step: tokens in each forward step.
        popularity_sigma: std of the log-normal expert popularity (0.8: hottest ~7x mean).
        drift_per_step: std of the per-step random walk of each expert's log-popularity.
        seed: RNG seed; the same seed gives the same series.
    """
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, popularity_sigma, size=(num_layers, num_experts))
    loads = np.empty((num_steps, num_layers, num_experts), dtype=np.float64)
    routed = float(tokens_per_step * top_k)
    for step in range(num_steps):
        logits += rng.normal(0.0, drift_per_step, size=logits.shape)
        weights = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probs = weights / weights.sum(axis=-1, keepdims=True)
        loads[step] = rng.poisson(routed * probs)
    return loads


def load_trace(traces_dir: Path, name: str) -> FloatArray:
    """The ``load`` array [T, L, N] of ``traces_dir/<name>.npz`` as float64 (read and checked
    by ``eplb_native.sim.load_trace``)."""
    return sim.load_trace(traces_dir / f"{name}.npz").load


def trace_names(traces_dir: Path | None) -> list[str]:
    """Names of the .npz traces in ``traces_dir`` (none when it is None)."""
    if traces_dir is None:
        return []
    if not traces_dir.is_dir():
        msg = f"--traces-dir: {traces_dir} is not a folder"
        raise SystemExit(msg)
    return sorted(path.stem for path in traces_dir.glob("*.npz"))
