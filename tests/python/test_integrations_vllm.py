"""eplb_native.integrations.vllm against vLLM's EPLB policy interface.

vLLM's wheel is over 200 MB with a GPU stack, so this is a contract test restating vLLM 0.34.0
(the PyPI wheel, vllm/distributed/eplb/policy/abstract.py and default.py, and the expectations
of tests/distributed/test_eplb_algo.py): a policy class whose class method
``rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_ranks,
old_global_expert_indices=None)`` takes torch tensors and returns ``phy2log`` [L, P] as a CPU
torch tensor; hierarchical planning only when ``num_groups % num_nodes == 0``, global planning
(groups and nodes ignored) otherwise; bad shapes raise AssertionError; the old placement may
hold -1 (slots that elastic expert parallelism added or emptied); experts that stay on a GPU
keep their slot (``preserve_intragpu_slots``); vllm/distributed/eplb/policy/__init__.py selects
the class from the dict ``EPLB_POLICIES`` by the config's policy name, "default".
"""

from __future__ import annotations

import importlib.machinery
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from eplb_native.config import POLICY_NAMES
from eplb_native.integrations import vllm as vllm_integration
from eplb_native.integrations.vllm import PolicyInputError, VllmPolicy, policy_class
from eplb_native.plan import Plan, default_placement, placement_violations, validate_plan

torch = pytest.importorskip("torch")
GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "deepseek_readme.json"


def test_deepseek_readme_example_without_old_placement() -> None:
    golden = json.loads(GOLDEN.read_text())
    phy2log = VllmPolicy.rebalance_experts(torch.tensor(golden["weight"]), 16, 4, 2, 8)
    assert isinstance(phy2log, torch.Tensor)
    assert phy2log.dtype == torch.int64
    assert phy2log.device == torch.device("cpu")
    assert phy2log.tolist() == golden["phy2log"]


def test_groups_that_do_not_split_over_nodes_mean_global_planning() -> None:
    weight = torch.tensor([[10, 20, 30, 40]])
    # 3 groups do not divide 4 experts, nor split over 2 nodes: vLLM ignores them.
    phy2log = VllmPolicy.rebalance_experts(weight, 8, 3, 2, 4)
    assert phy2log.shape == (1, 8)
    validate_plan(Plan.from_phy2log(phy2log.numpy(), 4), 4, allow_duplicate_on_rank=True)


def test_bad_shapes_raise_what_vllm_and_eplb_native_both_expect() -> None:
    weight = torch.tensor([[10, 20, 30, 40]])
    with pytest.raises(AssertionError):
        VllmPolicy.rebalance_experts(weight, 7, 2, 2, 4)  # 7 slots over 4 ranks
    with pytest.raises(ValueError, match="num_replicas"):
        VllmPolicy.rebalance_experts(weight, 3, 1, 1, 1)  # fewer slots than experts
    assert issubclass(PolicyInputError, ValueError)


def test_equal_weights_one_replica_each_and_device_input() -> None:
    phy2log = VllmPolicy.rebalance_experts(torch.full((1, 8), 50), 8, 2, 2, 4)
    assert sorted(phy2log[0].tolist()) == list(range(8))
    half = torch.tensor([[10.0, 20.0, 30.0, 40.0]], dtype=torch.float16)
    assert VllmPolicy.rebalance_experts(half, 6, 2, 1, 2).shape == (1, 6)


def _old_and_weight(seed: int) -> tuple[object, object]:
    """vLLM's initial placement of 16 experts + 4 redundant on 4 GPUs, and a skewed load."""
    old = torch.from_numpy(default_placement(3, 16, 4, 4).phy2log.copy())  # plan maps are read-only
    rng = np.random.default_rng(seed)
    return old, torch.from_numpy(np.round(rng.lognormal(3.0, 1.0, size=(3, 16))))


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_every_policy_keeps_experts_in_their_gpu_slot(policy: str) -> None:
    old, weight = _old_and_weight(1)
    for seed in range(3):
        new = policy_class(policy).rebalance_experts(weight, 20, 1, 1, 4, old)
        assert new.dtype == torch.int64
        assert new.device == torch.device("cpu")
        validate_plan(Plan.from_phy2log(new.numpy(), 16), 4)
        assert (
            placement_violations(old.numpy().reshape(3, 4, 5), new.numpy().reshape(3, 4, 5)) == []
        )
        old, weight = new, weight.roll(seed + 1, dims=1)


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_empty_slots_and_changed_slot_counts(policy: str) -> None:
    old, weight = _old_and_weight(2)
    # Elastic scale-up from 3 to 4 GPUs: the new GPU's 5 slots are -1 in the old placement.
    grown = old.clone()
    grown[:, 15:] = -1
    new = policy_class(policy).rebalance_experts(weight, 20, 1, 1, 4, grown)
    validate_plan(Plan.from_phy2log(new.numpy(), 16), 4)
    assert placement_violations(grown.numpy().reshape(3, 4, 5), new.numpy().reshape(3, 4, 5)) == []
    # Scale-down to 2 GPUs x 10 slots (vLLM passes the old, wider map): plans afresh.
    shrunk = policy_class(policy).rebalance_experts(weight, 20, 1, 1, 2, torch.cat([old, old], 1))
    assert shrunk.shape == (3, 20)


@pytest.mark.parametrize(
    ("num_ranks", "old", "new"),
    [
        (2, [0, 1, 2, 3, 4, 5, 6, 7], [1, 5, 0, 4, 6, 2, 7, 3]),  # shuffled in, 4 and 5 arrive
        (2, [0, 1, 0, 2, 3, 4, 5, 6, 1, 2], [0, 5, 4, 0, 1, 6, 2, 3, 2, 1]),  # duplicates
        (3, [0, 1, 2, 3] * 3, [0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 0]),  # one expert everywhere
        (2, [0, -1, 2, 3, -1, 5, 6, 7], [3, 0, 1, 2, 7, 6, 5, 4]),  # empty old slots
    ],
)
def test_preserve_intragpu_slots(num_ranks: int, old: list[int], new: list[int]) -> None:
    # vLLM's rule for its helper: each GPU keeps the same (expert, count) pairs as the new map,
    # and an expert that stays on a GPU sits in (at least the first of) its old slots.
    old_table, new_table = np.array([old]), np.array([new])
    kept = VllmPolicy.preserve_intragpu_slots(new_table, num_ranks, old_table)
    slots = len(new) // num_ranks
    for rank in range(num_ranks):
        window = slice(rank * slots, (rank + 1) * slots)
        assert sorted(kept[0, window]) == sorted(new_table[0, window])
        old_rank = old_table[0, window].tolist()
        for expert in set(old_rank) & set(new_table[0, window].tolist()):
            assert kept[0, window][old_rank.index(expert)] == expert
    with pytest.raises(AssertionError):
        VllmPolicy.preserve_intragpu_slots(new_table, 3, old_table[:, :6])


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """vllm.distributed.eplb.policy holding EPLB_POLICIES like upstream's."""
    policies: dict[str, object] = {"default": "vLLM's DefaultEplbPolicy"}
    names = ["vllm", "vllm.distributed", "vllm.distributed.eplb", "vllm.distributed.eplb.policy"]
    for name in names:
        module = types.ModuleType(name)
        module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
        monkeypatch.setitem(sys.modules, name, module)
    sys.modules["vllm.distributed.eplb.policy"].EPLB_POLICIES = policies  # type: ignore[attr-defined]
    return policies


def test_plugin_installs_the_named_policy_as_default(
    fake_vllm: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EPLB_NATIVE_POLICY", raising=False)
    vllm_integration.plugin()
    assert fake_vllm["default"] == "vLLM's DefaultEplbPolicy"  # unset: nothing changes
    monkeypatch.setenv("EPLB_NATIVE_POLICY", "2")  # vllm-ascend's id for swift_balancer
    vllm_integration.plugin()
    installed = fake_vllm["default"]
    assert isinstance(installed, type)
    assert issubclass(installed, VllmPolicy)
    assert installed.policy == "swift_balancer"
    monkeypatch.setenv("EPLB_NATIVE_POLICY", "flashbl")
    with pytest.raises(ValueError, match="EPLB_NATIVE_POLICY: unknown policy 'flashbl'"):
        vllm_integration.plugin()
