"""plan_transfers: applied to a simulated per-slot weight store, every slot ends up holding the
expert the new table names, with the fewest network copies and sender/receiver agreement."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import eplb_native
from eplb_native.runtime.transfer import LayerTransfers, plan_transfers


def _random_table(rng: np.random.Generator, num_layers: int, num_experts: int, num_ranks: int,
                  num_slots: int) -> np.ndarray:
    """int64 [L, D, S]: every expert at least once, the extra slots random (duplicates on one
    rank allowed, to exercise the receive-once-then-copy path)."""
    num_physical = num_ranks * num_slots
    rows = []
    for _ in range(num_layers):
        row = np.concatenate([np.arange(num_experts), rng.integers(0, num_experts, num_physical - num_experts)])
        rows.append(rng.permutation(row))
    return np.stack(rows).reshape(num_layers, num_ranks, num_slots).astype(np.int64)


@st.composite
def table_pairs(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, int]:
    """(old [L, D, S], new [L, D, S], ranks_per_node) over the same shape."""
    num_layers = draw(st.integers(1, 3))
    num_ranks = draw(st.integers(1, 6))
    num_slots = draw(st.integers(1, 5))
    num_experts = draw(st.integers(1, num_ranks * num_slots))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    old = _random_table(rng, num_layers, num_experts, num_ranks, num_slots)
    new = _random_table(rng, num_layers, num_experts, num_ranks, num_slots)
    if draw(st.booleans()):  # mostly-unchanged tables: a few slots swapped
        new = old.copy()
        flat = new.reshape(num_layers, -1)
        for layer_idx in range(num_layers):
            i, j = rng.integers(0, flat.shape[1], 2)
            flat[layer_idx, [i, j]] = flat[layer_idx, [j, i]]
    ranks_per_node = draw(st.sampled_from([d for d in range(1, num_ranks + 1) if num_ranks % d == 0]))
    return old, new, ranks_per_node


def _simulate(old: np.ndarray, views: list[list[LayerTransfers]]) -> np.ndarray:
    """Applies every rank's transfers to a weight store whose slot 'weights' are expert ids
    (as written by old [L, D, S]); reads only old weights, the way the loader stages them."""
    store = old.copy()
    for rank, layer_views in enumerate(views):
        for transfers in layer_views:
            layer_idx = transfers.layer_idx
            staged: dict[int, int] = {}
            for receive in transfers.receives:
                if receive.source == "local":
                    staged[receive.slot] = old[layer_idx, rank, receive.src_slot]
                elif receive.source == "remote":
                    sender = views[receive.src_rank][[t.layer_idx for t in views[receive.src_rank]].index(layer_idx)]
                    matches = [s for s in sender.sends if s.dst_rank == rank and s.expert == receive.expert]
                    assert len(matches) == 1, f"{layer_idx=} {rank=} {receive=}: sender has {matches}"
                    staged[receive.slot] = old[layer_idx, receive.src_rank, matches[0].src_slot]
            for receive in transfers.receives:
                if receive.source == "received":
                    staged[receive.slot] = staged[receive.src_slot]
            for slot, weights in staged.items():
                store[layer_idx, rank, slot] = weights
    return store


@settings(max_examples=150, deadline=None)
@given(table_pairs())
def test_applied_transfers_put_the_new_expert_in_every_slot(case: tuple[np.ndarray, np.ndarray, int]) -> None:
    old, new, ranks_per_node = case
    num_ranks = old.shape[1]
    views = [plan_transfers(old, new, rank, ranks_per_node=ranks_per_node) for rank in range(num_ranks)]
    store = _simulate(old, views)
    assert np.array_equal(store, new), f"{old.tolist()=} {new.tolist()=}"


@settings(max_examples=150, deadline=None)
@given(table_pairs())
def test_copies_match_count_weight_copies_and_sends_pair_with_receives(
    case: tuple[np.ndarray, np.ndarray, int],
) -> None:
    old, new, ranks_per_node = case
    num_layers, num_ranks, _ = old.shape
    views = [plan_transfers(old, new, rank, ranks_per_node=ranks_per_node) for rank in range(num_ranks)]
    for layer_idx in range(num_layers):
        layer = [views[rank][layer_idx] for rank in range(num_ranks)]
        want = eplb_native.count_weight_copies(
            old[layer_idx].reshape(1, -1), new[layer_idx].reshape(1, -1), num_ranks
        )
        assert sum(t.num_copies for t in layer) == want, f"{layer_idx=}"
        total_sends = sum(len(t.sends) for t in layer)
        assert total_sends == layer[0].num_global_remote == sum(len(t.remote_receives) for t in layer)
        for dst in range(num_ranks):
            experts = [r.expert for r in layer[dst].remote_receives]
            assert len(experts) == len(set(experts)), f"{layer_idx=} {dst=}: an expert sent twice"
            for src in range(num_ranks):
                sent = [s.expert for s in layer[src].sends if s.dst_rank == dst]
                received = [r.expert for r in layer[dst].remote_receives if r.src_rank == src]
                assert sent == received, f"{layer_idx=} {src=} {dst=}: post orders differ"


@settings(max_examples=100, deadline=None)
@given(table_pairs())
def test_same_node_source_preferred(case: tuple[np.ndarray, np.ndarray, int]) -> None:
    old, new, ranks_per_node = case
    _num_layers, num_ranks, _ = old.shape
    for rank in range(num_ranks):
        for transfers in plan_transfers(old, new, rank, ranks_per_node=ranks_per_node):
            held = old[transfers.layer_idx]
            for receive in transfers.remote_receives:
                same_node = [
                    src for src in range(num_ranks)
                    if src // ranks_per_node == rank // ranks_per_node and receive.expert in held[src]
                ]
                if same_node:
                    assert receive.src_rank in same_node, f"{transfers.layer_idx=} {rank=} {receive=}"
                assert receive.expert not in held[rank], "a held expert must be copied locally"


def test_swap_on_one_rank_is_two_local_copies_and_no_traffic() -> None:
    old = np.array([[[0, 1], [2, 3]]])
    new = np.array([[[1, 0], [2, 3]]])
    transfers = plan_transfers(old, new, 0)[0]
    assert [(r.slot, r.expert, r.source, r.src_slot) for r in transfers.receives] == [
        (0, 1, "local", 1),
        (1, 0, "local", 0),
    ]
    assert transfers.sends == ()
    assert transfers.num_global_remote == 0
    assert plan_transfers(old, new, 1)[0].is_empty


def test_expert_needed_twice_on_a_rank_is_received_once() -> None:
    old = np.array([[[0, 1], [2, 3]]])
    new = np.array([[[0, 1], [1, 1]]])  # rank 1 needs expert 1 twice (and loses 2, 3)
    receiver = plan_transfers(old, new, 1)[0]
    assert [(r.slot, r.source, r.src_rank, r.src_slot) for r in receiver.receives] == [
        (0, "remote", 0, 1),
        (1, "received", 1, 0),
    ]
    sender = plan_transfers(old, new, 0)[0]
    assert [(s.dst_rank, s.expert, s.src_slot) for s in sender.sends] == [(1, 1, 1)]
    assert receiver.bytes_received(100) == 100
    assert sender.bytes_sent(100) == 100
    assert receiver.global_bytes(100) == 100


def test_sends_spread_over_holders_and_layers_subset_keeps_order() -> None:
    # Expert 0 is on ranks 0 and 1; ranks 2 and 3 both need it: one send from each holder.
    old = np.array([[[0, 1], [0, 2], [3, 4], [5, 6]]] * 2)
    new = np.array([[[0, 1], [0, 2], [0, 4], [0, 6]]] * 2)
    sources = [plan_transfers(old, new, dst)[0].remote_receives[0].src_rank for dst in (2, 3)]
    assert sources == [0, 1]
    assert [t.layer_idx for t in plan_transfers(old, new, 0, layers=[1, 0])] == [1, 0]


def test_node_locality_beats_send_balance() -> None:
    # Ranks per node 2: rank 3 needs expert 0, held by ranks 0 (other node) and 2 (same node).
    old = np.array([[[0, 1], [4, 5], [0, 2], [3, 6]]])
    new = np.array([[[0, 1], [4, 5], [0, 2], [0, 6]]])
    receive = plan_transfers(old, new, 3, ranks_per_node=2)[0].remote_receives[0]
    assert receive.src_rank == 2
    assert plan_transfers(old, new, 3)[0].remote_receives[0].src_rank == 0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"old_table": np.zeros((1, 2)), "new_table": np.zeros((1, 2)), "rank": 0}, "old_table"),
        ({"old_table": np.zeros((1, 2, 2), int), "new_table": np.zeros((1, 2, 3), int), "rank": 0}, "new_table"),
        ({"old_table": np.zeros((1, 2, 2), int), "new_table": np.zeros((1, 2, 2), int), "rank": 2}, "rank"),
        ({"old_table": np.zeros((1, 2, 2), int), "new_table": np.zeros((1, 2, 2), int), "rank": 0,
          "ranks_per_node": 0}, "ranks_per_node"),
        ({"old_table": np.zeros((1, 2, 2), int), "new_table": np.zeros((1, 2, 2), int), "rank": 0,
          "layers": [1]}, "layers"),
        ({"old_table": np.zeros((1, 2, 2), int), "new_table": np.ones((1, 2, 2), int), "rank": 0}, "new_table"),
        ({"old_table": -np.ones((1, 2, 2), int), "new_table": np.zeros((1, 2, 2), int), "rank": 0}, "old_table"),
    ],
)
def test_bad_input_names_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}:"):
        plan_transfers(**kwargs)  # type: ignore[arg-type]
