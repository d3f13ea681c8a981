#include "eplb_native/plan.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>

#include "eplb_native/error.h"
#include "eplb_native/policies/building_blocks.h"

namespace eplb_native {
namespace {

std::string at_layer(int64_t layer_idx) { return "layer " + std::to_string(layer_idx); }

// S, the slots of each of `num_ranks` ranks; throws naming num_ranks unless they split the
// `num_physical` slots evenly.
int64_t slots_per_rank(int64_t num_physical, int64_t num_ranks) {
    require_positive(num_ranks, "num_ranks");
    if (num_physical % num_ranks != 0) {
        throw_invalid("num_ranks", std::to_string(num_physical) +
                                       " physical slots cannot be split evenly over " +
                                       std::to_string(num_ranks) + " ranks");
    }
    return num_physical / num_ranks;
}

[[noreturn]] void throw_bad_value(const std::string& field, const char* what,
                                  const std::string& value, int64_t index, int64_t num_experts,
                                  int64_t first_row) {
    throw_invalid(field, std::string(what) + " value " + value + " at row " +
                             std::to_string(first_row + index / num_experts) + ", expert " +
                             std::to_string(index % num_experts) +
                             " (loads must be finite and >= 0)");
}

// numpy's sum of n doubles (its reduction over a contiguous axis): below 8 values one by one;
// up to 128 in eight interleaved lanes folded ((0 + 1) + (2 + 3)) + ((4 + 5) + (6 + 7)) with
// the values past the last multiple of 8 added after; above, the two halves (the first a
// multiple of 8 long) summed so and added.
double pairwise_sum(const double* a, int64_t n) {
    constexpr int64_t kBlock = 128;
    if (n < 8) {
        double sum = 0.0;
        for (int64_t i = 0; i < n; ++i) {
            sum += a[i];
        }
        return sum;
    }
    if (n <= kBlock) {
        double r[8];
        std::copy(a, a + 8, r);
        int64_t i = 8;
        for (; i < n - n % 8; i += 8) {
            for (int64_t k = 0; k < 8; ++k) {
                r[k] += a[i + k];
            }
        }
        double sum = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; ++i) {
            sum += a[i];
        }
        return sum;
    }
    int64_t half = n / 2;
    half -= half % 8;
    return pairwise_sum(a, half) + pairwise_sum(a + half, n - half);
}

}  // namespace

PlanArrays view_of(const Plan& plan) {
    PlanArrays arrays;
    arrays.phy2log = plan.phy2log.data();
    arrays.log2phy = plan.log2phy.data();
    arrays.logcnt = plan.logcnt.data();
    arrays.num_layers = plan.num_layers;
    arrays.num_physical = plan.num_physical;
    arrays.num_experts = plan.num_experts;
    arrays.max_replicas = plan.max_replicas;
    return arrays;
}

LoadScan scan_load_values(const double* data, int64_t size) {
    // Without branches, in independent lanes so that it vectorises: lane k sums values k,
    // k + 8, ... and keeps their least and largest. A NaN fails no comparison of the min/max
    // updates, but makes its lane's sum NaN.
    constexpr int64_t kLanes = 8;
    double lanes[kLanes] = {};
    double least[kLanes] = {};
    double largest[kLanes] = {};
    const int64_t whole = size - size % kLanes;
    for (int64_t i = 0; i < whole; i += kLanes) {
        for (int64_t k = 0; k < kLanes; ++k) {
            const double value = data[i + k];
            lanes[k] += value;
            least[k] = value < least[k] ? value : least[k];
            largest[k] = value > largest[k] ? value : largest[k];
        }
    }
    for (int64_t i = whole; i < size; ++i) {
        lanes[0] += data[i];
        least[0] = std::min(least[0], data[i]);
        largest[0] = std::max(largest[0], data[i]);
    }
    LoadScan scan;
    for (int64_t k = 0; k < kLanes; ++k) {
        scan.all_valid = scan.all_valid && !std::isnan(lanes[k]) && least[k] >= 0.0 &&
                         largest[k] <= std::numeric_limits<double>::max();
        scan.total += lanes[k];
    }
    return scan;
}

double validate_load_values(const double* data, int64_t size, int64_t num_experts,
                            const std::string& field, int64_t first_row) {
    const LoadScan scan = scan_load_values(data, size);
    if (scan.all_valid) {
        require_load_total(scan.total, field);
        return scan.total;
    }
    // The slow pass names the first bad value (there is one).
    int64_t bad = 0;
    while (data[bad] >= 0.0 && data[bad] <= std::numeric_limits<double>::max()) {
        ++bad;
    }
    const double value = data[bad];
    const char* what = std::isnan(value) ? "NaN" : (std::isinf(value) ? "inf" : "negative");
    throw_bad_value(field, what, std::to_string(value), bad, num_experts, first_row);
}

void validate_load_values(const int64_t* data, int64_t size, int64_t num_experts,
                          const std::string& field, int64_t first_row) {
    bool all_valid = true;
    for (int64_t i = 0; i < size; ++i) {
        all_valid &= data[i] >= 0;
    }
    if (all_valid) {
        return;
    }
    for (int64_t i = 0; i < size; ++i) {
        if (data[i] < 0) {
            throw_bad_value(field, "negative", std::to_string(data[i]), i, num_experts, first_row);
        }
    }
}

void require_load_total(double total, const std::string& field) {
    if (!(total <= kMaxLoadTotal)) {  // inf and NaN fail too
        throw_invalid(field, "the values sum beyond 1e300, where sums over ranks, layers and "
                             "steps overflow float64 (scale them down)");
    }
}

Plan plan_from_phy2log(const int64_t* phy2log, int64_t num_layers, int64_t num_physical,
                       int64_t num_experts) {
    require_positive(num_layers, "phy2log");
    require_positive(num_physical, "phy2log");
    require_positive(num_experts, "num_experts");
    if (num_experts > num_physical) {
        throw_invalid("phy2log", std::to_string(num_physical) + " physical slots cannot hold num_experts=" +
                                     std::to_string(num_experts) + " experts (each needs a slot)");
    }
    Plan plan;
    plan.num_layers = num_layers;
    plan.num_experts = num_experts;
    plan.num_physical = num_physical;
    plan.phy2log.assign(phy2log, phy2log + num_layers * num_physical);
    plan.logcnt.assign(static_cast<size_t>(num_layers * num_experts), 0);
    for (int64_t l = 0; l < num_layers; ++l) {
        for (int64_t p = 0; p < num_physical; ++p) {
            const int64_t e = phy2log[l * num_physical + p];
            if (e < 0 || e >= num_experts) {
                throw_invalid("phy2log", at_layer(l) + ", slot " + std::to_string(p) +
                                             ": expert id " + std::to_string(e) +
                                             " outside [0, " + std::to_string(num_experts) + ")");
            }
            ++plan.logcnt[static_cast<size_t>(l * num_experts + e)];
        }
    }
    for (int64_t l = 0; l < num_layers; ++l) {
        for (int64_t e = 0; e < num_experts; ++e) {
            const int64_t count = plan.logcnt[static_cast<size_t>(l * num_experts + e)];
            if (count == 0) {
                throw_invalid("phy2log", at_layer(l) + ": expert " + std::to_string(e) +
                                             " has no replica (every expert needs at least one)");
            }
            plan.max_replicas = std::max(plan.max_replicas, count);
        }
    }
    const int64_t max_rep = plan.max_replicas;
    require_array_size("phy2log", {num_layers, num_experts, max_rep},
                       "log2phy [layers, experts, max replicas]");
    plan.log2phy.assign(static_cast<size_t>(num_layers * num_experts * max_rep), -1);
    std::vector<int64_t> filled(static_cast<size_t>(num_experts));
    for (int64_t l = 0; l < num_layers; ++l) {
        std::fill(filled.begin(), filled.end(), 0);
        for (int64_t p = 0; p < num_physical; ++p) {
            const int64_t e = phy2log[l * num_physical + p];
            plan.log2phy[static_cast<size_t>((l * num_experts + e) * max_rep +
                                             filled[static_cast<size_t>(e)]++)] = p;
        }
    }
    return plan;
}

void validate_plan(const PlanArrays& plan, int64_t num_ranks, bool allow_duplicate_on_rank) {
    const int64_t L = plan.num_layers;
    const int64_t P = plan.num_physical;
    const int64_t N = plan.num_experts;
    const int64_t R = plan.max_replicas;
    require_positive(L, "phy2log");
    require_positive(P, "phy2log");
    require_positive(N, "logcnt");
    require_positive(R, "log2phy");
    const int64_t S = slots_per_rank(P, num_ranks);
    std::vector<int64_t> counted(static_cast<size_t>(N));
    std::vector<int64_t> last_rank(static_cast<size_t>(N));
    for (int64_t l = 0; l < L; ++l) {
        std::fill(counted.begin(), counted.end(), 0);
        std::fill(last_rank.begin(), last_rank.end(), -1);
        for (int64_t p = 0; p < P; ++p) {
            const int64_t e = plan.phy2log[l * P + p];
            if (e < 0 || e >= N) {
                throw_invalid("phy2log", at_layer(l) + ", slot " + std::to_string(p) +
                                             ": expert id " + std::to_string(e) +
                                             " outside [0, " + std::to_string(N) + ")");
            }
            const int64_t rank = p / S;
            if (!allow_duplicate_on_rank && last_rank[static_cast<size_t>(e)] == rank) {
                throw_invalid("phy2log", at_layer(l) + ": rank " + std::to_string(rank) +
                                             " holds expert " + std::to_string(e) +
                                             " twice (pass allow_duplicate_on_rank=True to permit)");
            }
            last_rank[static_cast<size_t>(e)] = rank;
            ++counted[static_cast<size_t>(e)];
        }
        for (int64_t e = 0; e < N; ++e) {
            const int64_t want = counted[static_cast<size_t>(e)];
            if (want == 0) {
                throw_invalid("phy2log", at_layer(l) + ": expert " + std::to_string(e) +
                                             " has no replica (every expert needs at least one)");
            }
            const int64_t got = plan.logcnt[l * N + e];
            if (got != want) {
                throw_invalid("logcnt", at_layer(l) + ", expert " + std::to_string(e) + ": says " +
                                            std::to_string(got) + " replicas, phy2log has " +
                                            std::to_string(want));
            }
            if (want > R) {
                throw_invalid("log2phy", at_layer(l) + ", expert " + std::to_string(e) + " has " +
                                             std::to_string(want) + " replicas but log2phy holds " +
                                             std::to_string(R));
            }
            const int64_t* row = plan.log2phy + (l * N + e) * R;
            for (int64_t k = 0; k < R; ++k) {
                const int64_t p = row[k];
                if (k < want) {
                    if (p < 0 || p >= P || plan.phy2log[l * P + p] != e) {
                        throw_invalid("log2phy", at_layer(l) + ", expert " + std::to_string(e) +
                                                     ", replica " + std::to_string(k) + ": slot " +
                                                     std::to_string(p) + " does not hold expert " +
                                                     std::to_string(e) + " in phy2log");
                    }
                    for (int64_t j = 0; j < k; ++j) {
                        if (row[j] == p) {
                            throw_invalid("log2phy", at_layer(l) + ", expert " +
                                                         std::to_string(e) + ": slot " +
                                                         std::to_string(p) + " listed twice");
                        }
                    }
                } else if (p != -1) {
                    throw_invalid("log2phy", at_layer(l) + ", expert " + std::to_string(e) +
                                                 ": expected -1 padding after " +
                                                 std::to_string(want) + " replicas, got " +
                                                 std::to_string(p));
                }
            }
        }
    }
}

std::vector<int64_t> rank_expert_maps(const Plan& plan, int64_t num_ranks) {
    require_positive(num_ranks, "num_ranks");
    const int64_t L = plan.num_layers;
    const int64_t N = plan.num_experts;
    const int64_t P = plan.num_physical;
    const int64_t S = slots_per_rank(P, num_ranks);
    require_array_size("num_ranks", {num_ranks, L, N}, "per-rank maps [ranks, layers, experts]");
    std::vector<int64_t> maps(static_cast<size_t>(num_ranks * L * N), -1);
    for (int64_t l = 0; l < L; ++l) {
        // Descending slots so that the first (lowest) local slot of an expert wins.
        for (int64_t p = P - 1; p >= 0; --p) {
            const int64_t rank = p / S;
            const int64_t e = plan.phy2log[static_cast<size_t>(l * P + p)];
            maps[static_cast<size_t>((rank * L + l) * N + e)] = p % S;
        }
    }
    return maps;
}

std::vector<int64_t> rank_log2phy(const Plan& plan, int64_t num_ranks, int64_t tp_size) {
    require_positive(num_ranks, "num_ranks");
    if (tp_size < 0) {
        throw_invalid("tp_size", "expected 0 (even spread) or a tensor-parallel size >= 1, got " +
                                     std::to_string(tp_size));
    }
    const int64_t L = plan.num_layers;
    const int64_t N = plan.num_experts;
    const int64_t P = plan.num_physical;
    const int64_t R = plan.max_replicas;
    const int64_t S = slots_per_rank(P, num_ranks);
    require_array_size("num_ranks", {num_ranks, L, N}, "per-rank routes [ranks, layers, experts]");
    std::vector<int64_t> routes(static_cast<size_t>(num_ranks * L * N), -1);
    std::vector<int64_t> holder_slot(static_cast<size_t>(num_ranks));
    std::vector<int64_t> ranks_served;
    std::vector<int64_t> candidates;
    for (int64_t l = 0; l < L; ++l) {
        for (int64_t e = 0; e < N; ++e) {
            const int64_t* replicas = plan.log2phy.data() + (l * N + e) * R;
            const int64_t count = plan.logcnt[static_cast<size_t>(l * N + e)];
            std::fill(holder_slot.begin(), holder_slot.end(), -1);
            ranks_served.assign(static_cast<size_t>(count), 0);
            for (int64_t k = 0; k < count; ++k) {
                const int64_t rank = replicas[k] / S;
                if (holder_slot[static_cast<size_t>(rank)] < 0) {
                    holder_slot[static_cast<size_t>(rank)] = replicas[k];
                    ++ranks_served[static_cast<size_t>(k)];
                }
            }
            if (tp_size > 0) {
                // Candidates: one per holding rank, ascending (holder_slot keeps the lowest).
                candidates.clear();
                for (int64_t slot : holder_slot) {
                    if (slot >= 0) {
                        candidates.push_back(slot);
                    }
                }
                const auto k = static_cast<int64_t>(candidates.size());
                for (int64_t rank = 0; rank < num_ranks; ++rank) {
                    const int64_t turn =
                        tp_size == 1 ? rank : rank % tp_size + rank / tp_size + e;
                    routes[static_cast<size_t>((rank * L + l) * N + e)] =
                        candidates[static_cast<size_t>(turn % k)];
                }
                continue;
            }
            for (int64_t rank = 0; rank < num_ranks; ++rank) {
                int64_t slot = holder_slot[static_cast<size_t>(rank)];
                if (slot < 0) {
                    // The least-served replica, lowest index on ties: an even deal.
                    const auto least =
                        std::min_element(ranks_served.begin(), ranks_served.end()) -
                        ranks_served.begin();
                    ++ranks_served[static_cast<size_t>(least)];
                    slot = replicas[least];
                }
                routes[static_cast<size_t>((rank * L + l) * N + e)] = slot;
            }
        }
    }
    return routes;
}

void expert_load_from_slot_load(const Plan& plan, const double* slot_load, int64_t rows,
                                double* out) {
    const auto L = static_cast<size_t>(plan.num_layers);
    const auto N = static_cast<size_t>(plan.num_experts);
    const auto P = static_cast<size_t>(plan.num_physical);
    std::fill(out, out + static_cast<size_t>(rows) * L * N, 0.0);
    for (size_t row = 0; row < static_cast<size_t>(rows) * L; ++row) {
        const int64_t* experts = plan.phy2log.data() + (row % L) * P;
        const double* slots = slot_load + row * P;
        double* expert_load = out + row * N;
        for (size_t p = 0; p < P; ++p) {
            expert_load[static_cast<size_t>(experts[p])] += slots[p];
        }
    }
}

void rank_loads(const Plan& plan, const double* load, int64_t rows, int64_t num_ranks,
                double* out) {
    slots_per_rank(plan.num_physical, num_ranks);  // throws unless the ranks split the slots
    const auto L = static_cast<size_t>(plan.num_layers);
    const auto N = static_cast<size_t>(plan.num_experts);
    const auto P = static_cast<size_t>(plan.num_physical);
    const auto D = static_cast<size_t>(num_ranks);
    for (size_t row = 0; row < static_cast<size_t>(rows) * L; ++row) {
        const size_t layer = row % L;
        policies::row_rank_loads(load + row * N, plan.logcnt.data() + layer * N,
                                 plan.phy2log.data() + layer * P, plan.num_physical, num_ranks,
                                 out + row * D);
    }
}

void layer_balance(const Plan& plan, const double* load, int64_t rows, int64_t num_ranks,
                   int64_t layer, double* out) {
    slots_per_rank(plan.num_physical, num_ranks);  // throws unless the ranks split the slots
    const auto L = static_cast<size_t>(plan.num_layers);
    const auto N = static_cast<size_t>(plan.num_experts);
    const auto P = static_cast<size_t>(plan.num_physical);
    const auto layer_idx = static_cast<size_t>(layer);
    std::vector<double> rank_load(static_cast<size_t>(num_ranks));
    for (size_t row = 0; row < static_cast<size_t>(rows); ++row) {
        policies::row_rank_loads(load + (row * L + layer_idx) * N,
                                 plan.logcnt.data() + layer_idx * N,
                                 plan.phy2log.data() + layer_idx * P, plan.num_physical,
                                 num_ranks, rank_load.data());
        const double mean = pairwise_sum(rank_load.data(), num_ranks) /
                            static_cast<double>(num_ranks);
        const double peak = *std::max_element(rank_load.begin(), rank_load.end());
        out[row * L + layer_idx] = 1.0 / (mean > 0.0 ? peak / mean : 1.0);
    }
}

std::array<int64_t, 3> placement_violations(const int64_t* current, const int64_t* next,
                                            int64_t num_ranks, int64_t num_slots) {
    std::array<int64_t, 3> first{-1, -1, -1};
    const int64_t num_physical = num_ranks * num_slots;
    // Rule 1: the smallest expert of `current` with no replica in `next`.
    std::vector<int64_t> kept;
    std::vector<int64_t> held;
    for (int64_t slot = 0; slot < num_physical; ++slot) {
        if (current[slot] >= 0) {
            held.push_back(current[slot]);
        }
        if (next[slot] >= 0) {
            kept.push_back(next[slot]);
        }
    }
    std::sort(held.begin(), held.end());
    std::sort(kept.begin(), kept.end());
    for (const int64_t expert : held) {
        if (!std::binary_search(kept.begin(), kept.end(), expert)) {
            first[0] = expert;
            break;
        }
    }
    // Rules 2 and 3, rank by rank: the copies of each new expert on the rank, in `next` and in
    // `current`.
    for (int64_t rank = 0; rank < num_ranks; ++rank) {
        const int64_t* now = current + rank * num_slots;
        const int64_t* proposed = next + rank * num_slots;
        bool twice = false;
        bool moved = false;
        for (int64_t s = 0; s < num_slots; ++s) {
            const int64_t expert = proposed[s];
            if (expert < 0) {
                continue;
            }
            const auto in_next = std::count(proposed, proposed + num_slots, expert);
            const auto in_current = std::count(now, now + num_slots, expert);
            twice = twice || (in_next > 1 && in_next > in_current);
            moved = moved || (in_current > 0 && expert != now[s]);
        }
        if (twice && first[1] < 0) {
            first[1] = rank;
        }
        if (moved && first[2] < 0) {
            first[2] = rank;
        }
    }
    return first;
}

}  // namespace eplb_native
