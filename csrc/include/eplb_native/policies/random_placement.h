#pragma once
// random: a valid, seeded random placement (for tests and as a baseline). Every expert gets
// one replica; the P - N extra replicas go to uniformly drawn experts (among those with fewer
// than D replicas while any is left); replicas are dealt round-robin over the ranks in a
// random expert order and rank labels are shuffled, so no rank holds two replicas of one
// expert unless an expert has more than D replicas. Each layer draws from std::mt19937_64
// seeded by layer_seed(seed, layer_idx): identical output for any thread count. Given the
// table in force (`current`, phy2log [L, P] with ids in [0, N)), each layer is aligned to it
// (align_to_current): experts that stay on a rank keep their slot.

#include <cstdint>

#include "eplb_native/plan.h"
#include "eplb_native/thread_pool.h"
#include "eplb_native/topology.h"

namespace eplb_native::policies {

[[nodiscard]] Plan plan_random(int64_t num_layers, const Topology& topo, uint64_t seed,
                               ThreadPool& pool, const int64_t* current = nullptr);

}  // namespace eplb_native::policies
