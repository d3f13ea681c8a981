#pragma once
// Building blocks of FlashLB's joint allotment and placement for one layer: LPT placement
// (mean or risk objective), target-driven packing with splitting, and swap refinement (the
// min-max allotment and the plan metrics are in policies/building_blocks.h). A placement is a
// phy2log row [P]; rank r owns slots [r*S, (r+1)*S). No rank ever holds two replicas of one
// expert.

#include <cstdint>
#include <limits>
#include <vector>

#include "eplb_native/flashlb/episodes.h"

namespace eplb_native::flashlb {

struct LayerShape {
    int64_t num_experts = 0;  // N
    int64_t num_ranks = 0;    // D
    int64_t num_slots = 0;    // S slots per rank
    [[nodiscard]] int64_t num_physical() const { return num_ranks * num_slots; }
};

// `by_weight` below: the experts by decreasing weight, lowest id on ties
// (policies::order_descending, computed once per layer).

// What LPT placement minimises for each replica, and what it keeps.
struct LptObjective {
    // Episode loads (more than one episode): each replica goes to the rank whose summed episode
    // loads then have the smallest risk mean + z_score * stddev over the episodes (this uses the
    // full covariance of the experts on the rank). Null or one episode: the least loaded rank.
    const EpisodeStats* risk_stats = nullptr;
    double z_score = 0.0;
    // The phy2log row [P] in service (-1: an empty slot), or null: a rank that holds the
    // replica's expert there
    // counts as lighter by keep_margin x the mean rank load (sum of weight / D), so that near
    // ties keep experts where they are.
    const std::vector<int64_t>* current = nullptr;
    double keep_margin = 0.0;
    // With risk_stats of several episodes: place_lpt gives up, returning an empty row, once
    // the placement's episode_score is certain to be at least this (infinity: never).
    double give_up_at = std::numeric_limits<double>::infinity();
};

// Longest-processing-time placement of the replicas of `counts` (sum = P): replicas in order
// of decreasing weight[e] / counts[e] each go to the rank with a free slot that does not hold
// the expert yet and minimises `objective` (lowest load, then lowest index, on ties). With
// risk_stats, `weight` must be risk_stats->mean.
[[nodiscard]] std::vector<int64_t> place_lpt(const std::vector<double>& weight,
                                             const std::vector<int64_t>& by_weight,
                                             const std::vector<int64_t>& counts,
                                             const LayerShape& shape,
                                             const LptObjective& objective = {});

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

}  // namespace eplb_native::flashlb
