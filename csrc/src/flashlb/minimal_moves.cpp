#include "eplb_native/flashlb/minimal_moves.h"

#include <algorithm>
#include <limits>

#include "eplb_native/error.h"
#include "eplb_native/policies/building_blocks.h"

namespace eplb_native::flashlb {
namespace {

using policies::idx;

// 1 when slot `slot` of `table` holds an expert absent from the same rank of `current`.
int64_t slot_copy(const std::vector<int64_t>& table, const std::vector<int64_t>& current,
                  int64_t slot, int64_t num_slots) {
    const bool kept = policies::rank_holds(current.data(), slot / num_slots, num_slots,
                                           table[idx(slot)]);
    return kept ? 0 : 1;
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
                policies::rank_holds(table.data(), rank, num_slots, gainer)) {
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
    std::vector<double> share(weight.size());
    for (size_t e = 0; e < share.size(); ++e) {
        share[e] = weight[e] / static_cast<double>(counts[e]);
    }
    policies::SwapRules rules;
    rules.min_gain = 1e-9;
    rules.current = current.data();
    rules.max_copies = budget;
    copies = policies::swap_off_busiest(share, rules, shape.num_physical(), copies, table, load);
    EPLB_CHECK(policies::weight_copies(current.data(), table.data(), shape.num_physical(),
                                       shape.num_ranks) == copies, "copy bookkeeping drifted");
    return table;
}

}  // namespace eplb_native::flashlb
