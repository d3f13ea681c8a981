"""eplb_native.integrations.sglang against SGLang's own EPLB code.

SGLang's EPLB algorithm modules and plugin hook registry need only torch, but the package's
``__init__`` imports its whole serving stack; the ``sglang_eplb`` fixture imports just those
modules from an installed wheel (``pip install --no-deps sglang==0.5.23``, as scripts/test.sh
does) and skips when SGLang is absent. The contract tests at the end need no SGLang.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from eplb_native.integrations import sglang as sglang_integration
from eplb_native.integrations.sglang import TARGET, rebalance_experts
from eplb_native.plan import Plan, validate_plan
from eplb_native.policies import rebalance_experts as plan_experts

torch = pytest.importorskip("torch")
GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "deepseek_readme.json"


@pytest.fixture
def sglang_eplb(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """SGLang's eplb_algorithms and HookRegistry; every hook and patch undone afterwards."""
    spec = importlib.util.find_spec("sglang")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("SGLang is not installed (pip install --no-deps sglang==0.5.23)")
    package = types.ModuleType("sglang")  # its __init__ would import the serving stack
    package.__path__ = list(spec.submodule_search_locations)
    for name in [name for name in sys.modules if name == "sglang" or name.startswith("sglang.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "sglang", package)
    algorithms = importlib.import_module("sglang.srt.eplb.eplb_algorithms")
    registry = importlib.import_module("sglang.srt.plugins.hook_registry").HookRegistry
    monkeypatch.setattr(algorithms, "rebalance_experts", algorithms.rebalance_experts)
    yield types.SimpleNamespace(
        algorithms=algorithms, registry=registry, own=algorithms.rebalance_experts
    )
    registry.reset()
    for name in [name for name in sys.modules if name.startswith("sglang.")]:
        del sys.modules[name]


def _call(function, weight, num_groups, num_nodes, algorithm):  # type: ignore[no-untyped-def]
    """SGLang's call: [T, L, N] tokens, 16 slots on 8 GPUs, keyword arguments."""
    return function(
        tokens_per_expert=weight, num_physical_experts=16, num_local_physical_experts=2,
        num_groups=num_groups, num_nodes=num_nodes, algorithm=algorithm,
    )  # fmt: skip


def _same_plan(ours: tuple, theirs: tuple) -> None:  # type: ignore[type-arg]
    """phy2log and counts equal; each expert's replica list the same set (SGLang orders it by
    replica creation, eplb_native by slot)."""
    assert torch.equal(ours[0], theirs[0])
    assert torch.equal(ours[2], theirs[2])
    assert ours[1].shape == theirs[1].shape
    assert torch.equal(ours[1].sort(dim=-1).values, theirs[1].sort(dim=-1).values)


@pytest.mark.parametrize(
    ("algorithm", "num_groups"),
    [("deepseek_hierarchical", 4), ("deepseek", 4), ("deepseek", None), ("deepseek", 5)],
)
def test_hooked_into_sglang_it_gives_sglang_s_deepseek_plan(
    sglang_eplb, algorithm, num_groups
) -> None:  # type: ignore[no-untyped-def]
    # The README example has no tied loads, so DeepSeek's unstable sort orders it like ours.
    # num_groups=None (models without groups) and 5 (no split) are ignored by global planning.
    weight = torch.tensor(json.loads(GOLDEN.read_text())["weight"])[None]  # [T=1, L, N]
    algorithm = sglang_eplb.algorithms.EplbAlgorithm[algorithm]
    theirs = _call(sglang_eplb.own, weight, num_groups, 2, algorithm)
    sglang_integration.register("default_eplb")
    sglang_eplb.registry.apply_hooks()
    assert sglang_eplb.algorithms.rebalance_experts is not sglang_eplb.own
    ours = _call(sglang_eplb.algorithms.rebalance_experts, weight, num_groups, 2, algorithm)
    assert all(tensor.dtype == torch.int64 for tensor in ours)
    _same_plan(ours, theirs)
    _ = [tensor.to(weight.device) for tensor in ours]  # what SGLang does with the results


def test_hooked_flashlb_plans_from_the_recorded_steps(sglang_eplb) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(3)
    steps = torch.from_numpy(rng.poisson(20.0, size=(32, 2, 12)))  # [T, L, N] token counts
    sglang_integration.register("flashlb")
    sglang_eplb.registry.apply_hooks()
    deepseek = sglang_eplb.algorithms.EplbAlgorithm.deepseek
    phy2log, _, _ = _call(sglang_eplb.algorithms.rebalance_experts, steps, None, 1, deepseek)
    expected = plan_experts(
        steps.sum(0).numpy(), 16, 1, 1, 8, policy="flashlb", history=steps.numpy()
    )
    np.testing.assert_array_equal(phy2log.numpy(), expected.phy2log)


def test_plugin_reads_the_policy_from_the_environment(
    sglang_eplb, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("EPLB_NATIVE_POLICY", raising=False)
    sglang_integration.plugin()
    assert TARGET not in sglang_eplb.registry._hooks
    monkeypatch.setenv("EPLB_NATIVE_POLICY", "default_eplb")
    sglang_integration.plugin()
    assert TARGET in sglang_eplb.registry._hooks
    for value in ("swift_balancer", "eplb_policy_type"):
        monkeypatch.setenv("EPLB_NATIVE_POLICY", value)
        with pytest.raises(ValueError, match="EPLB_NATIVE_POLICY"):
            sglang_integration.plugin()


# Contract tests: SGLang's signature and result types, restated from
# sglang 0.5.23 sglang/srt/eplb/eplb_algorithms/__init__.py (``rebalance_experts``) and
# sglang/srt/eplb/expert_location.py (``init_by_eplb`` moves the results with ``.to(device)``).


def test_results_are_torch_tensors_on_the_input_device() -> None:
    weight = torch.tensor(json.loads(GOLDEN.read_text())["weight"])
    phy2log, log2phy, logcnt = rebalance_experts(weight, 16, 2, 4, 2, "deepseek_hierarchical")
    assert phy2log.device == weight.device
    assert phy2log.tolist() == json.loads(GOLDEN.read_text())["phy2log"]
    validate_plan(
        Plan(phy2log.numpy(), log2phy.numpy(), logcnt.numpy()), 8, allow_duplicate_on_rank=True
    )


def test_algorithm_none_picks_like_sglang_auto_and_bad_calls_name_the_field() -> None:
    weight = torch.tensor(json.loads(GOLDEN.read_text())["weight"])[None]
    auto = rebalance_experts(weight, 16, 2, 4, 2)  # groups split over nodes: hierarchical
    hierarchical = rebalance_experts(weight, 16, 2, 4, 2, "deepseek_hierarchical")
    assert torch.equal(auto[0], hierarchical[0])
    with pytest.raises(ValueError, match="num_groups"):
        rebalance_experts(weight, 16, 2, None, 2, "deepseek_hierarchical")
    with pytest.raises(ValueError, match="algorithm"):
        rebalance_experts(weight, 16, 2, 4, 2, "elasticity_aware")
    with pytest.raises(ValueError, match="num_local_physical_experts"):
        rebalance_experts(weight, 16, 3, 4, 2, "deepseek")
