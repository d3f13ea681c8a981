"""Writes the HarMoEny expert-load traces the benchmarks read (``--traces-dir``) from a checkout
of the HarMoEny repository (github.com/sacs-epfl/HarMoEny, measured at commit 563b5a6).

The repository declares no licence, so its data is not copied into this one; this script turns
its CSV files into ``.npz`` traces (``load`` int64 [T, L, N], tokens routed to each expert) on
your machine:

- ``harmoeny_qwen15moe.npz`` from ``data_processed/expert_freq_qwen_policy_datasets.csv``:
  Qwen1.5-MoE-A2.7B-Chat (60 routed experts, top-4), MoE layers 0..11, prefill on 6 GPUs,
  counts summed over GPUs; 80 steps: 20 iterations each of bookcorpus, random, wikitext, wmt19
  (in that order) -> [80, 12, 60];
- ``harmoeny_exflow_qwen15moe.npz`` from ``ExFlow/raw_trace/qwen/<rank>/moe_layer-<l>.csv``
  (the ``expert distribution`` column of each rank, summed over the 6 ranks): 2 iterations of
  bookcorpus, all 24 MoE layers -> [2, 24, 60].

    git clone https://github.com/sacs-epfl/HarMoEny && git -C HarMoEny checkout 563b5a6
    python benchmarks/harmoeny_traces.py HarMoEny --out traces
    PYTHONPATH=python python benchmarks/bench_flashlb.py --traces-dir traces
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import numpy.typing as npt

MODEL = "Qwen/Qwen1.5-MoE-A2.7B-Chat"
TOP_K = 4
NUM_EXPERTS = 60
DATASETS_CSV = Path("data_processed/expert_freq_qwen_policy_datasets.csv")
EXFLOW_DIR = Path("ExFlow/raw_trace/qwen")


def datasets_trace(checkout: Path) -> npt.NDArray[np.int64]:
    """int64 [datasets x iterations, layers, experts] from the datasets CSV, steps ordered by
    dataset name, then iteration."""
    rows: dict[tuple[str, int, int], list[int]] = {}
    with (checkout / DATASETS_CSV).open(newline="") as file:
        for row in csv.DictReader(file):
            key = (row["dataset"], int(row["iteration"]), int(row["layer_idx"]))
            rows[key] = [int(row[str(expert)]) for expert in range(NUM_EXPERTS)]
    steps = sorted({(dataset, iteration) for dataset, iteration, _ in rows})
    layers = sorted({layer for _, _, layer in rows})
    load = np.zeros((len(steps), len(layers), NUM_EXPERTS), dtype=np.int64)
    for step, (dataset, iteration) in enumerate(steps):
        for layer in layers:
            load[step, layer] = rows[(dataset, iteration, layer)]
    return load


def exflow_trace(checkout: Path) -> npt.NDArray[np.int64]:
    """int64 [iterations, layers, experts]: every rank's expert distribution, summed."""
    folder = checkout / EXFLOW_DIR
    ranks = sorted(int(path.name) for path in folder.iterdir() if path.name.isdigit())
    num_layers = len(list((folder / str(ranks[0])).glob("moe_layer-*.csv")))
    per_rank: dict[tuple[int, int, int], list[int]] = {}
    for rank in ranks:
        for layer in range(num_layers):
            with (folder / str(rank) / f"moe_layer-{layer}.csv").open(newline="") as file:
                for row in csv.DictReader(file):
                    counts = json.loads(row["expert distribution"])
                    per_rank[(int(row["iteration"]), rank, layer)] = counts
    iterations = sorted({iteration for iteration, _, _ in per_rank})
    load = np.zeros((len(iterations), num_layers, NUM_EXPERTS), dtype=np.int64)
    for (iteration, _, layer), counts in per_rank.items():
        load[iterations.index(iteration), layer] += np.asarray(counts, dtype=np.int64)
    return load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkout", type=Path, help="a HarMoEny checkout")
    parser.add_argument("--out", type=Path, required=True, help="folder to write the .npz into")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, load in (
        ("harmoeny_qwen15moe", datasets_trace(args.checkout)),
        ("harmoeny_exflow_qwen15moe", exflow_trace(args.checkout)),
    ):
        path = args.out / f"{name}.npz"
        np.savez(path, load=load, model=np.array(MODEL), top_k=np.array(TOP_K))
        print(f"wrote {path}: load {list(load.shape)} (steps, layers, experts)")


if __name__ == "__main__":
    main()
