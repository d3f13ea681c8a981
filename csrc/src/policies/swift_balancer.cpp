#include "eplb_native/policies/swift_balancer.h"

#include <algorithm>
#include <string>
#include <vector>

#include "eplb_native/error.h"
#include "eplb_native/policies/building_blocks.h"

namespace eplb_native::policies {
namespace {

std::vector<int64_t> swift_layer(const double* load, const int64_t* current, const Topology& topo,
                                 int64_t max_moves) {
    const int64_t n = topo.num_experts;
    const int64_t d = topo.num_ranks;
    const int64_t s = topo.slots_per_rank();
    const int64_t p_count = topo.num_replicas;
    std::vector<int64_t> row(current, current + p_count);
    std::vector<int64_t> logcnt(static_cast<size_t>(n), 0);
    for (int64_t e : row) {
        ++logcnt[static_cast<size_t>(e)];
    }
    std::vector<double> slot_load(static_cast<size_t>(p_count));
    std::vector<double> rank_load(static_cast<size_t>(d), 0.0);
    std::vector<int> original(static_cast<size_t>(d * n), 0);  // replicas of e on r in current
    for (int64_t p = 0; p < p_count; ++p) {
        const auto e = static_cast<size_t>(row[static_cast<size_t>(p)]);
        slot_load[static_cast<size_t>(p)] = load[e] / static_cast<double>(logcnt[e]);
        rank_load[static_cast<size_t>(p / s)] += slot_load[static_cast<size_t>(p)];
        ++original[static_cast<size_t>((p / s) * n) + e];
    }
    std::vector<int> holds = original;
    const auto on = [n](const std::vector<int>& table, int64_t rank, int64_t expert) {
        return table[static_cast<size_t>(rank * n + expert)];
    };
    int64_t copies = 0;
    const int64_t max_iterations = 4 * p_count;
    for (int64_t iteration = 0; iteration < max_iterations; ++iteration) {
        const auto hot = static_cast<int64_t>(
            std::max_element(rank_load.begin(), rank_load.end()) - rank_load.begin());
        const double hot_load = rank_load[static_cast<size_t>(hot)];
        double best_peak = hot_load;
        int64_t best_i = -1;
        int64_t best_j = -1;
        int64_t best_copies = 0;
        for (int64_t i = hot * s; i < (hot + 1) * s; ++i) {
            const int64_t x = row[static_cast<size_t>(i)];
            const double a = slot_load[static_cast<size_t>(i)];
            for (int64_t j = 0; j < p_count; ++j) {
                const int64_t other = j / s;
                const int64_t y = row[static_cast<size_t>(j)];
                const double b = slot_load[static_cast<size_t>(j)];
                if (other == hot || x == y || !(a > b) || on(holds, other, x) > 0 ||
                    on(holds, hot, y) > 0) {
                    continue;
                }
                const double peak = std::max(hot_load - a + b,
                                             rank_load[static_cast<size_t>(other)] - b + a);
                if (!(peak < best_peak)) {
                    continue;
                }
                // Copy count change: a slot is a copy when its expert was not on its rank.
                const int64_t new_copies = copies - (on(original, hot, x) == 0) +
                                           (on(original, hot, y) == 0) -
                                           (on(original, other, y) == 0) +
                                           (on(original, other, x) == 0);
                if (new_copies > max_moves) {
                    continue;
                }
                best_peak = peak;
                best_i = i;
                best_j = j;
                best_copies = new_copies;
            }
        }
        if (best_i < 0) {
            // No swap helps: try giving one more replica to an expert of the busiest rank, taken
            // from an expert with several replicas (re-allotment), if that lowers the peak.
            const double old_peak = hot_load;
            double best_peak_re = old_peak;
            int64_t re_x = -1;
            int64_t re_j = -1;
            int64_t re_copies = 0;
            for (int64_t i = hot * s; i < (hot + 1) * s; ++i) {
                const int64_t x = row[static_cast<size_t>(i)];
                const double cx = static_cast<double>(logcnt[static_cast<size_t>(x)]);
                const double wx = load[x];
                const double da = wx / (cx + 1.0) - wx / cx;
                for (int64_t j = 0; j < p_count; ++j) {
                    const int64_t y = row[static_cast<size_t>(j)];
                    const int64_t rj = j / s;
                    if (y == x || logcnt[static_cast<size_t>(y)] < 2 || on(holds, rj, x) > 0) {
                        continue;
                    }
                    const int64_t new_copies =
                        copies + (on(original, rj, x) == 0) - (on(original, rj, y) == 0);
                    if (new_copies > max_moves) {
                        continue;
                    }
                    const double cy = static_cast<double>(logcnt[static_cast<size_t>(y)]);
                    const double wy = load[y];
                    const double b_new = wy / (cy - 1.0);
                    const double db = b_new - wy / cy;
                    double peak = 0.0;
                    for (int64_t r = 0; r < d && peak < best_peak_re; ++r) {
                        double value = rank_load[static_cast<size_t>(r)] + on(holds, r, x) * da +
                                       on(holds, r, y) * db;
                        if (r == rj) {
                            value += wx / (cx + 1.0) - b_new;
                        }
                        peak = std::max(peak, value);
                    }
                    if (peak < best_peak_re) {
                        best_peak_re = peak;
                        re_x = x;
                        re_j = j;
                        re_copies = new_copies;
                    }
                }
            }
            if (re_x < 0) {
                break;
            }
            const auto bj = static_cast<size_t>(re_j);
            const int64_t y = row[bj];
            --holds[static_cast<size_t>((re_j / s) * n + y)];
            ++holds[static_cast<size_t>((re_j / s) * n + re_x)];
            --logcnt[static_cast<size_t>(y)];
            ++logcnt[static_cast<size_t>(re_x)];
            row[bj] = re_x;
            std::fill(rank_load.begin(), rank_load.end(), 0.0);
            for (int64_t p = 0; p < p_count; ++p) {
                const auto e = static_cast<size_t>(row[static_cast<size_t>(p)]);
                slot_load[static_cast<size_t>(p)] = load[e] / static_cast<double>(logcnt[e]);
                rank_load[static_cast<size_t>(p / s)] += slot_load[static_cast<size_t>(p)];
            }
            copies = re_copies;
            continue;
        }
        const auto bi = static_cast<size_t>(best_i);
        const auto bj = static_cast<size_t>(best_j);
        const int64_t other = best_j / s;
        const int64_t x = row[bi];
        const int64_t y = row[bj];
        rank_load[static_cast<size_t>(hot)] += slot_load[bj] - slot_load[bi];
        rank_load[static_cast<size_t>(other)] += slot_load[bi] - slot_load[bj];
        --holds[static_cast<size_t>(hot * n + x)];
        ++holds[static_cast<size_t>(hot * n + y)];
        --holds[static_cast<size_t>(other * n + y)];
        ++holds[static_cast<size_t>(other * n + x)];
        std::swap(row[bi], row[bj]);
        std::swap(slot_load[bi], slot_load[bj]);
        copies = best_copies;
    }
    return row;
}

}  // namespace

Plan plan_swift_balancer(const LoadView& load, const Topology& topo, const int64_t* current,
                         const SwiftBalancerOptions& options, ThreadPool& pool) {
    validate_problem(load, topo);
    if (options.max_moves_per_layer < 0) {
        throw_invalid("max_moves_per_layer",
                      "expected an integer >= 0, got " + std::to_string(options.max_moves_per_layer));
    }
    validate_current(current, load.num_layers, topo, "current");
    std::vector<int64_t> phy2log(static_cast<size_t>(load.num_layers * topo.num_replicas));
    pool.parallel_for(load.num_layers, [&](int64_t layer_idx) {
        const int64_t* current_row = current + layer_idx * topo.num_replicas;
        // A swap can bring an expert back to its rank in another slot: put it back in place.
        const std::vector<int64_t> row = align_to_current(
            swift_layer(load.layer(layer_idx), current_row, topo, options.max_moves_per_layer),
            current_row, topo.num_ranks);
        std::copy(row.begin(), row.end(), phy2log.begin() + layer_idx * topo.num_replicas);
    });
    return plan_from_phy2log(phy2log.data(), load.num_layers, topo.num_replicas, topo.num_experts);
}

}  // namespace eplb_native::policies
