#include "eplb_native/flashlb/minimal_moves.h"

#include <algorithm>
#include <limits>

#include "eplb_native/error.h"
#include "eplb_native/policies/building_blocks.h"

namespace eplb_native::flashlb {
namespace {

using policies::idx;

bool row_holds(const std::vector<int64_t>& phy2log, int64_t rank, int64_t num_slots,
               int64_t expert) {
    for (int64_t s = rank * num_slots; s < (rank + 1) * num_slots; ++s) {
        if (phy2log[idx(s)] == expert) {
            return true;
        }
    }
    return false;
}

// 1 when slot `slot` of `table` holds an expert absent from the same rank of `current`.
int64_t slot_copy(const std::vector<int64_t>& table, const std::vector<int64_t>& current,
                  int64_t slot, int64_t num_slots) {
    return row_holds(current, slot / num_slots, num_slots, table[idx(slot)]) ? 0 : 1;
}

}  // namespace

std::vector<int64_t> incremental_update(const std::vector<double>& weight,
                                        const std::vector<int64_t>& target_counts,
                                        const std::vector<int64_t>& current,
                                        const LayerShape& shape, int64_t max_moves) {
    const int64_t num_slots = shape.num_slots;
    const int64_t budget = max_moves < 0 ? std::numeric_limits<int64_t>::max() : max_moves;
    std::vector<int64_t> table = current;
    std::vector<int64_t> counts = counts_of(table, shape.num_experts);
    int64_t copies = 0;  // current == table at the start
    // Phase 1: replica counts towards the target, hottest deficit first; one slot each.
    for (;;) {
        int64_t gainer = -1;
        for (int64_t e = 0; e < shape.num_experts; ++e) {
            if (counts[idx(e)] < target_counts[idx(e)] &&
                (gainer < 0 || weight[idx(e)] / static_cast<double>(counts[idx(e)]) >
                                   weight[idx(gainer)] / static_cast<double>(counts[idx(gainer)]))) {
                gainer = e;
            }
        }
        if (gainer < 0) {
            break;
        }
        const std::vector<double> load =
            policies::row_rank_loads(weight, counts, table, shape.num_ranks);
        int64_t best_slot = -1;
        double best_load = std::numeric_limits<double>::infinity();
        for (int64_t slot = 0; slot < shape.num_physical(); ++slot) {
            const int64_t loser = table[idx(slot)];
            const int64_t rank = slot / num_slots;
            if (counts[idx(loser)] <= target_counts[idx(loser)] ||
                row_holds(table, rank, num_slots, gainer)) {
                continue;
            }
            const double after =
                load[idx(rank)] - weight[idx(loser)] / static_cast<double>(counts[idx(loser)]) +
                weight[idx(gainer)] / static_cast<double>(counts[idx(gainer)] + 1);
            if (after < best_load) {
                best_load = after;
                best_slot = slot;
            }
        }
        if (best_slot < 0) {
            break;
        }
        const int64_t before = slot_copy(table, current, best_slot, num_slots);
        const int64_t loser = table[idx(best_slot)];
        table[idx(best_slot)] = gainer;
        const int64_t after = slot_copy(table, current, best_slot, num_slots);
        if (copies + after - before > budget) {
            table[idx(best_slot)] = loser;
            break;
        }
        copies += after - before;
        --counts[idx(loser)];
        ++counts[idx(gainer)];
    }
    // Phase 2: swaps off the busiest rank while they lower it and the copies allow.
    std::vector<double> load = policies::row_rank_loads(weight, counts, table, shape.num_ranks);
    for (int64_t iteration = 0; iteration < shape.num_physical(); ++iteration) {
        const auto busiest = static_cast<int64_t>(
            std::max_element(load.begin(), load.end()) - load.begin());
        const double peak = load[idx(busiest)];
        double best_peak = peak * (1.0 - 1e-9);
        int64_t best_a = -1;
        int64_t best_b = -1;
        int64_t best_cost = 0;
        for (int64_t a = busiest * num_slots; a < (busiest + 1) * num_slots; ++a) {
            const int64_t out = table[idx(a)];
            const double out_share = weight[idx(out)] / static_cast<double>(counts[idx(out)]);
            for (int64_t b = 0; b < shape.num_physical(); ++b) {
                const int64_t rank = b / num_slots;
                const int64_t in = table[idx(b)];
                const double delta =
                    out_share - weight[idx(in)] / static_cast<double>(counts[idx(in)]);
                if (rank == busiest || delta <= 0.0) {
                    continue;
                }
                const double new_peak = std::max(peak - delta, load[idx(rank)] + delta);
                if (new_peak >= best_peak || row_holds(table, rank, num_slots, out) ||
                    row_holds(table, busiest, num_slots, in)) {
                    continue;
                }
                const int64_t cost_before = slot_copy(table, current, a, num_slots) +
                                            slot_copy(table, current, b, num_slots);
                const int64_t cost_after =
                    (row_holds(current, busiest, num_slots, in) ? 0 : 1) +
                    (row_holds(current, rank, num_slots, out) ? 0 : 1);
                if (copies + cost_after - cost_before > budget) {
                    continue;
                }
                best_peak = new_peak;
                best_a = a;
                best_b = b;
                best_cost = cost_after - cost_before;
            }
        }
        if (best_a < 0) {
            break;
        }
        const double delta =
            weight[idx(table[idx(best_a)])] / static_cast<double>(counts[idx(table[idx(best_a)])]) -
            weight[idx(table[idx(best_b)])] / static_cast<double>(counts[idx(table[idx(best_b)])]);
        std::swap(table[idx(best_a)], table[idx(best_b)]);
        load[idx(busiest)] -= delta;
        load[idx(best_b / num_slots)] += delta;
        copies += best_cost;
    }
    EPLB_CHECK(policies::weight_copies(current.data(), table.data(), shape.num_physical(),
                                       shape.num_ranks) == copies, "copy bookkeeping drifted");
    return table;
}

}  // namespace eplb_native::flashlb
