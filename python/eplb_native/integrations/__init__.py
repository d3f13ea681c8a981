"""eplb_native's policies inside the serving engines users run, one module per engine.

- ``vllm_ascend``: policy objects with vllm-ascend's ``rebalance_experts(current_expert_table,
  expert_workload) -> (changed, priority, new_table)`` contract, chosen by ``eplb_policy_type``.
- ``vllm``: policy classes with vLLM's ``AbstractEplbPolicy.rebalance_experts`` signature.
- ``sglang``: a drop-in for SGLang's EPLB algorithm function.

None of them imports its engine, or torch, at import time. The engines load plugins in every
process through entry points; eplb_native registers ``integrations.vllm:plugin`` under
``vllm.general_plugins`` (vLLM, and vllm-ascend, which runs inside vLLM) and
``integrations.sglang:plugin`` under ``sglang.srt.plugins``. Both do nothing unless the
environment variable ``EPLB_NATIVE_POLICY`` is set:

- a policy name or vllm-ascend id (``flashlb`` or ``3``): the engine's EPLB runs that policy
  (vLLM's ``default`` policy, every vllm-ascend ``eplb_policy_type``, SGLang's DeepSeek
  algorithms);
- ``eplb_policy_type`` (vllm-ascend only): each vllm-ascend ``eplb_policy_type`` runs the
  eplb_native policy with that id (0 random, 1 default_eplb, 2 swift_balancer, 3 flashlb).
"""

from __future__ import annotations

import os

from eplb_native.planning import policy_name

#: The environment variable that switches the engine plugins on and names the policy.
POLICY_ENV = "EPLB_NATIVE_POLICY"
#: Its value that keeps vllm-ascend's own selector, ``eplb_policy_type``.
BY_POLICY_TYPE = "eplb_policy_type"


def policy_from_env() -> str | None:
    """The policy ``EPLB_NATIVE_POLICY`` names: a registry name, ``BY_POLICY_TYPE``, or None
    when it is unset or empty. A vllm-ascend id (``"3"``) gives its name; anything else raises
    ValueError naming the variable."""
    value = os.environ.get(POLICY_ENV, "").strip()
    if not value:
        return None
    if value == BY_POLICY_TYPE:
        return value
    return policy_name(int(value) if value.isdigit() else value, key=POLICY_ENV)


__all__ = ["BY_POLICY_TYPE", "POLICY_ENV", "policy_from_env"]
