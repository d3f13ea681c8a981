#include "eplb_native/flashlb/episodes.h"

#include <algorithm>
#include <cmath>

#include "eplb_native/error.h"

namespace eplb_native::flashlb {
namespace {

// Fills the statistics of `stats` from its loads, given also episode-major as `by_episode`
// [K, N]. Each sum keeps its order (an expert's over the episodes, an episode's over the
// experts), but the passes run along the contiguous axis, where the sums of different experts
// (or episodes) are independent lanes.
void finish_stats(EpisodeStats& stats, const std::vector<double>& by_episode, double z_score) {
    const auto num_episodes = static_cast<size_t>(stats.num_episodes);
    const auto num_experts = static_cast<size_t>(stats.num_experts);
    stats.mean.assign(num_experts, 0.0);
    stats.stddev.assign(num_experts, 0.0);
    stats.risk.assign(num_experts, 0.0);
    stats.deviation.assign(num_experts * num_episodes, 0.0F);
    stats.total.assign(num_episodes, 0.0);
    for (size_t e = 0; e < num_experts; ++e) {
        const double* row = stats.loads.data() + e * num_episodes;
        for (size_t k = 0; k < num_episodes; ++k) {
            stats.total[k] += row[k];
        }
    }
    std::vector<double> squares(num_experts, 0.0);
    for (size_t k = 0; k < num_episodes; ++k) {
        const double* column = by_episode.data() + k * num_experts;
        for (size_t e = 0; e < num_experts; ++e) {
            stats.mean[e] += column[e];
        }
    }
    for (size_t e = 0; e < num_experts; ++e) {
        stats.mean[e] /= static_cast<double>(num_episodes);
    }
    for (size_t k = 0; k < num_episodes; ++k) {
        const double* column = by_episode.data() + k * num_experts;
        for (size_t e = 0; e < num_experts; ++e) {
            squares[e] += (column[e] - stats.mean[e]) * (column[e] - stats.mean[e]);
        }
    }
    for (size_t e = 0; e < num_experts; ++e) {
        const double* row = stats.loads.data() + e * num_episodes;
        const double mean = stats.mean[e];
        for (size_t k = 0; k < num_episodes; ++k) {
            stats.deviation[e * num_episodes + k] = static_cast<float>(row[k] - mean);
        }
        stats.stddev[e] = std::sqrt(squares[e] / static_cast<double>(num_episodes));
        stats.risk[e] = mean + z_score * stats.stddev[e];
    }
}

// Sums layer `layer_idx` of steps [begin, end) of history [T, L, N] into `episode` [N].
template <typename Value>
void add_steps(const Value* history, int64_t num_layers, int64_t num_experts, int64_t layer_idx,
               int64_t begin, int64_t end, double* episode) {
    for (int64_t step = begin; step < end; ++step) {
        const Value* row = history + (step * num_layers + layer_idx) * num_experts;
        for (int64_t e = 0; e < num_experts; ++e) {
            episode[e] += static_cast<double>(row[e]);
        }
    }
}

}  // namespace

std::vector<int64_t> episode_bounds(int64_t num_steps, int64_t episode_steps,
                                    int64_t max_episodes) {
    EPLB_CHECK(num_steps > 0 && episode_steps > 0 && max_episodes > 0, "bad episode sizes");
    const int64_t num_chunks = std::max<int64_t>(1, num_steps / episode_steps);
    const int64_t chunk = num_steps < episode_steps ? num_steps : episode_steps;
    const int64_t kept = std::min(num_chunks, max_episodes);
    std::vector<int64_t> bounds;
    bounds.reserve(static_cast<size_t>(2 * kept));
    for (int64_t i = 0; i < kept; ++i) {
        // Episode i: chunks [i * num_chunks / kept, (i + 1) * num_chunks / kept), one chunk
        // each unless there are more chunks than max_episodes.
        bounds.push_back(i * num_chunks / kept * chunk);
        bounds.push_back((i + 1) * num_chunks / kept * chunk);
    }
    return bounds;
}

EpisodeStats stats_from_history(const HistoryView& history, int64_t num_layers, int64_t num_experts,
                                int64_t layer_idx, const std::vector<int64_t>& bounds,
                                double z_score) {
    EpisodeStats stats;
    stats.num_episodes = static_cast<int64_t>(bounds.size() / 2);
    stats.num_experts = num_experts;
    const auto num_episodes = static_cast<size_t>(stats.num_episodes);
    const auto n = static_cast<size_t>(num_experts);
    stats.loads.assign(n * num_episodes, 0.0);
    // The episodes are summed as rows of `by_episode` [K, N], then written expert-major kBlock
    // episodes (one cache line) per expert at a time.
    std::vector<double> by_episode(num_episodes * n, 0.0);
    for (size_t k = 0; k < num_episodes; ++k) {
        const int64_t begin = bounds[2 * k];
        const int64_t end = bounds[2 * k + 1];
        double* episode = by_episode.data() + k * n;
        history.visit([&](const auto* values) {
            add_steps(values, num_layers, num_experts, layer_idx, begin, end, episode);
        });
    }
    constexpr size_t kBlock = 8;
    for (size_t k0 = 0; k0 < num_episodes; k0 += kBlock) {
        const size_t width = std::min(kBlock, num_episodes - k0);
        for (size_t e = 0; e < n; ++e) {
            for (size_t j = 0; j < width; ++j) {
                stats.loads[e * num_episodes + k0 + j] = by_episode[(k0 + j) * n + e];
            }
        }
    }
    finish_stats(stats, by_episode, z_score);
    return stats;
}

EpisodeStats stats_from_load(const double* layer_load, int64_t num_experts) {
    EpisodeStats stats;
    stats.num_episodes = 1;
    stats.num_experts = num_experts;
    stats.loads.assign(layer_load, layer_load + num_experts);
    finish_stats(stats, stats.loads, 0.0);  // one episode: [1, N] and [N, 1] alike
    return stats;
}

double episode_score(const EpisodeStats& stats, const std::vector<int64_t>& phy2log,
                     const std::vector<int64_t>& counts, int64_t num_ranks) {
    const auto num_episodes = static_cast<size_t>(stats.num_episodes);
    const size_t num_slots = phy2log.size() / static_cast<size_t>(num_ranks);
    // One rank's episode loads at a time, kBlock episodes at once (kept in registers while the
    // rank's slots are added in order), folded into the per-episode peak and sum.
    constexpr size_t kBlock = 8;
    std::vector<double> peak(num_episodes, 0.0);
    std::vector<double> sum(num_episodes, 0.0);
    std::vector<double> share(phy2log.size());
    std::vector<const double*> src(phy2log.size());
    for (size_t slot = 0; slot < phy2log.size(); ++slot) {
        const auto expert = static_cast<size_t>(phy2log[slot]);
        share[slot] = 1.0 / static_cast<double>(counts[expert]);
        src[slot] = stats.loads.data() + expert * num_episodes;
    }
    for (size_t begin = 0; begin < phy2log.size(); begin += num_slots) {
        for (size_t k0 = 0; k0 < num_episodes; k0 += kBlock) {
            const size_t width = std::min(kBlock, num_episodes - k0);
            double row[kBlock] = {};
            if (width == kBlock) {
                for (size_t slot = begin; slot < begin + num_slots; ++slot) {
                    const double* load = src[slot] + k0;
                    if (share[slot] == 1.0) {  // x * 1.0 == x: the same sums, no product
                        for (size_t k = 0; k < kBlock; ++k) {
                            row[k] += load[k];
                        }
                    } else {
                        for (size_t k = 0; k < kBlock; ++k) {
                            row[k] += load[k] * share[slot];
                        }
                    }
                }
            } else {
                for (size_t slot = begin; slot < begin + num_slots; ++slot) {
                    const double* load = src[slot] + k0;
                    for (size_t k = 0; k < width; ++k) {
                        row[k] += load[k] * share[slot];
                    }
                }
            }
            for (size_t k = 0; k < width; ++k) {
                peak[k0 + k] = std::max(peak[k0 + k], row[k]);
                sum[k0 + k] += row[k];
            }
        }
    }
    double total_score = 0.0;
    for (size_t k = 0; k < num_episodes; ++k) {
        total_score += sum[k] > 0.0 ? peak[k] * static_cast<double>(num_ranks) / sum[k] : 1.0;
    }
    return total_score / static_cast<double>(num_episodes);
}

}  // namespace eplb_native::flashlb
