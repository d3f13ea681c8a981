#pragma once
// FlashLB: joint replica allotment and placement with multi-episode statistics, a width x
// depth tree search, target packing, swap refinement and minimal-move alignment.

#include <cstdint>
#include <vector>

#include "eplb_native/flashlb/episodes.h"
#include "eplb_native/flashlb/placement.h"
#include "eplb_native/plan.h"
#include "eplb_native/thread_pool.h"
#include "eplb_native/topology.h"

namespace eplb_native::flashlb {

struct Options {
    double z_score = 1.0;          // risk = mean + z * stddev (1.0: 84th percentile)
    // The tree search's size: expert groups searched one after another, candidate replica
    // counts per group; 0 picks the size for the statistics (kAggregateSearch with one
    // episode, kEpisodeSearch with several).
    int64_t max_depth = 0;
    int64_t width = 0;
    int64_t episode_steps = 1;     // history steps per episode
    int64_t max_episodes = 64;     // episodes at most (adjacent chunks merge beyond it)
    bool incremental = false;      // edit `current` instead of replacing it (needs current)
    int64_t max_moves_per_layer = -1;  // incremental mode's cap on weight copies; < 0 = none
    double keep_margin = 0.0;      // LptObjective::keep_margin of every placement (in [0, 1])
};

// A search size: max_depth groups of width candidates each.
struct SearchSize {
    int64_t max_depth = 0;
    int64_t width = 0;
};

// One episode (an aggregated load): the published 4 x 8.
constexpr SearchSize kAggregateSearch{4, 8};
// Several episodes: every candidate is placed on all of them, which costs several times more
// than on the aggregate. In the serving loop (re-plan every k steps, score the next k) 3 x 5
// balanced the next window as well as 4 x 8 (better in 75 of 137 windows, worse in 62), with
// 1.7x less planning time.
constexpr SearchSize kEpisodeSearch{3, 5};

// Throws std::invalid_argument naming the field when an option is out of range.
void validate_options(const Options& options);

// Inputs of plan_flashlb. `load` is [L, N]; `history`, when not empty, is [T, L, N] row-major
// (its episodes then give the statistics instead of `load`); `current`, when not null, is the
// phy2log [L, P] in service (used to keep experts in place, and by the incremental mode).
struct Request {
    LoadView load;
    HistoryView history;
    const int64_t* current = nullptr;
};

// Plans every layer (in parallel on `pool`, identical results for any thread count). Groups and
// nodes are validated but FlashLB balances globally over all ranks. Throws
// std::invalid_argument naming the field for bad loads, topology, options or current table.
[[nodiscard]] Plan plan_flashlb(const Request& request, const Topology& topo,
                                const Options& options, ThreadPool& pool);

// One layer: the phy2log row [P] for `stats`. `current`, the row [P] in service or null, only
// steers near ties (Options::keep_margin); the row is not aligned to it.
[[nodiscard]] std::vector<int64_t> plan_layer(const EpisodeStats& stats, const LayerShape& shape,
                                              const Options& options, ThreadPool& pool,
                                              const std::vector<int64_t>* current = nullptr);

}  // namespace eplb_native::flashlb
