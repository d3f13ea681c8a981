#include "eplb_native/policies/swift_balancer.h"

#include <algorithm>
#include <string>
#include <vector>

#include "eplb_native/error.h"
#include "eplb_native/policies/building_blocks.h"

namespace eplb_native::policies {
namespace {

// One layer being improved: its row [P], replicas per expert [N], each expert's load per
// replica [N] and the rank loads [D].
struct SwiftLayer {
    const double* load;  // [N] tokens per expert
    int64_t num_ranks;
    std::vector<int64_t> row;
    std::vector<int64_t> logcnt;
    std::vector<double> share;
    std::vector<double> rank_load;

    SwiftLayer(const double* expert_load, const int64_t* current, const Topology& topo)
        : load(expert_load),
          num_ranks(topo.num_ranks),
          row(current, current + topo.num_replicas),
          logcnt(idx(topo.num_experts), 0) {
        for (const int64_t e : row) {
            ++logcnt[idx(e)];
        }
        refresh();
    }

    [[nodiscard]] int64_t num_slots() const {
        return static_cast<int64_t>(row.size()) / num_ranks;
    }

    // share and rank_load afresh from row and logcnt.
    void refresh() {
        share.resize(logcnt.size());
        for (size_t e = 0; e < share.size(); ++e) {
            share[e] = load[e] / static_cast<double>(logcnt[e]);
        }
        rank_load.resize(idx(num_ranks));
        row_rank_loads(load, logcnt.data(), row.data(), static_cast<int64_t>(row.size()), num_ranks,
                       rank_load.data());
    }
};

// One replica of an expert with several, overwritten by an expert of the busiest rank.
struct Reallotment {
    int64_t expert = -1;  // the expert gaining a replica (-1: none)
    int64_t slot = -1;    // the slot it takes
    int64_t copies = 0;   // weight copies from current afterwards
};

// The layer's max rank load after `expert` x (on the busiest rank) takes slot j from y,
// evaluated while it stays below `bound` (returns a value >= bound otherwise). holds [D, N]
// counts the replicas of each expert on each rank.
double peak_after_reallotment(const SwiftLayer& layer, const std::vector<int>& holds,
                              int64_t x, int64_t j, double bound) {
    const auto n = static_cast<int64_t>(layer.logcnt.size());
    const int64_t y = layer.row[idx(j)];
    const int64_t rj = j / layer.num_slots();
    const double cx = static_cast<double>(layer.logcnt[idx(x)]);
    const double wx = layer.load[x];
    const double da = wx / (cx + 1.0) - wx / cx;
    const double cy = static_cast<double>(layer.logcnt[idx(y)]);
    const double wy = layer.load[y];
    const double b_new = wy / (cy - 1.0);
    const double db = b_new - wy / cy;
    double peak = 0.0;
    for (int64_t r = 0; r < layer.num_ranks && peak < bound; ++r) {
        double value = layer.rank_load[idx(r)] + holds[idx(r * n + x)] * da +
                       holds[idx(r * n + y)] * db;
        if (r == rj) {
            value += wx / (cx + 1.0) - b_new;
        }
        peak = std::max(peak, value);
    }
    return peak;
}

// The re-allotment that lowers the layer's max rank load the most within max_moves copies
// from `current`; none when no re-allotment lowers it.
Reallotment best_reallotment(const SwiftLayer& layer, const int64_t* current, int64_t copies,
                             int64_t max_moves) {
    const auto n = static_cast<int64_t>(layer.logcnt.size());
    const int64_t s = layer.num_slots();
    const auto p_count = static_cast<int64_t>(layer.row.size());
    std::vector<int> holds(idx(layer.num_ranks * n), 0);
    for (int64_t p = 0; p < p_count; ++p) {
        ++holds[idx((p / s) * n + layer.row[idx(p)])];
    }
    const auto hot = static_cast<int64_t>(
        std::max_element(layer.rank_load.begin(), layer.rank_load.end()) -
        layer.rank_load.begin());
    double best_peak = layer.rank_load[idx(hot)];
    Reallotment best;
    for (int64_t i = hot * s; i < (hot + 1) * s; ++i) {
        const int64_t x = layer.row[idx(i)];
        for (int64_t j = 0; j < p_count; ++j) {
            const int64_t y = layer.row[idx(j)];
            const int64_t rj = j / s;
            if (y == x || layer.logcnt[idx(y)] < 2 || holds[idx(rj * n + x)] > 0) {
                continue;
            }
            const int64_t new_copies = copies + !rank_holds(current, rj, s, x) -
                                       !rank_holds(current, rj, s, y);
            if (new_copies > max_moves) {
                continue;
            }
            const double peak = peak_after_reallotment(layer, holds, x, j, best_peak);
            if (peak < best_peak) {
                best_peak = peak;
                best = Reallotment{x, j, new_copies};
            }
        }
    }
    return best;
}

void apply_reallotment(const Reallotment& move, SwiftLayer& layer) {
    const int64_t y = layer.row[idx(move.slot)];
    --layer.logcnt[idx(y)];
    ++layer.logcnt[idx(move.expert)];
    layer.row[idx(move.slot)] = move.expert;
    layer.refresh();
}

std::vector<int64_t> swift_layer(const double* load, const int64_t* current, const Topology& topo,
                                 int64_t max_moves) {
    SwiftLayer layer(load, current, topo);
    SwapRules rules;
    rules.current = current;
    rules.max_copies = max_moves;
    int64_t copies = 0;
    const int64_t max_iterations = 4 * topo.num_replicas;
    for (int64_t iteration = 0; iteration < max_iterations; ++iteration) {
        const Swap swap = best_busiest_swap(layer.row, layer.share, layer.rank_load, copies, rules);
        if (swap.from >= 0) {
            apply_swap(swap, layer.share, layer.row, layer.rank_load);
            copies = swap.copies;
            continue;
        }
        // No swap helps: one more replica for an expert of the busiest rank, taken from an
        // expert with several, if that lowers the peak.
        const Reallotment move = best_reallotment(layer, current, copies, max_moves);
        if (move.expert < 0) {
            break;
        }
        apply_reallotment(move, layer);
        copies = move.copies;
    }
    return layer.row;
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
