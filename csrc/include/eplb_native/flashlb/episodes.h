#pragma once
// Multi-episode load statistics of one layer: episode loads, per-expert mean, deviation and
// risk-adjusted load, and the episode-mean peak-to-average score of a placement.

#include <cstdint>
#include <vector>

namespace eplb_native::flashlb {

// Episode loads of one layer and their statistics. Expert e's episode k load is
// loads[e * num_episodes + k] (expert-major, so one expert's episodes are contiguous).
struct EpisodeStats {
    int64_t num_episodes = 0;
    int64_t num_experts = 0;
    std::vector<double> loads;  // [N, K] tokens per expert per episode
    std::vector<double> mean;   // [N]
    std::vector<double> stddev; // [N]
    std::vector<double> risk;   // [N] mean + z * stddev
    std::vector<double> total;  // [K] tokens per episode, all experts
    std::vector<float> deviation;  // [N, K] loads - mean, float32 (the placement's covariances)
};

// Per-step heat [T, L, N] row-major, read in place: float64 loads or int64 token counts as
// recorded (at most one of the two pointers is set; neither: no history).
struct HistoryView {
    const double* loads = nullptr;
    const int64_t* counts = nullptr;
    int64_t num_steps = 0;

    [[nodiscard]] bool empty() const { return loads == nullptr && counts == nullptr; }

    // fn(pointer) with whichever of the two pointers is set (not empty).
    template <typename Fn>
    decltype(auto) visit(Fn&& fn) const {
        return counts != nullptr ? fn(counts) : fn(loads);
    }
};

// Which steps of a [T, ...] history form the episodes: consecutive chunks of `episode_steps`
// steps (the trailing partial chunk is dropped unless it is the only one); when there are more
// than `max_episodes` chunks, runs of adjacent chunks merge into max_episodes episodes of
// (nearly) equal length, so every chunk counts. Returns 2K step indices, begin/end pairs:
// episode k is steps [bounds[2k], bounds[2k+1]).
[[nodiscard]] std::vector<int64_t> episode_bounds(int64_t num_steps, int64_t episode_steps,
                                                  int64_t max_episodes);

// Statistics of layer `layer_idx` from `history` (not empty) and the begin/end pairs of
// episode_bounds(); z_score weights the deviation in `risk`.
[[nodiscard]] EpisodeStats stats_from_history(const HistoryView& history, int64_t num_layers,
                                              int64_t num_experts, int64_t layer_idx,
                                              const std::vector<int64_t>& bounds,
                                              double z_score);

// One episode holding the layer's aggregated load [N] (no fluctuation known).
[[nodiscard]] EpisodeStats stats_from_load(const double* layer_load, int64_t num_experts);

// Mean over episodes of (max rank load / mean rank load) for phy2log row [P] on num_ranks
// ranks, each expert's tokens split evenly over its `counts[e]` replicas. Episodes with no load
// count as perfectly balanced (1.0).
[[nodiscard]] double episode_score(const EpisodeStats& stats, const std::vector<int64_t>& phy2log,
                                   const std::vector<int64_t>& counts, int64_t num_ranks);

}  // namespace eplb_native::flashlb
