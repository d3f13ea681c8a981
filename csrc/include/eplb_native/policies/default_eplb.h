#pragma once
// default_eplb: DeepSeek EPLB's algorithm (deepseek-ai/EPLB), output-compatible.
//
// Hierarchical mode when num_groups % num_nodes == 0: (1) pack expert groups onto nodes by
// balanced_packing of group loads, (2) within each node replicate experts by min-max per
// replica, (3) pack each node's replicas onto its ranks by balanced_packing. Otherwise global
// mode: the same with one group and one node. Arithmetic is float32 as in DeepSeek.
//
// Two modes:
// - DeepSeek parity (no table in force): DeepSeek's output. Step (3) may put two replicas of
//   one expert on one rank, as DeepSeek does. Sort ties go to the lower index, i.e.
//   torch.sort(stable=True); DeepSeek calls torch.sort with the default stable=False, whose
//   order among exactly equal loads is unspecified, so outputs agree whenever the sorted loads
//   are distinct (always so for the README example). Max ties go to the first index (torch.max).
// - Slot-stable (given the table in force, `current`): step (2) gives an expert at most one
//   replica per rank of its node, step (3) packs with balanced_packing_distinct (no rank holds
//   two replicas of one expert), and the result is aligned to `current` (align_to_current with
//   the plan's nodes): ranks and nodes are relabelled to share the most experts with the table
//   in force, and every expert that stays on a rank keeps its slot. Where DeepSeek's packing
//   has no duplicate on a rank this is DeepSeek's plan, relabelled.

#include "eplb_native/plan.h"
#include "eplb_native/thread_pool.h"
#include "eplb_native/topology.h"

namespace eplb_native::policies {

// load: [L, N] tokens per expert; current: phy2log [L, P] of the table in force (ids in
// [0, N)), or nullptr for DeepSeek parity. Layers are planned in parallel on `pool`. In the
// slot-stable mode, throws std::invalid_argument naming num_replicas when a node has more
// slots than its experts times its ranks (some rank would have to hold an expert twice).
[[nodiscard]] Plan plan_default_eplb(const LoadView& load, const Topology& topo, ThreadPool& pool,
                                     const int64_t* current = nullptr);

// phy2log [P] of one layer (the step plan_default_eplb runs per layer), before alignment;
// distinct: no rank holds two replicas of one expert (the slot-stable mode's packing).
[[nodiscard]] std::vector<int64_t> default_eplb_layer(const double* load, const Topology& topo,
                                                      bool distinct = false);

}  // namespace eplb_native::policies
