#include "eplb_native/flashlb/placement.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <queue>
#include <tuple>
#include <utility>

#include "eplb_native/error.h"

namespace eplb_native::flashlb {
namespace {

constexpr int64_t kRiskCandidates = 4;       // least loaded ranks whose risk LPT compares
constexpr int kTargetSearchSteps = 16;       // bisection steps of pack_to_target
constexpr double kRelativeTolerance = 1e-9;  // slack on "fits under the target"
constexpr double kBoundSlack = 1e-12;        // rounding slack on refine_swaps' rank bound

size_t idx(int64_t value) { return static_cast<size_t>(value); }

// The replicas of `counts` as (expert, per-replica weight), heaviest first, lowest id on ties;
// the replicas of one expert are adjacent. Experts with one replica keep their place in
// `by_weight`; only the replicated ones are sorted again, and the two runs are merged.
std::vector<std::pair<int64_t, double>> replicas_by_weight(const std::vector<double>& weight,
                                                           const std::vector<int64_t>& counts,
                                                           const std::vector<int64_t>& by_weight) {
    using Item = std::pair<int64_t, double>;
    const auto heavier = [](const Item& a, const Item& b) {
        return a.second > b.second || (a.second == b.second && a.first < b.first);
    };
    std::vector<Item> single;
    std::vector<Item> split;
    single.reserve(by_weight.size());
    int64_t total = 0;
    for (const int64_t e : by_weight) {
        const int64_t count = counts[idx(e)];
        (count == 1 ? single : split).emplace_back(e, weight[idx(e)] / static_cast<double>(count));
        total += count;
    }
    std::sort(split.begin(), split.end(), heavier);
    std::vector<Item> items;
    items.reserve(idx(total));
    auto a = split.begin();
    auto b = single.begin();
    while (a != split.end() || b != single.end()) {
        const bool take_split = b == single.end() || (a != split.end() && heavier(*a, *b));
        const Item item = take_split ? *a++ : *b++;
        for (int64_t c = 0; c < counts[idx(item.first)]; ++c) {
            items.push_back(item);
        }
    }
    return items;
}

bool rank_holds(const std::vector<int64_t>& phy2log, int64_t rank, int64_t num_slots,
                int64_t fill, int64_t expert) {
    for (int64_t s = 0; s < fill; ++s) {
        if (phy2log[idx(rank * num_slots + s)] == expert) {
            return true;
        }
    }
    return false;
}

// Incremental table of a partial placement: each rank's filled slots and load.
struct PartialPlacement {
    explicit PartialPlacement(const LayerShape& shape)
        : shape_(shape),
          phy2log(idx(shape.num_physical()), -1),
          fill(idx(shape.num_ranks), 0),
          load(idx(shape.num_ranks), 0.0),
          words_(idx((shape.num_ranks + 63) / 64)),
          holds(idx(shape.num_experts) * words_, 0) {}

    bool has(int64_t rank, int64_t expert) const {
        return (holds[word(rank, expert)] >> bit(rank) & 1U) != 0;
    }
    [[nodiscard]] size_t word(int64_t rank, int64_t expert) const {
        return idx(expert) * words_ + (idx(rank) >> 6U);
    }
    static uint64_t bit(int64_t rank) { return static_cast<uint64_t>(rank) & 63U; }
    bool eligible(int64_t rank, int64_t expert) const {
        return fill[idx(rank)] < shape_.num_slots && !has(rank, expert);
    }
    void put(int64_t rank, int64_t expert, double share) {
        holds[word(rank, expert)] |= uint64_t{1} << bit(rank);
        phy2log[idx(rank * shape_.num_slots + fill[idx(rank)])] = expert;
        ++fill[idx(rank)];
        load[idx(rank)] += share;
    }

    // No eligible rank for `expert`: moves some expert f from a rank r2 without `expert` to a
    // rank r with a free slot (which holds `expert` already, or it would be eligible) and
    // returns r2, whose freed slot then takes `expert`. Returns -1 if no such pair exists.
    int64_t make_room(int64_t expert, const std::vector<double>& share_of) {
        const int64_t num_slots = shape_.num_slots;
        for (int64_t r = 0; r < shape_.num_ranks; ++r) {
            if (fill[idx(r)] >= num_slots) {
                continue;
            }
            for (int64_t r2 = 0; r2 < shape_.num_ranks; ++r2) {
                if (r2 == r || has(r2, expert)) {
                    continue;
                }
                for (int64_t s = 0; s < fill[idx(r2)]; ++s) {
                    const int64_t moved = phy2log[idx(r2 * num_slots + s)];
                    if (has(r, moved)) {
                        continue;
                    }
                    put(r, moved, share_of[idx(moved)]);
                    // Close the gap on r2: its last filled slot moves into s.
                    const int64_t last = r2 * num_slots + fill[idx(r2)] - 1;
                    phy2log[idx(r2 * num_slots + s)] = phy2log[idx(last)];
                    phy2log[idx(last)] = -1;
                    --fill[idx(r2)];
                    load[idx(r2)] -= share_of[idx(moved)];
                    holds[word(r2, moved)] &= ~(uint64_t{1} << bit(r2));
                    return r2;
                }
            }
        }
        return -1;
    }

    LayerShape shape_;
    std::vector<int64_t> phy2log;
    std::vector<int64_t> fill;
    std::vector<double> load;
    size_t words_;                // 64-bit words per expert in `holds`
    std::vector<uint64_t> holds;  // [N, words_] bit r: rank r holds expert e
};

std::vector<double> shares_of(const std::vector<double>& weight,
                              const std::vector<int64_t>& counts) {
    std::vector<double> share(weight.size());
    for (size_t e = 0; e < weight.size(); ++e) {
        share[e] = weight[e] / static_cast<double>(counts[e]);
    }
    return share;
}

// Packs at target `target`; empty when it does not fit.
std::vector<int64_t> try_pack(const std::vector<double>& weight, const std::vector<int64_t>& order,
                              const LayerShape& shape, double target,
                              std::vector<int64_t>& counts_out) {
    PartialPlacement placement(shape);
    const int64_t num_ranks = shape.num_ranks;
    std::vector<int64_t> counts(weight.size(), 0);
    int64_t slots_left = shape.num_physical();
    const double limit = target * (1.0 + kRelativeTolerance);
    std::vector<int64_t> fitting;
    for (size_t i = 0; i < order.size(); ++i) {
        const int64_t expert = order[i];
        const double w = weight[idx(expert)];
        const auto experts_after = static_cast<int64_t>(order.size() - i - 1);
        int64_t first = 1;
        if (target > 0.0 && w > target) {
            first = static_cast<int64_t>(std::ceil(w / target * (1.0 - kRelativeTolerance)));
        }
        bool placed = false;
        for (int64_t k = std::max<int64_t>(first, 1); k <= num_ranks && !placed; ++k) {
            if (slots_left - k < experts_after) {
                break;
            }
            const double share = w / static_cast<double>(k);
            fitting.clear();
            for (int64_t r = 0; r < num_ranks; ++r) {
                if (placement.fill[idx(r)] < shape.num_slots &&
                    placement.load[idx(r)] + share <= limit) {
                    fitting.push_back(r);
                }
            }
            if (static_cast<int64_t>(fitting.size()) < k) {
                continue;
            }
            // Best fit: the fullest ranks that still fit, lowest index on ties.
            std::partial_sort(fitting.begin(), fitting.begin() + k, fitting.end(),
                              [&](int64_t a, int64_t b) {
                                  const double la = placement.load[idx(a)];
                                  const double lb = placement.load[idx(b)];
                                  return la > lb || (la == lb && a < b);
                              });
            for (int64_t c = 0; c < k; ++c) {
                placement.put(fitting[idx(c)], expert, share);
            }
            counts[idx(expert)] = k;
            slots_left -= k;
            placed = true;
        }
        if (!placed) {
            return {};
        }
    }
    counts_out = std::move(counts);
    return placement.phy2log;
}

// Fills the free slots (-1) of a packing: each takes one more replica of the expert, on its
// least loaded eligible rank, that leaves the smallest busiest rank (then the lightest rank).
void fill_spare(const std::vector<double>& weight, const LayerShape& shape,
                std::vector<int64_t>& counts, std::vector<int64_t>& phy2log) {
    const int64_t num_slots = shape.num_slots;
    const int64_t num_ranks = shape.num_ranks;
    const int64_t num_experts = shape.num_experts;
    std::vector<double> load(idx(num_ranks));
    std::vector<int64_t> free_slot(idx(num_ranks));
    std::vector<char> holds(idx(num_ranks * num_experts));
    for (;;) {
        std::fill(load.begin(), load.end(), 0.0);
        std::fill(free_slot.begin(), free_slot.end(), -1);
        std::fill(holds.begin(), holds.end(), 0);
        bool any_free = false;
        for (int64_t slot = 0; slot < shape.num_physical(); ++slot) {
            const int64_t e = phy2log[idx(slot)];
            const int64_t rank = slot / num_slots;
            if (e < 0) {
                any_free = true;
                if (free_slot[idx(rank)] < 0) {
                    free_slot[idx(rank)] = slot;
                }
            } else {
                load[idx(rank)] += weight[idx(e)] / static_cast<double>(counts[idx(e)]);
                holds[idx(rank * num_experts + e)] = 1;
            }
        }
        if (!any_free) {
            return;
        }
        int64_t best_expert = -1;
        int64_t best_rank = -1;
        double best_peak = std::numeric_limits<double>::infinity();
        double best_receiver = std::numeric_limits<double>::infinity();
        for (int64_t e = 0; e < num_experts; ++e) {
            if (counts[idx(e)] >= num_ranks) {
                continue;
            }
            const double old_share = weight[idx(e)] / static_cast<double>(counts[idx(e)]);
            const double new_share = weight[idx(e)] / static_cast<double>(counts[idx(e)] + 1);
            int64_t rank = -1;
            for (int64_t r = 0; r < num_ranks; ++r) {
                if (!holds[idx(r * num_experts + e)] && free_slot[idx(r)] >= 0 &&
                    (rank < 0 || load[idx(r)] < load[idx(rank)])) {
                    rank = r;
                }
            }
            if (rank < 0) {
                continue;
            }
            double peak = 0.0;
            for (int64_t r = 0; r < num_ranks; ++r) {
                const double after = load[idx(r)] -
                                     (holds[idx(r * num_experts + e)] ? old_share - new_share : 0.0) +
                                     (r == rank ? new_share : 0.0);
                peak = std::max(peak, after);
            }
            const double receiver = load[idx(rank)] + new_share;
            if (peak < best_peak || (peak == best_peak && receiver < best_receiver)) {
                best_peak = peak;
                best_receiver = receiver;
                best_expert = e;
                best_rank = rank;
            }
        }
        EPLB_CHECK(best_expert >= 0, "a free slot no expert can take");
        phy2log[idx(free_slot[idx(best_rank)])] = best_expert;
        ++counts[idx(best_expert)];
    }
}

}  // namespace

std::vector<int64_t> min_max_order(const std::vector<double>& weight,
                                   const std::vector<int64_t>& experts,
                                   const std::vector<int64_t>& counts, int64_t budget,
                                   int64_t max_count) {
    // Max-heap on (weight / count, -id), with each listed expert's count as it grows.
    struct Entry {
        double share;
        int64_t expert;
        int64_t count;
    };
    const auto lower = [](const Entry& a, const Entry& b) {
        return a.share < b.share || (a.share == b.share && a.expert > b.expert);
    };
    std::vector<Entry> storage;
    storage.reserve(experts.size());
    for (const int64_t e : experts) {
        if (counts[idx(e)] < max_count) {
            storage.push_back({weight[idx(e)] / static_cast<double>(counts[idx(e)]), e,
                               counts[idx(e)]});
        }
    }
    // Built in O(n); the pops follow the total order above whatever the heap's layout.
    std::priority_queue<Entry, std::vector<Entry>, decltype(lower)> heap(lower, std::move(storage));
    std::vector<int64_t> order;
    order.reserve(idx(std::max<int64_t>(0, budget)));
    for (int64_t i = 0; i < budget && !heap.empty(); ++i) {
        Entry top = heap.top();
        heap.pop();
        order.push_back(top.expert);
        if (++top.count < max_count) {
            top.share = weight[idx(top.expert)] / static_cast<double>(top.count);
            heap.push(top);
        }
    }
    return order;
}

void allot_min_max(const std::vector<double>& weight, const std::vector<int64_t>& experts,
                   int64_t budget, int64_t max_count, std::vector<int64_t>& counts) {
    for (const int64_t e : min_max_order(weight, experts, counts, budget, max_count)) {
        ++counts[idx(e)];
    }
}

std::vector<int64_t> place_lpt(const std::vector<double>& weight,
                               const std::vector<int64_t>& by_weight,
                               const std::vector<int64_t>& counts, const LayerShape& shape,
                               const EpisodeStats* risk_stats, double z_score) {
    PartialPlacement placement(shape);
    const std::vector<double> share_of = shares_of(weight, counts);
    const int64_t num_ranks = shape.num_ranks;
    const int64_t num_episodes = risk_stats ? risk_stats->num_episodes : 0;
    // Per-rank summed episode loads (risk mode only), rank-major [D, K].
    std::vector<double> episode_load(idx(num_ranks * num_episodes), 0.0);
    std::vector<int64_t> eligible;  // positions in open_ranks
    const auto add_episode_load = [&](int64_t rank, int64_t expert) {
        const double scale = 1.0 / static_cast<double>(counts[idx(expert)]);
        const double* add = risk_stats->loads.data() + expert * num_episodes;
        double* have = episode_load.data() + rank * num_episodes;
        for (int64_t k = 0; k < num_episodes; ++k) {
            have[k] += add[k] * scale;
        }
    };
    const auto rebuild_episode_loads = [&]() {
        std::fill(episode_load.begin(), episode_load.end(), 0.0);
        for (int64_t slot = 0; slot < shape.num_physical(); ++slot) {
            if (placement.phy2log[idx(slot)] >= 0) {
                add_episode_load(slot / shape.num_slots, placement.phy2log[idx(slot)]);
            }
        }
    };
    // Ranks with a free slot, by (load, index) ascending; kept sorted as loads grow.
    std::vector<int64_t> open_ranks(idx(num_ranks));
    std::iota(open_ranks.begin(), open_ranks.end(), 0);
    const auto before = [&](int64_t a, int64_t b) {
        const double la = placement.load[idx(a)];
        const double lb = placement.load[idx(b)];
        return la < lb || (la == lb && a < b);
    };
    const auto rebuild_open_ranks = [&]() {
        open_ranks.clear();
        for (int64_t r = 0; r < num_ranks; ++r) {
            if (placement.fill[idx(r)] < shape.num_slots) {
                open_ranks.push_back(r);
            }
        }
        std::sort(open_ranks.begin(), open_ranks.end(), before);
    };
    // Rank open_ranks[pos] just grew: it moves right past the ranks now before it, or leaves
    // the list when full.
    const auto reorder = [&](size_t pos) {
        const auto at = open_ranks.begin() + static_cast<std::ptrdiff_t>(pos);
        if (placement.fill[idx(*at)] >= shape.num_slots) {
            open_ranks.erase(at);
            return;
        }
        const int64_t rank = *at;
        const auto dest = std::upper_bound(at + 1, open_ranks.end(), rank, before);
        std::move(at + 1, dest, at);
        *(dest - 1) = rank;
    };
    // Risk after adding `expert` to each of the ranks open_ranks[eligible[c]], into risk[c]. All
    // kRiskCandidates sums run side by side (unused ones repeat the first rank), each in
    // episode order, so the arithmetic per rank is that of a lone loop.
    std::vector<double> risk(idx(kRiskCandidates));
    const auto risks_after = [&](const std::vector<int64_t>& positions, int64_t expert) {
        const double* add = risk_stats->loads.data() + expert * num_episodes;
        const double scale = 1.0 / static_cast<double>(counts[idx(expert)]);
        const double* have[kRiskCandidates];
        for (size_t c = 0; c < idx(kRiskCandidates); ++c) {
            const int64_t rank = open_ranks[idx(positions[c < positions.size() ? c : 0])];
            have[c] = episode_load.data() + rank * num_episodes;
        }
        double sum[kRiskCandidates] = {};
        double squares[kRiskCandidates] = {};
        for (int64_t k = 0; k < num_episodes; ++k) {
            const double extra = add[k] * scale;
            for (size_t c = 0; c < idx(kRiskCandidates); ++c) {
                const double value = have[c][k] + extra;
                sum[c] += value;
                squares[c] += value * value;
            }
        }
        for (size_t c = 0; c < idx(kRiskCandidates); ++c) {
            const double mean = sum[c] / static_cast<double>(num_episodes);
            const double variance =
                std::max(0.0, squares[c] / static_cast<double>(num_episodes) - mean * mean);
            risk[c] = mean + z_score * std::sqrt(variance);
        }
    };
    const int64_t max_eligible = risk_stats != nullptr && num_episodes > 1 ? kRiskCandidates : 1;
    for (const auto& [expert, share] : replicas_by_weight(weight, counts, by_weight)) {
        // The least loaded eligible ranks (lowest index on ties), at most kRiskCandidates.
        // (For the risk objective: the least loaded few, compared by risk.)
        eligible.clear();
        for (size_t i = 0; i < open_ranks.size() &&
                           static_cast<int64_t>(eligible.size()) < max_eligible;
             ++i) {
            if (!placement.has(open_ranks[i], expert)) {
                eligible.push_back(static_cast<int64_t>(i));
            }
        }
        int64_t rank = -1;
        size_t pos = 0;
        if (eligible.empty()) {
            rank = placement.make_room(expert, share_of);
            EPLB_CHECK(rank >= 0, "no rank can take a replica of expert " << expert);
        } else {
            pos = idx(eligible.front());
            if (max_eligible > 1) {
                risks_after(eligible, expert);
                double best = std::numeric_limits<double>::infinity();
                for (size_t c = 0; c < eligible.size(); ++c) {
                    if (risk[c] < best) {
                        best = risk[c];
                        pos = idx(eligible[c]);
                    }
                }
            }
            rank = open_ranks[pos];
        }
        placement.put(rank, expert, share);
        if (eligible.empty()) {
            rebuild_open_ranks();  // make_room changed two ranks
        } else {
            reorder(pos);
        }
        if (risk_stats != nullptr && num_episodes > 1) {
            if (eligible.empty()) {
                rebuild_episode_loads();  // make_room moved an expert between ranks
            } else {
                add_episode_load(rank, expert);
            }
        }
    }
    return placement.phy2log;
}

std::vector<int64_t> pack_to_target(const std::vector<double>& weight,
                                    const std::vector<int64_t>& order, const LayerShape& shape,
                                    double lower, double upper) {
    std::vector<int64_t> counts;
    std::vector<int64_t> best_counts;
    std::vector<int64_t> best = try_pack(weight, order, shape, upper, best_counts);
    if (best.empty()) {
        return best;
    }
    double lo = lower;
    double hi = upper;
    for (int step = 0; step < kTargetSearchSteps && hi - lo > kRelativeTolerance * hi; ++step) {
        const double mid = 0.5 * (lo + hi);
        std::vector<int64_t> packed = try_pack(weight, order, shape, mid, counts);
        if (packed.empty()) {
            lo = mid;
        } else {
            hi = mid;
            best = std::move(packed);
            best_counts = counts;
        }
    }
    fill_spare(weight, shape, best_counts, best);
    return best;
}

std::vector<int64_t> counts_of(const std::vector<int64_t>& phy2log, int64_t num_experts) {
    std::vector<int64_t> counts(idx(num_experts), 0);
    for (const int64_t e : phy2log) {
        ++counts[idx(e)];
    }
    return counts;
}

std::vector<double> rank_weights(const std::vector<double>& weight,
                                 const std::vector<int64_t>& counts,
                                 const std::vector<int64_t>& phy2log, const LayerShape& shape) {
    std::vector<double> load(idx(shape.num_ranks), 0.0);
    for (size_t slot = 0; slot < phy2log.size(); ++slot) {
        const auto e = idx(phy2log[slot]);
        load[slot / idx(shape.num_slots)] += weight[e] / static_cast<double>(counts[e]);
    }
    return load;
}

void refine_swaps(const std::vector<double>& weight, const std::vector<int64_t>& counts,
                  const LayerShape& shape, int64_t max_iterations, std::vector<int64_t>& phy2log) {
    const int64_t num_slots = shape.num_slots;
    const std::vector<double> share = shares_of(weight, counts);
    std::vector<double> load = rank_weights(weight, counts, phy2log, shape);
    for (int64_t iteration = 0; iteration < max_iterations; ++iteration) {
        const auto busiest = static_cast<int64_t>(
            std::max_element(load.begin(), load.end()) - load.begin());
        const auto lightest = static_cast<int64_t>(
            std::min_element(load.begin(), load.end()) - load.begin());
        const double peak = load[idx(busiest)];
        // The swap leaving the lower peak on the two ranks wins; ties go to the lowest
        // (rank, busiest-rank slot, rank slot). The lightest rank is tried first, so that the
        // bound below skips most other ranks.
        double best_peak = peak * (1.0 - kRelativeTolerance);
        int64_t best_from = -1;
        int64_t best_to = -1;
        const auto try_rank = [&](int64_t r) {
            // Any swap leaves one of the two ranks at or above half their summed load (the
            // slack covers rounding): a rank that cannot tie the best so far is skipped.
            if (r == busiest || load[idx(r)] >= best_peak ||
                0.5 * (peak + load[idx(r)]) * (1.0 - kBoundSlack) > best_peak) {
                return;
            }
            for (int64_t a = busiest * num_slots; a < (busiest + 1) * num_slots; ++a) {
                const int64_t out = phy2log[idx(a)];
                for (int64_t b = r * num_slots; b < (r + 1) * num_slots; ++b) {
                    const int64_t in = phy2log[idx(b)];
                    const double delta = share[idx(out)] - share[idx(in)];
                    if (delta <= 0.0) {
                        continue;
                    }
                    const double new_peak = std::max(peak - delta, load[idx(r)] + delta);
                    const bool better =
                        new_peak < best_peak ||
                        (new_peak == best_peak && best_from >= 0 &&
                         std::make_tuple(r, a, b) <
                             std::make_tuple(best_to / num_slots, best_from, best_to));
                    if (!better || rank_holds(phy2log, r, num_slots, num_slots, out) ||
                        rank_holds(phy2log, busiest, num_slots, num_slots, in)) {
                        continue;
                    }
                    best_peak = new_peak;
                    best_from = a;
                    best_to = b;
                }
            }
        };
        try_rank(lightest);
        for (int64_t r = 0; r < shape.num_ranks; ++r) {
            if (r != lightest) {
                try_rank(r);
            }
        }
        if (best_from < 0) {
            return;
        }
        const double delta = share[idx(phy2log[idx(best_from)])] - share[idx(phy2log[idx(best_to)])];
        std::swap(phy2log[idx(best_from)], phy2log[idx(best_to)]);
        load[idx(busiest)] -= delta;
        load[idx(best_to / num_slots)] += delta;
    }
}

}  // namespace eplb_native::flashlb
