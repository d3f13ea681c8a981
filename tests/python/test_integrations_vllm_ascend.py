"""eplb_native.integrations.vllm_ascend against vllm-ascend's EPLB policy contract.

vllm-ascend needs an Ascend NPU stack to import, so this is a contract test: it restates the
interface and the check rules of vllm-project/vllm-ascend at commit
182b75ea84ff13ece27b57391331ef8935410aea:
- vllm_ascend/eplb/core/policy/policy_abstract.py: ``rebalance_experts(current_expert_table,
  expert_workload)`` returns ``(changed, priority, new_table)``;
- vllm_ascend/eplb/core/eplb_worker.py: ``EplbWorker`` passes torch tensors (the table int64
  [L, D, S]; the workload [L, D, S], or [T, L, D, S] when ``policy_type == 3``), converts a
  non-tensor table with ``torch.tensor``, and ``check_expert_placement`` reverts a layer when
  the new table has fewer distinct experts, a rank holds an expert twice, or an expert that
  stays on a rank sits in another slot;
- vllm_ascend/eplb/core/policy/policy_factory.py: ``PolicyFactory.generate_policy(policy_type)``,
  a static method, builds the policy (0 random, 1 default, 2 swift balancer, 3 FlashLB);
- vllm_ascend/eplb/core/eplb_utils.py: ``generate_log2phy_map(expert_map, ep_rank, tp_size)``
  lists each expert's replicas rank by rank and gives rank r the one at
  ``r % k`` (no tp_size, or 1) or ``(r % tp_size + r // tp_size + expert) % k``.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import plans
from eplb_native.config import POLICY_NAMES
from eplb_native.integrations import vllm_ascend
from eplb_native.integrations.vllm_ascend import VllmAscendPolicy
from eplb_native.plan import (
    Plan,
    default_placement,
    rank_expert_maps,
    rank_log2phy,
    slot_load_from_expert_load,
)
from eplb_native.policies import rebalance_experts
from eplb_native.sim import load_trace, shipped_trace_path

torch = pytest.importorskip("torch")


def reverted_layers(old: np.ndarray, new: np.ndarray) -> list[int]:
    """The layers vllm-ascend's check_expert_placement would revert (restated, see above)."""
    reverted = []
    for layer, (old_layer, new_layer) in enumerate(zip(old, new, strict=True)):
        if np.unique(new_layer).size < np.unique(old_layer).size:
            reverted.append(layer)
            continue
        for old_rank, new_rank in zip(old_layer, new_layer, strict=True):
            stays = np.isin(new_rank, old_rank)
            if np.unique(new_rank).size < new_rank.size or not np.array_equal(
                new_rank[stays], old_rank[stays]
            ):
                reverted.append(layer)
                break
    return reverted


def _windows() -> tuple[np.ndarray, list[np.ndarray]]:
    """The shipped trace's 48 layers on 8 ranks x 17 slots, from vLLM's default placement:
    the table in force int64 [L, D, S] and two windows of expert load [L, N]."""
    load = load_trace(shipped_trace_path()).load.sum(axis=0)
    drift = np.random.default_rng(0).lognormal(0.0, 0.3, size=load.shape)
    return default_placement(48, 128, 8, 8).table(8), [load, np.round(load * drift)]


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_no_layer_is_reverted_over_two_rebalances(policy: str) -> None:
    table, windows = _windows()
    engine_policy = VllmAscendPolicy(policy)
    for load in windows:
        plan = Plan.from_phy2log(table.reshape(48, -1), 128)
        workload = slot_load_from_expert_load(plan, load).reshape(table.shape)
        if policy == "flashlb":  # policy_type 3: per-stage heat [T, L, D, S]
            workload = np.stack([workload * 0.4, workload * 0.6])
        changed, priority, new_table = engine_policy.rebalance_experts(
            torch.from_numpy(table), torch.from_numpy(workload)
        )
        assert isinstance(changed, bool)
        assert priority.dtype == np.int64
        new_table = torch.tensor(new_table)  # what the worker does with a non-tensor table
        assert new_table.shape == table.shape
        assert new_table.dtype == torch.int64
        assert reverted_layers(table, new_table.numpy()) == []
        untouched = np.setdiff1d(np.arange(48), priority)
        np.testing.assert_array_equal(new_table.numpy()[untouched], table[untouched])
        assert changed == (priority.size > 0)
        table = new_table.numpy()
    assert changed or policy == "random"


def test_deepseek_parity_output_would_be_reverted() -> None:
    # Why the slot-stable mode exists: DeepSeek's own plan (default_eplb without the table in
    # force) moves kept experts between slots, and the check reverts such layers.
    table, windows = _windows()
    parity = rebalance_experts(windows[0], 136, 1, 1, 8)
    assert len(reverted_layers(table, parity.table(8))) == 48


@pytest.fixture
def fake_vllm_ascend(monkeypatch: pytest.MonkeyPatch) -> type:
    """vllm_ascend.eplb.core.policy.policy_factory with a PolicyFactory like upstream's."""

    class PolicyFactory:
        @staticmethod
        def generate_policy(policy_type: int) -> object:
            return f"upstream policy {policy_type}"

    names = [
        "vllm_ascend",
        "vllm_ascend.eplb",
        "vllm_ascend.eplb.core",
        "vllm_ascend.eplb.core.policy",
    ]
    for name in [*names, "vllm_ascend.eplb.core.policy.policy_factory"]:
        module = types.ModuleType(name)
        module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=name in names)
        monkeypatch.setitem(sys.modules, name, module)
    sys.modules["vllm_ascend.eplb.core.policy.policy_factory"].PolicyFactory = PolicyFactory  # type: ignore[attr-defined]
    return PolicyFactory


def test_register_by_policy_type_maps_vllm_ascend_ids(fake_vllm_ascend: type) -> None:
    vllm_ascend.register("eplb_policy_type")
    for policy_type, name in enumerate(["random", "default_eplb", "swift_balancer", "flashlb"]):
        policy = fake_vllm_ascend.generate_policy(policy_type)  # type: ignore[attr-defined]
        assert isinstance(policy, VllmAscendPolicy)
        assert policy.policy.name == name
    with pytest.raises(ValueError, match="eplb_policy_type: unknown id 7"):
        fake_vllm_ascend.generate_policy(7)  # type: ignore[attr-defined]


def test_register_a_name_serves_every_policy_type(fake_vllm_ascend: type) -> None:
    vllm_ascend.register("flashlb")
    for policy_type in range(4):
        assert fake_vllm_ascend.generate_policy(policy_type).policy.name == "flashlb"  # type: ignore[attr-defined]


def vllm_ascend_routes(expert_map: np.ndarray, num_slots: int, tp_size: int) -> np.ndarray:
    """generate_log2phy_map for every rank (restated, see above): int64 [D, N] physical slots,
    from one layer's per-rank expert_map [D, N] (local slot, -1 when absent)."""
    num_ranks, num_experts = expert_map.shape
    routes = np.empty((num_ranks, num_experts), dtype=np.int64)
    for expert in range(num_experts):
        replicas = [rank * num_slots + expert_map[rank, expert] for rank in range(num_ranks)
                    if expert_map[rank, expert] != -1]  # fmt: skip
        for rank in range(num_ranks):
            turn = rank if tp_size == 1 else rank % tp_size + rank // tp_size + expert
            routes[rank, expert] = replicas[turn % len(replicas)]
    return routes


@settings(max_examples=40, deadline=None)
@given(case=plans(max_ranks=8), tp_size=st.integers(1, 4))
def test_rank_log2phy_with_tp_size_routes_like_vllm_ascend(case, tp_size) -> None:  # type: ignore[no-untyped-def]
    plan, num_ranks = case
    routes = rank_log2phy(plan, num_ranks, tp_size=tp_size)  # [D, L, N]
    maps = rank_expert_maps(plan, num_ranks)  # vllm-ascend's expert_map, [D, L, N]
    for layer in range(plan.num_layers):
        expected = vllm_ascend_routes(maps[:, layer], plan.slots_per_rank(num_ranks), tp_size)
        np.testing.assert_array_equal(routes[:, layer], expected)


def test_tp_size_rotates_replicas_within_a_tensor_parallel_group() -> None:
    # Expert 0 in slots 0 (rank 0) and 4 (rank 2) of 4 ranks x 2 slots; with tp_size 2, ranks
    # 0 and 1 form one tensor-parallel group, ranks 2 and 3 the other.
    plan = Plan.from_phy2log(np.array([[0, 1, 2, 3, 0, 4, 5, 6]]), 7)
    assert rank_log2phy(plan, 4)[:, 0, 0].tolist() == [0, 0, 4, 4]  # own replica, else even
    assert rank_log2phy(plan, 4, tp_size=1)[:, 0, 0].tolist() == [0, 4, 0, 4]  # r % 2
    assert rank_log2phy(plan, 4, tp_size=2)[:, 0, 0].tolist() == [0, 4, 4, 0]  # (r%2 + r//2) % 2
    with pytest.raises(ValueError, match="tp_size"):
        rank_log2phy(plan, 4, tp_size=0)
