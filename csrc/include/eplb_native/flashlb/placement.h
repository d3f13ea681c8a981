#pragma once
// Building blocks of FlashLB's joint allotment and placement for one layer: min-max replica
// allotment, LPT placement (mean or risk objective), target-driven packing with splitting,
// and swap refinement. A placement is a phy2log row [P]; rank r owns slots [r*S, (r+1)*S).
// No rank ever holds two replicas of one expert.

#include <cstdint>
#include <vector>

#include "eplb_native/flashlb/episodes.h"

namespace eplb_native::flashlb {

struct LayerShape {
    int64_t num_experts = 0;  // N
    int64_t num_ranks = 0;    // D
    int64_t num_slots = 0;    // S slots per rank
    [[nodiscard]] int64_t num_physical() const { return num_ranks * num_slots; }
};

// The order in which min-max-per-replica allotment hands out `budget` extra replicas from
// `counts`: each goes to the expert among `experts` with the largest weight[e] / count that
// still has fewer than max_count replicas (lowest id on ties). Shorter than `budget` when every
// listed expert reaches max_count. A smaller budget's allotment is a prefix of this order.
[[nodiscard]] std::vector<int64_t> min_max_order(const std::vector<double>& weight,
                                                 const std::vector<int64_t>& experts,
                                                 const std::vector<int64_t>& counts,
                                                 int64_t budget, int64_t max_count);

// Adds the first `budget` replicas of min_max_order to `counts` (in place).
void allot_min_max(const std::vector<double>& weight, const std::vector<int64_t>& experts,
                   int64_t budget, int64_t max_count, std::vector<int64_t>& counts);

// `by_weight` below: the experts by decreasing weight, lowest id on ties
// (policies::order_descending, computed once per layer).

// Longest-processing-time placement of the replicas of `counts` (sum = P): replicas in order
// of decreasing weight[e] / counts[e] each go to the least loaded rank with a free slot that
// does not hold the expert yet. When `risk_stats` is given (episode loads), the rank is the
// one with the smallest resulting risk mean + z * stddev of its summed episode loads (this uses
// the full covariance of the experts on the rank), among the least loaded few.
[[nodiscard]] std::vector<int64_t> place_lpt(const std::vector<double>& weight,
                                             const std::vector<int64_t>& by_weight,
                                             const std::vector<int64_t>& counts,
                                             const LayerShape& shape,
                                             const EpisodeStats* risk_stats, double z_score);

// Target packing: the smallest max rank load T (binary search between `lower` and `upper`)
// for which experts, heaviest first, can each be split into the fewest replicas that fit
// (best fit) on distinct ranks under T while leaving a slot for every expert still to come;
// spare slots then take extra replicas of the heaviest per-replica experts. Returns an empty
// vector when no target in the range packs.
[[nodiscard]] std::vector<int64_t> pack_to_target(const std::vector<double>& weight,
                                                  const std::vector<int64_t>& by_weight,
                                                  const LayerShape& shape, double lower,
                                                  double upper);

// Swap refinement on `weight`: while some swap of two replicas between the busiest rank and
// another rank lowers the larger of the two ranks' loads below the busiest load, applies the
// best one (at most `max_iterations`). Keeps counts and the one-replica-per-rank rule.
void refine_swaps(const std::vector<double>& weight, const std::vector<int64_t>& counts,
                  const LayerShape& shape, int64_t max_iterations, std::vector<int64_t>& phy2log);

// Replica counts [N] of a phy2log row.
[[nodiscard]] std::vector<int64_t> counts_of(const std::vector<int64_t>& phy2log,
                                             int64_t num_experts);

// Rank loads [D] of a phy2log row under `weight` split evenly over `counts`.
[[nodiscard]] std::vector<double> rank_weights(const std::vector<double>& weight,
                                               const std::vector<int64_t>& counts,
                                               const std::vector<int64_t>& phy2log,
                                               const LayerShape& shape);

}  // namespace eplb_native::flashlb
