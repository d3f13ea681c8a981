#pragma once
// Reusable steps of the placement policies: the plan metrics of one layer (rank loads, weight
// copies, a lower bound on the busiest rank), min-max-per-replica allotment, DeepSeek-style
// balanced packing (with or without two replicas of one expert on a pack), swaps off the
// busiest rank, and the alignment that keeps experts where the table in force has them. Each
// works on one layer and is deterministic.
//
// The DeepSeek-compatible steps (replicate_min_max, balanced_packing) compute in float32 as
// DeepSeek EPLB does (`weight.float()`), so ties and rounding match its torch implementation;
// sort ties are broken by the lower index (torch.sort(stable=True)).

#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

#include "eplb_native/plan.h"
#include "eplb_native/topology.h"

namespace eplb_native::policies {

// A non-negative int64 index or size as size_t (for std::vector subscripts).
constexpr size_t idx(int64_t value) { return static_cast<size_t>(value); }

// Plan metrics of one layer. A layer's placement is a phy2log row [P]; with D ranks, rank r
// owns slots [r * S, (r + 1) * S), S = P / D.

// Rank loads of one layer: out[r] (D values, overwritten) sums weight[e] / counts[e] over the
// experts e of rank r's slots, in slot order. weight [N] (tokens per expert), counts [N]
// (replicas per expert), phy2log [num_physical] with ids in [0, N).
void row_rank_loads(const double* weight, const int64_t* counts, const int64_t* phy2log,
                    int64_t num_physical, int64_t num_ranks, double* out);
// As above, into a new vector [D].
[[nodiscard]] std::vector<double> row_rank_loads(const std::vector<double>& weight,
                                                 const std::vector<int64_t>& counts,
                                                 const std::vector<int64_t>& phy2log,
                                                 int64_t num_ranks);

// Whether rank `rank` of `row` (slots [rank * num_slots, (rank + 1) * num_slots)) holds `expert`.
[[nodiscard]] bool rank_holds(const int64_t* row, int64_t rank, int64_t num_slots,
                              int64_t expert);

// Weight copies from `current` to `proposed` (rows [num_physical] of one layer): the slots of
// `proposed` whose expert is not on the same rank in `current` (-1: an empty slot, which holds
// nothing in `current` and needs no copy in `proposed`). A replica that only changes slot
// within its rank costs nothing.
[[nodiscard]] int64_t weight_copies(const int64_t* current, const int64_t* proposed,
                                    int64_t num_physical, int64_t num_ranks);

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

// Lower bound on the busiest rank's load of any placement of `weight` [N] on num_physical
// slots over num_ranks ranks with at most one replica of an expert per rank: the larger of the
// mean rank load (sum / D) and the largest per-replica load weight[e] / counts[e] of the
// min-max allotment with at most D replicas per expert (the smallest such maximum over all
// allotments). Needs N <= num_physical <= N * D.
[[nodiscard]] double max_load_lower_bound(const std::vector<double>& weight,
                                          int64_t num_physical, int64_t num_ranks);

// Indices of values[0..n) ordered by descending value; equal values keep ascending index.
[[nodiscard]] std::vector<int64_t> order_descending(const float* values, int64_t n);
[[nodiscard]] std::vector<int64_t> order_descending(const double* values, int64_t n);

// Result of replicate_min_max over `num_physical` slots.
struct Replication {
    std::vector<int64_t> phy2log;       // [num_physical]: slot i < num_experts holds expert i
    std::vector<int64_t> logcnt;        // [num_experts]: replicas per expert
};

// Min-max per replica over all experts in float32 (min_max_order's rule): every expert gets one
// replica, then each further replica goes to the expert with the largest load per replica
// weight[e] / logcnt[e] (lowest index on ties) among those with fewer than max_count replicas. Needs num_physical <= num_experts * max_count.
[[nodiscard]] Replication replicate_min_max(
    const float* weight, int64_t num_experts, int64_t num_physical,
    int64_t max_count = std::numeric_limits<int64_t>::max());

struct Packing {
    std::vector<int64_t> pack_index;    // [num_items]: the pack of each item
    std::vector<int64_t> rank_in_pack;  // [num_items]: the item's position inside its pack
};

// Balanced packing of num_items weighted items into num_packs packs of num_items / num_packs
// items each: heaviest item first (stable), into the lightest pack that still has room (lowest
// pack index on ties). One item per pack: item i goes to pack i. Duplicate experts on a pack
// are not avoided (DeepSeek EPLB's behaviour).
[[nodiscard]] Packing balanced_packing(const float* weight, int64_t num_items, int64_t num_packs);

// balanced_packing that never puts two items with the same label (expert id) in one pack: each
// item, heaviest first, goes to the lightest pack with room that lacks its label (lowest pack
// index on ties). When every pack with room already holds the label, the item instead takes the
// place of an item y in a pack p that lacks the label, and y moves to the lightest pack q with
// room (y's label must be absent from q); among such (p, y) the one with the smallest
// max(load of p after, load of q after) wins, lowest p then lowest position on ties. Such a
// pair always exists when no label occurs more than num_packs times (EPLB_CHECK otherwise).
// When balanced_packing puts no two items with one label in a pack, both give the same result.
[[nodiscard]] Packing balanced_packing_distinct(const float* weight, const int64_t* label,
                                                int64_t num_items, int64_t num_packs);

// Swaps off the busiest rank: one engine for the policies that improve a placement by
// exchanging two replicas between the busiest rank and another rank. `share` [N] is each
// expert's load per replica (fixed while swapping), `row` the phy2log row [P], `rank_load` [D]
// its rank loads under `share` (row_rank_loads).
struct SwapRules {
    // A swap must leave the larger of the two ranks' loads below busiest * (1 - min_gain).
    double min_gain = 0.0;
    // Among swaps leaving equal peaks: the lowest (other rank, busiest-rank slot, other slot)
    // when true, else the lowest (busiest-rank slot, other slot).
    bool rank_first_ties = false;
    // The row in force [P] (-1: an empty slot), or null: with it, the weight copies from it
    // (weight_copies' count) never exceed max_copies.
    const int64_t* current = nullptr;
    int64_t max_copies = 0;
};

// A swap of slots `from` (on the busiest rank) and `to`; `copies`: the weight copies from
// SwapRules::current afterwards. from < 0: no swap.
struct Swap {
    int64_t from = -1;
    int64_t to = -1;
    int64_t copies = 0;
};

// The swap that leaves the lowest max(busiest rank's load, other rank's load) among those that
// keep every rank free of two replicas of one expert, lower the busiest rank (its replica is
// heavier) and obey `rules`; `copies`: the weight copies of `row` now (0 without current).
[[nodiscard]] Swap best_busiest_swap(const std::vector<int64_t>& row,
                                     const std::vector<double>& share,
                                     const std::vector<double>& rank_load, int64_t copies,
                                     const SwapRules& rules);

// Applies `swap` to `row` and `rank_load`.
void apply_swap(const Swap& swap, const std::vector<double>& share, std::vector<int64_t>& row,
                std::vector<double>& rank_load);

// Applies best_busiest_swap while one exists, at most max_swaps times; returns the weight
// copies at the end (`copies`: at the start).
int64_t swap_off_busiest(const std::vector<double>& share, const SwapRules& rules,
                         int64_t max_swaps, int64_t copies, std::vector<int64_t>& row,
                         std::vector<double>& rank_load);

// Minimum-cost perfect assignment on a square n x n cost matrix (row-major): returns
// assignment[row] = column. O(n^3) Hungarian method (potentials + shortest augmenting paths).
[[nodiscard]] std::vector<int64_t> hungarian_min_cost(const std::vector<double>& cost, int64_t n);

// The slot step alone (vLLM's preserve_intragpu_slots): rank r of `proposed` stays rank r;
// inside it, every expert that `current` (row [P], -1: empty slot) has on rank r keeps its
// slot (as many replicas as both hold), and the others fill the free slots in proposal order.
[[nodiscard]] std::vector<int64_t> keep_slots(const std::vector<int64_t>& proposed,
                                              const int64_t* current, int64_t num_ranks);

// Keeps experts where the table in force has them. Reorders `proposed` (phy2log row [P]; rank r
// owns slots [r * S, (r + 1) * S)) against `current` (the row in force, [P]; -1 marks an empty
// slot) in two steps:
//   1. ranks: each proposed rank row goes to the current rank sharing the most experts with it
//      (maximum total multiset overlap; among equal totals, the most ranks keep their label).
//      With num_nodes > 1 the ranks form num_nodes blocks of D / num_nodes consecutive ranks,
//      and whole blocks are matched first (by the best overlap of their ranks), then ranks only
//      within matched blocks, so a plan that confines expert groups to nodes keeps doing so.
//   2. slots: keep_slots on the relabelled ranks.
// Every rank's multiset of experts moves as a whole, so replica counts, the multiset of rank
// loads and the absence of duplicates on a rank are unchanged, and the weight copies from
// `current` are the fewest over all such relabellings.
[[nodiscard]] std::vector<int64_t> align_to_current(const std::vector<int64_t>& proposed,
                                                    const int64_t* current, int64_t num_ranks,
                                                    int64_t num_nodes = 1);

// Checks the topology (validate_topology), that load has topo.num_experts columns and at least
// one layer, and its values (finite, >= 0). Throws std::invalid_argument naming the field.
void validate_problem(const LoadView& load, const Topology& topo);

// Which rules validate_current enforces beyond ids in [0, N).
struct CurrentChecks {
    bool every_expert = true;           // every expert has a replica in every layer
    bool no_duplicate_on_rank = false;  // no rank holds two replicas of one expert
    bool empty_slots = false;           // -1 is allowed too: an empty slot (vLLM's elastic EP)
};

// Checks a current placement phy2log [L, P] against the topology: ids in [0, N) (or -1 when
// checks.empty_slots), plus `checks`.
// Throws std::invalid_argument naming `field`.
void validate_current(const int64_t* phy2log, int64_t num_layers, const Topology& topo,
                      const char* field, CurrentChecks checks = {});

// The table in force of a slot-stable plan: validate_current (empty slots allowed), and room
// for the replicas with at most one per rank and expert (each of `num_nodes` nodes places its
// P / H replicas over its D / H ranks: P * H <= N * D). Throws std::invalid_argument naming the
// field.
void validate_slot_stable(const int64_t* current, int64_t num_layers, const Topology& topo,
                          int64_t num_nodes);

// A fixed 64-bit seed for (seed, layer_idx): the same layer gets the same stream whatever
// thread plans it (splitmix64 finaliser).
[[nodiscard]] uint64_t layer_seed(uint64_t seed, int64_t layer_idx);

}  // namespace eplb_native::policies
