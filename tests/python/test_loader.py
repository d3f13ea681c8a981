"""WeightLoader on real gloo processes: weights land in the slots the new table names, layers
commit only on every rank together, a failed transfer abandons its layer everywhere, and the
staging buffers are allocated once."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from dist_utils import run_on_ranks

from eplb_native.runtime.loader import WeightLoader

NUM_RANKS = 4
NUM_LAYERS = 3
NUM_SLOTS = 3
NUM_EXPERTS = 10  # P = 12: two redundant slots per layer
SHAPES = ((4, 6), (6,))  # two weight kinds per expert, like w1 and w2


def expert_weight(layer_idx: int, expert: int, kind: int) -> torch.Tensor:
    """The reference weights of (layer, expert, kind): distinct for every triple."""
    numel = int(np.prod(SHAPES[kind]))
    base = float(layer_idx * 1000 + expert * 10 + kind)
    return (base + torch.arange(numel, dtype=torch.float32) / numel).reshape(SHAPES[kind])


def random_table(seed: int) -> np.ndarray:
    """int64 [L, D, S], each expert at least once, no expert twice on a rank."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(NUM_LAYERS):
        while True:
            row = rng.permutation(np.concatenate([np.arange(NUM_EXPERTS), rng.integers(0, NUM_EXPERTS, 2)]))
            ranks = row.reshape(NUM_RANKS, NUM_SLOTS)
            if all(len(set(r.tolist())) == NUM_SLOTS for r in ranks):
                rows.append(ranks)
                break
    return np.stack(rows).astype(np.int64)


class FailingLoader(WeightLoader):
    """Rank ``fail_rank`` fails layer ``fail_layer`` once, before posting anything (a dead link)."""

    def __init__(self, *args: Any, fail_rank: int, fail_layer: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fail_rank, self.fail_layer = fail_rank, fail_layer

    def _post_layer(self, position: int, transfers: Any, tag: int) -> Any:
        if self._rank == self.fail_rank and transfers.layer_idx == self.fail_layer:
            self.fail_rank = -1
            msg = "injected link failure"
            raise RuntimeError(msg)
        return super()._post_layer(position, transfers, tag)


def _worker(rank: int, world_size: int, scenario: str, out_dir: str) -> None:
    scenario, mode = scenario.split("/")
    old, new = random_table(1), random_table(2)
    slot_weights = [
        [[expert_weight(layer_idx, int(old[layer_idx, rank, s]), kind).clone() for s in range(NUM_SLOTS)]
         for kind in range(len(SHAPES))]
        for layer_idx in range(NUM_LAYERS)
    ]
    installed: list[tuple[int, list[int]]] = []
    commit_steps: list[int] = []

    def install(layer_idx: int, row: np.ndarray) -> None:
        installed.append((layer_idx, row[rank].tolist()))
        commit_steps.append(steps)

    # The default transfer timeout (30 s): a failure must reach the other ranks long before it.
    kwargs: dict[str, Any] = {"max_layers_per_step": 2, "timeout_s": 30.0, "ranks_per_node": 2,
                              "side_stream": mode == "stream"}
    if scenario == "fail":
        loader: WeightLoader = FailingLoader(slot_weights, install, old, rank, fail_rank=2, fail_layer=1, **kwargs)
    else:
        loader = WeightLoader(slot_weights, install, old, rank, **kwargs)
    loader.allocate()
    ptrs = [t.data_ptr() for t in loader.staging_buffers()]
    loader.schedule(new, layers=[2, 1, 0])
    steps = 0
    results = []
    step_s = []
    while loader.pending:
        start = time.perf_counter()
        loader.pre_forward()
        results.extend(loader.post_forward())
        step_s.append(time.perf_counter() - start)
        steps += 1
    if scenario == "fail":
        # The transfer group was replaced; a retry of the abandoned layer now succeeds.
        loader.schedule(new, layers=[1])
        results.extend(loader.run_to_completion())
    table = loader.table
    for layer_idx in range(NUM_LAYERS):
        for kind in range(len(SHAPES)):
            for slot in range(NUM_SLOTS):
                want = expert_weight(layer_idx, int(table[layer_idx, rank, slot]), kind)
                assert torch.equal(slot_weights[layer_idx][kind][slot], want), (layer_idx, kind, slot)
    torch.save(
        {"table": table, "installed": installed, "steps": steps, "commit_steps": commit_steps,
         "round_s": sum(step_s),
         "results": [(u.layer_idx, u.applied, u.num_copies, u.global_bytes) for u in results],
         "same_staging": ptrs == [t.data_ptr() for t in loader.staging_buffers()]},
        Path(out_dir) / f"rank{rank}.pt",
    )
    loader.close()


def _run(scenario: str, tmp_path: Any) -> list[dict[str, Any]]:
    run_on_ranks(_worker, NUM_RANKS, scenario, str(tmp_path))
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(NUM_RANKS)]


# "thread": the CPU mode (background thread); "stream": the GPU/NPU mode (side stream, posted
# from the calling thread), run here on torch's CPU stream stand-ins.
MODES = ["thread", "stream"]


@pytest.mark.parametrize("mode", MODES)
def test_layers_move_in_priority_order_and_slots_hold_the_named_experts(tmp_path: Any, mode: str) -> None:
    outs = _run(f"ok/{mode}", tmp_path)
    old, new = random_table(1), random_table(2)
    for rank, out in enumerate(outs):
        assert np.array_equal(out["table"], new), f"{rank=}"
        # Two layers per batch, in priority order 2, 1 then 0; a batch commits one step after it
        # was posted at the earliest (each rank's flag "finished" all-reduced in between), on
        # every rank at the same step.
        assert out["steps"] >= 4
        assert out["commit_steps"] == outs[0]["commit_steps"], f"{rank=}"
        assert [layer for layer, _ in out["installed"]] == [2, 1, 0]
        assert all(row == new[layer, rank].tolist() for layer, row in out["installed"])
        assert out["same_staging"], "staging buffers were reallocated"
    from eplb_native import count_weight_copies

    for layer_idx in range(NUM_LAYERS):
        copies = sum(c for out in outs for (lay, ok, c, _) in out["results"] if lay == layer_idx and ok)
        want = count_weight_copies(old[layer_idx].reshape(1, -1), new[layer_idx].reshape(1, -1), NUM_RANKS)
        assert copies == want, f"{layer_idx=}"


@pytest.mark.parametrize("mode", MODES)
def test_failed_transfer_on_one_rank_abandons_the_layer_everywhere(tmp_path: Any, mode: str) -> None:
    outs = _run(f"fail/{mode}", tmp_path)
    new = random_table(2)
    for rank, out in enumerate(outs):
        first_round = out["results"][:3]
        assert [(lay, ok) for lay, ok, _, _ in first_round] == [(2, True), (1, False), (0, True)], f"{rank=}"
        # Layer 1 was installed only by the retry, after layers 2 and 0.
        assert [layer for layer, _ in out["installed"]] == [2, 0, 1]
        assert np.array_equal(out["table"], new)
        # The failure reached every rank through the step flags: no rank waited for its 30 s
        # transfer timeout, neither within a step nor before abandoning the layer.
        assert out["round_s"] < 5.0, f"{rank=}: the first round took {out['round_s']:.1f} s"


def test_schedule_rejects_a_table_of_the_wrong_shape() -> None:
    with pytest.raises(ValueError, match=r"^table:"):
        WeightLoader([], lambda *_: None, np.zeros((2, 2)), 0)
