#pragma once
// The placement plan (phy2log, log2phy, logcnt), its validation, and the per-rank maps derived
// from it.
//
// Names: L layers, N logical experts, D ranks, S slots per rank, P = D * S physical slots.
// Rank r owns physical slots [r * S, (r + 1) * S).

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace eplb_native {

// A read-only view of a float64 [L, N] (or [T, L, N] flattened to [T * L, N]) load array.
struct LoadView {
    const double* data = nullptr;
    int64_t num_layers = 0;
    int64_t num_experts = 0;

    [[nodiscard]] double at(int64_t layer_idx, int64_t expert_idx) const {
        return data[layer_idx * num_experts + expert_idx];
    }
    [[nodiscard]] const double* layer(int64_t layer_idx) const {
        return data + layer_idx * num_experts;
    }
};

// The largest sum of loads accepted: far enough below the float64 limit (1.8e308) that no sum
// of them in any order (per rank, layer, step or window) overflows.
constexpr double kMaxLoadTotal = 1e300;

// One pass over load values: whether all are finite and >= 0, and their sum (summed in eight
// interleaved lanes, then lane by lane).
struct LoadScan {
    bool all_valid = true;
    double total = 0.0;
};
[[nodiscard]] LoadScan scan_load_values(const double* data, int64_t size);

// Throws std::invalid_argument naming `field` when any value is NaN, infinite or negative (the
// message names the value's row, counted from `first_row`: `data` may be a slice, and expert)
// or when their sum exceeds kMaxLoadTotal; returns the sum.
double validate_load_values(const double* data, int64_t size, int64_t num_experts,
                            const std::string& field, int64_t first_row = 0);
// The same for integer token counts: throws when any value is negative (their sum, at most
// size * 2^63, cannot overflow a double).
void validate_load_values(const int64_t* data, int64_t size, int64_t num_experts,
                          const std::string& field, int64_t first_row = 0);

// Throws std::invalid_argument naming `field` unless `total`, a sum of loads, is at most
// kMaxLoadTotal.
void require_load_total(double total, const std::string& field);

struct Plan {
    int64_t num_layers = 0;
    int64_t num_experts = 0;
    int64_t num_physical = 0;
    int64_t max_replicas = 0;
    std::vector<int64_t> phy2log;  // [L, P]
    std::vector<int64_t> log2phy;  // [L, N, max_replicas], -1 padded, ascending physical index
    std::vector<int64_t> logcnt;   // [L, N]
};

// Builds a Plan from phy2log [L, P]: log2phy lists each expert's physical slots in ascending
// order, padded with -1 to the largest replica count over all layers. Throws
// std::invalid_argument ("phy2log: ...") for ids outside [0, N) or an expert with no replica.
[[nodiscard]] Plan plan_from_phy2log(const int64_t* phy2log, int64_t num_layers,
                                     int64_t num_physical, int64_t num_experts);

struct PlanArrays {
    const int64_t* phy2log = nullptr;
    const int64_t* log2phy = nullptr;
    const int64_t* logcnt = nullptr;
    int64_t num_layers = 0;
    int64_t num_physical = 0;
    int64_t num_experts = 0;
    int64_t max_replicas = 0;
};

// A read-only view of an owned Plan's arrays (valid while `plan` lives).
[[nodiscard]] PlanArrays view_of(const Plan& plan);

// Checks that the three maps describe one valid placement on `num_ranks` ranks: every expert
// has >= 1 replica, ids are in range, P is a multiple of num_ranks, logcnt counts phy2log,
// log2phy lists exactly the slots of each expert (any order, -1 padded after them), and, unless
// allow_duplicate_on_rank, no rank holds two replicas of one expert. Throws
// std::invalid_argument naming the field, layer and slot.
void validate_plan(const PlanArrays& plan, int64_t num_ranks, bool allow_duplicate_on_rank);

// Per-rank expert_map, int64 [D, L, N]: the local slot (0..S-1) on rank r holding logical
// expert e (the first one if there are several), or -1 when rank r holds no replica.
[[nodiscard]] std::vector<int64_t> rank_expert_maps(const Plan& plan, int64_t num_ranks);

// Per-rank routing choice, int64 [D, L, N]: the physical slot that rank r sends expert e's
// tokens to.
// tp_size == 0: a rank holding a replica uses its own; the other ranks, in ascending order,
// each take the replica that serves the fewest ranks so far (lowest index on ties), so that the
// replicas' shares of the D ranks differ by at most one.
// tp_size >= 1: vllm-ascend's generate_log2phy_map rule. Expert e's k candidates are its
// holding ranks in ascending order, each with its lowest slot of e; rank r takes candidate
// r % k when tp_size == 1, else (r % tp_size + r / tp_size + e) % k, which rotates the replicas
// of neighbouring tensor-parallel ranks and of successive experts. Throws std::invalid_argument
// naming tp_size when it is negative.
[[nodiscard]] std::vector<int64_t> rank_log2phy(const Plan& plan, int64_t num_ranks,
                                                int64_t tp_size = 0);

// Tokens per logical expert from tokens per physical slot: `slot_load` [rows, L, P] in,
// `out` [rows, L, N] overwritten, each expert's slots summed in slot order.
void expert_load_from_slot_load(const Plan& plan, const double* slot_load, int64_t rows,
                                double* out);

// Tokens per rank, each expert's tokens split evenly among its replicas: `load` [rows, L, N]
// in, `out` [rows, L, D] overwritten; rank d adds load / logcnt of its slots' experts in slot
// order. Throws naming num_ranks unless the ranks split the slots evenly.
void rank_loads(const Plan& plan, const double* load, int64_t rows, int64_t num_ranks,
                double* out);

// Balance of layer `layer` in each row of `load` [rows, L, N]: mean / peak rank load (1.0 for
// a row with no load) of rank_loads' rank loads, written to column `layer` of `out` [rows, L].
// The mean sums the D rank loads in numpy's pairwise order: the values equal numpy's
// 1 / peak_to_average(rank_loads(...)) bit for bit. Throws naming num_ranks unless the ranks
// split the slots evenly.
void layer_balance(const Plan& plan, const double* load, int64_t rows, int64_t num_ranks,
                   int64_t layer, double* out);

// The first break of each placement rule in one layer of the table `next` [D, S] against the
// table in force `current` [D, S] (a negative id: an empty slot): {the smallest expert of
// `current` with no replica in `next`; the first rank that holds an expert of `next` more
// than once and more often than `current` does there (a repeat `current` already had is
// allowed); the first rank where an expert that `current` has there too sits in another
// slot}, -1 for a rule kept.
[[nodiscard]] std::array<int64_t, 3> placement_violations(const int64_t* current,
                                                          const int64_t* next, int64_t num_ranks,
                                                          int64_t num_slots);

}  // namespace eplb_native
