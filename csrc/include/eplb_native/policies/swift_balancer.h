#pragma once
// swift_balancer: improve the current placement with as few weight copies as possible.
//
// Per layer, starting from `current`, it repeatedly takes the busiest rank and applies the
// swap of one of its replicas with a replica on another rank that lowers the larger of the two
// ranks' loads the most (neither rank may end up with two replicas of one expert), as long as
// the layer's weight copies (slots whose expert was not on that rank in `current`, as
// count_weight_copies counts them) stay <= max_moves_per_layer. When no swap helps, it
// re-allots: one replica of an expert with several replicas is overwritten by an expert of the
// busiest rank, if that lowers the layer's max rank load. An expert with k replicas carries
// exactly load / k on each. Every step lowers the busiest rank's load (a swap) or the layer's
// max rank load (a re-allotment), so the max rank load never rises above the current one.
// Finally the row is aligned to `current` (align_to_current): an expert that a swap brought
// back to its rank returns to its old slot, so every expert that stays on a rank keeps its slot.

#include <cstdint>

#include "eplb_native/plan.h"
#include "eplb_native/thread_pool.h"
#include "eplb_native/topology.h"

namespace eplb_native::policies {

struct SwiftBalancerOptions {
    int64_t max_moves_per_layer = 32;  // weight copies allowed per layer (>= 0)
};

// load [L, N]; current phy2log [L, P] (required).
[[nodiscard]] Plan plan_swift_balancer(const LoadView& load, const Topology& topo,
                                       const int64_t* current, const SwiftBalancerOptions& options,
                                       ThreadPool& pool);

}  // namespace eplb_native::policies
