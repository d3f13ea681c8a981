"""Graph safety of the serving path: heat recording, replica routing and the torch kernel of
fused_moe_decode run on the meta device (any host sync or data-dependent shape raises there)
and trace whole with torch.compile(fullgraph=True), giving the eager results."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import eplb_native
from eplb_native import ops
from eplb_native.runtime import HeatRecorder
from eplb_native.runtime.routing import ReplicaRouter

# 2 ranks of 4 slots over N = 6 experts; this process plays rank 1 (slots 4..7).
ROW = [0, 1, 2, 3, 4, 5, 0, 1]
NUM_EXPERTS, RANK, NUM_RANKS, NUM_SLOTS = 6, 1, 2, 4
TOKENS, HIDDEN, INTER, TOP_K = 7, 16, 8, 3


def _weights(device: str, w8a8: bool = False) -> dict[str, list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    if w8a8:
        return {
            "w1": [torch.randint(-127, 128, (HIDDEN, 2 * INTER), generator=gen, dtype=torch.int8).to(device)
                   for _ in range(NUM_SLOTS)],
            "w2": [torch.randint(-127, 128, (INTER, HIDDEN), generator=gen, dtype=torch.int8).to(device)
                   for _ in range(NUM_SLOTS)],
            "w1_scale": [(torch.rand(2 * INTER, generator=gen) / 500).to(device) for _ in range(NUM_SLOTS)],
            "w2_scale": [(torch.rand(HIDDEN, generator=gen) / 500).bfloat16().to(device) for _ in range(NUM_SLOTS)],
        }  # fmt: skip
    return {
        "w1": [(torch.randn(HIDDEN, 2 * INTER, generator=gen) / 4).bfloat16().to(device) for _ in range(NUM_SLOTS)],
        "w2": [(torch.randn(INTER, HIDDEN, generator=gen) / 4).bfloat16().to(device) for _ in range(NUM_SLOTS)],
    }  # fmt: skip


def _serve_step(
    router: ReplicaRouter,
    heat: HeatRecorder,
    x: torch.Tensor,
    logical_ids: torch.Tensor,
    scales: torch.Tensor,
    weights: dict[str, list[torch.Tensor]],
    mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Route, count the local slots with ``record`` (layer 0) and in the operator (layer 1)."""
    physical = router.route(logical_ids)  # [BS, K] global slots
    local = physical - RANK * NUM_SLOTS  # other ranks' slots fall outside [0, S)
    heat.record(0, local)
    out, counts = ops.fused_moe_decode_torch(
        x, local.to(torch.int32), scales, x_active_mask=mask, moe_load=heat.buffer(1), **weights
    )
    return out, counts, physical


def _inputs(device: str) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(TOKENS, HIDDEN, generator=gen).bfloat16()
    logical_ids = torch.randint(0, NUM_EXPERTS, (TOKENS, TOP_K), generator=gen)
    scales = torch.rand(TOKENS, TOP_K, generator=gen)
    mask = torch.rand(TOKENS, generator=gen) < 0.8
    return tuple(t.to(device) for t in (x, logical_ids, scales, mask))


def _parts(device: str, routing: str) -> tuple[ReplicaRouter, HeatRecorder]:
    router = ReplicaRouter(ROW, NUM_EXPERTS, rank=RANK, num_ranks=NUM_RANKS, routing=routing, device=device)  # type: ignore[arg-type]
    # One process stands for rank 1: a one-rank recorder of two layers over 4 slots.
    slots = eplb_native.default_placement(2, NUM_SLOTS, 1)
    return router, HeatRecorder(slots, collection_interval=4, device=device)


@pytest.mark.parametrize("routing", ["fixed", "spread"])
@pytest.mark.parametrize("w8a8", [False, True])
def test_serving_step_runs_on_the_meta_device(routing: str, w8a8: bool) -> None:
    router, heat = _parts("meta", routing)
    x, logical_ids, scales, mask = _inputs("meta")
    out, counts, physical = _serve_step(router, heat, x, logical_ids, scales, _weights("meta", w8a8), mask)
    assert (out.device.type, out.shape, out.dtype) == ("meta", (TOKENS, HIDDEN), torch.bfloat16)
    assert (counts.shape, counts.dtype) == ((NUM_SLOTS,), torch.int64)
    assert physical.shape == (TOKENS, TOP_K)
    assert heat.step() is None  # the step's fold into the window is device-only too
    # The ring form of moe_load as well.
    ring = torch.zeros((3, NUM_SLOTS), dtype=torch.int32, device="meta")
    counter = torch.zeros((), dtype=torch.int32, device="meta")
    ids = torch.zeros((TOKENS, TOP_K), dtype=torch.int32, device="meta")
    ops.fused_moe_decode_torch(x, ids, scales, moe_load=ring, load_counter=counter, **_weights("meta", w8a8))


def test_a_host_sync_raises_on_the_meta_device() -> None:
    # What the meta runs above would catch: the boolean-mask filter and bincount of a
    # sync-bound recorder, and a .tolist() of per-expert counts.
    ids = torch.zeros(8, dtype=torch.int64, device="meta")
    with pytest.raises(NotImplementedError):
        torch.bincount(ids[ids >= 0])
    with pytest.raises(NotImplementedError):
        ids.tolist()


@pytest.mark.parametrize("routing", ["fixed", "spread"])
@pytest.mark.parametrize("w8a8", [False, True])
def test_serving_step_traces_whole_and_matches_eager(routing: str, w8a8: bool) -> None:
    torch._dynamo.reset()
    eager_router, eager_heat = _parts("cpu", routing)
    router, heat = _parts("cpu", routing)
    x, logical_ids, scales, mask = _inputs("cpu")
    weights = _weights("cpu", w8a8)
    compiled = torch.compile(_serve_step, backend="aot_eager", fullgraph=True)
    for _ in range(2):
        got = compiled(router, heat, x, logical_ids, scales, weights, mask)
        want = _serve_step(eager_router, eager_heat, x, logical_ids, scales, weights, mask)
    for got_tensor, want_tensor in zip(got, want, strict=True):
        assert torch.equal(got_tensor, want_tensor)
    for layer in (0, 1):
        assert torch.equal(heat.buffer(layer), eager_heat.buffer(layer))
    # Two calls of the same routing: each buffer holds twice the step's local pairs.
    local = want[2] - RANK * NUM_SLOTS
    in_range = local[(local >= 0) & (local < NUM_SLOTS)]
    assert torch.equal(heat.buffer(0), 2 * torch.bincount(in_range, minlength=NUM_SLOTS))
    routed = local[mask][(local[mask] >= 0) & (local[mask] < NUM_SLOTS)]
    assert torch.equal(heat.buffer(1), 2 * torch.bincount(routed, minlength=NUM_SLOTS))
    assert torch.equal(want[1], torch.bincount(routed, minlength=NUM_SLOTS))


def test_router_update_keeps_storage_under_a_compiled_step() -> None:
    # A compiled step reads the tables through the same tensors after load(): new values, same
    # memory, no recompilation needed for the new placement.
    torch._dynamo.reset()
    router = ReplicaRouter(ROW, NUM_EXPERTS, rank=RANK, num_ranks=NUM_RANKS, routing="spread")
    compiled = torch.compile(router.route, backend="aot_eager", fullgraph=True)
    ids = torch.arange(NUM_EXPERTS).repeat(2, 1)
    before = compiled(ids)
    pointers = [t.data_ptr() for t in router.tables]
    new_row = np.roll(ROW, 3)
    router.load(new_row)
    assert [t.data_ptr() for t in router.tables] == pointers
    fresh = ReplicaRouter(new_row, NUM_EXPERTS, rank=RANK, num_ranks=NUM_RANKS, routing="spread")
    assert torch.equal(compiled(ids), fresh.route(ids))
    assert not torch.equal(compiled(ids), before)
