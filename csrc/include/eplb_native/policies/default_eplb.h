#pragma once
// default_eplb: DeepSeek EPLB's algorithm (deepseek-ai/EPLB), output-compatible.
//
// Hierarchical mode when num_groups % num_nodes == 0: (1) pack expert groups onto nodes by
// balanced_packing of group loads, (2) within each node replicate experts by min-max per
// replica, (3) pack each node's replicas onto its ranks by balanced_packing. Otherwise global
// mode: the same with one group and one node. Like DeepSeek, step (3) may put two replicas of
// one expert on one rank; default_eplb keeps that behaviour so its output equals DeepSeek's.
// Arithmetic is float32 as in DeepSeek. Sort ties go to the lower index, i.e.
// torch.sort(stable=True); DeepSeek calls torch.sort with the default stable=False, whose order
// among exactly equal loads is unspecified, so outputs agree whenever the sorted loads are
// distinct (always so for the README example). Max ties go to the first index (torch.max).

#include "eplb_native/plan.h"
#include "eplb_native/thread_pool.h"
#include "eplb_native/topology.h"

namespace eplb_native::policies {

// load: [L, N] tokens per expert. Layers are planned in parallel on `pool`.
[[nodiscard]] Plan plan_default_eplb(const LoadView& load, const Topology& topo, ThreadPool& pool);

// phy2log [P] of one layer (the step plan_default_eplb runs per layer).
[[nodiscard]] std::vector<int64_t> default_eplb_layer(const double* load, const Topology& topo);

}  // namespace eplb_native::policies
