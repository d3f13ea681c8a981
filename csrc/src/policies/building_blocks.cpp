#include "eplb_native/policies/building_blocks.h"

#include <algorithm>
#include <limits>
#include <numeric>
#include <queue>
#include <string>
#include <tuple>

#include "eplb_native/error.h"

namespace eplb_native::policies {

namespace {

template <typename T>
std::vector<int64_t> descending_order(const T* values, int64_t n) {
    std::vector<int64_t> order(static_cast<size_t>(n));
    std::iota(order.begin(), order.end(), int64_t{0});
    std::stable_sort(order.begin(), order.end(),
                     [values](int64_t a, int64_t b) { return values[a] > values[b]; });
    return order;
}

}  // namespace

void row_rank_loads(const double* weight, const int64_t* counts, const int64_t* phy2log,
                    int64_t num_physical, int64_t num_ranks, double* out) {
    const int64_t num_slots = num_physical / num_ranks;
    // kGroup ranks at once, slot by slot: their sums are independent chains of additions (each
    // rank still adds its slots in order from 0.0).
    constexpr int64_t kGroup = 8;
    for (int64_t first = 0; first < num_ranks; first += kGroup) {
        const int64_t width = std::min(kGroup, num_ranks - first);
        double sum[kGroup] = {};
        for (int64_t s = 0; s < num_slots; ++s) {
            for (int64_t j = 0; j < width; ++j) {
                const int64_t e = phy2log[(first + j) * num_slots + s];
                // x / 1 == x: most experts have one replica and skip the division.
                sum[j] += counts[e] == 1 ? weight[e] : weight[e] / static_cast<double>(counts[e]);
            }
        }
        std::copy(sum, sum + width, out + first);
    }
}

std::vector<double> row_rank_loads(const std::vector<double>& weight,
                                   const std::vector<int64_t>& counts,
                                   const std::vector<int64_t>& phy2log, int64_t num_ranks) {
    std::vector<double> load(idx(num_ranks));
    row_rank_loads(weight.data(), counts.data(), phy2log.data(),
                   static_cast<int64_t>(phy2log.size()), num_ranks, load.data());
    return load;
}

int64_t weight_copies(const int64_t* current, const int64_t* proposed, int64_t num_physical,
                      int64_t num_ranks) {
    const int64_t num_slots = num_physical / num_ranks;
    int64_t copies = 0;
    for (int64_t slot = 0; slot < num_physical; ++slot) {
        const int64_t expert = proposed[slot];
        copies += expert < 0 || rank_holds(current, slot / num_slots, num_slots, expert) ? 0 : 1;
    }
    return copies;
}

namespace {

// min_max_order on weights of type T (float: DeepSeek's float32 arithmetic).
template <typename T>
std::vector<int64_t> min_max_sequence(const T* weight, const std::vector<int64_t>& experts,
                                      const std::vector<int64_t>& counts, int64_t budget,
                                      int64_t max_count) {
    // Max-heap on (weight / count, -id), with each listed expert's count as it grows.
    struct Entry {
        T share;
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
            storage.push_back({weight[e] / static_cast<T>(counts[idx(e)]), e, counts[idx(e)]});
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
            top.share = weight[top.expert] / static_cast<T>(top.count);
            heap.push(top);
        }
    }
    return order;
}

}  // namespace

std::vector<int64_t> min_max_order(const std::vector<double>& weight,
                                   const std::vector<int64_t>& experts,
                                   const std::vector<int64_t>& counts, int64_t budget,
                                   int64_t max_count) {
    return min_max_sequence(weight.data(), experts, counts, budget, max_count);
}

void allot_min_max(const std::vector<double>& weight, const std::vector<int64_t>& experts,
                   int64_t budget, int64_t max_count, std::vector<int64_t>& counts) {
    for (const int64_t e : min_max_order(weight, experts, counts, budget, max_count)) {
        ++counts[idx(e)];
    }
}

double max_load_lower_bound(const std::vector<double>& weight, int64_t num_physical,
                            int64_t num_ranks) {
    const auto num_experts = static_cast<int64_t>(weight.size());
    std::vector<int64_t> counts(idx(num_experts), 1);
    std::vector<int64_t> all(idx(num_experts));
    std::iota(all.begin(), all.end(), 0);
    allot_min_max(weight, all, num_physical - num_experts, num_ranks, counts);
    double total = 0.0;
    double replica_bound = 0.0;
    for (size_t e = 0; e < weight.size(); ++e) {
        total += weight[e];
        replica_bound = std::max(replica_bound, weight[e] / static_cast<double>(counts[e]));
    }
    return std::max(total / static_cast<double>(num_ranks), replica_bound);
}

std::vector<int64_t> order_descending(const float* values, int64_t n) {
    return descending_order(values, n);
}

std::vector<int64_t> order_descending(const double* values, int64_t n) {
    return descending_order(values, n);
}

Replication replicate_min_max(const float* weight, int64_t num_experts, int64_t num_physical,
                              int64_t max_count) {
    EPLB_CHECK(num_physical >= num_experts && num_experts > 0, "bad replication shape");
    EPLB_CHECK(max_count >= 1 && (num_physical + num_experts - 1) / num_experts <= max_count,
               "more replicas than the cap allows");
    Replication out;
    out.phy2log.resize(idx(num_physical));
    out.logcnt.assign(idx(num_experts), 1);
    std::iota(out.phy2log.begin(), out.phy2log.begin() + num_experts, int64_t{0});
    const std::vector<int64_t> all(out.phy2log.begin(), out.phy2log.begin() + num_experts);
    // The heap's (largest ratio, lowest id) is torch.max's first maximum.
    const std::vector<int64_t> extra =
        min_max_sequence(weight, all, out.logcnt, num_physical - num_experts, max_count);
    for (int64_t slot = num_experts; slot < num_physical; ++slot) {
        const int64_t best = extra[idx(slot - num_experts)];
        out.phy2log[idx(slot)] = best;
        ++out.logcnt[idx(best)];
    }
    return out;
}

Packing balanced_packing(const float* weight, int64_t num_items, int64_t num_packs) {
    EPLB_CHECK(num_packs > 0 && num_items % num_packs == 0, "items do not split over packs");
    const int64_t per_pack = num_items / num_packs;
    Packing out;
    out.pack_index.assign(static_cast<size_t>(num_items), 0);
    out.rank_in_pack.assign(static_cast<size_t>(num_items), 0);
    if (per_pack == 1) {
        std::iota(out.pack_index.begin(), out.pack_index.end(), int64_t{0});
        return out;
    }
    std::vector<float> pack_weight(static_cast<size_t>(num_packs), 0.0f);
    std::vector<int64_t> pack_items(static_cast<size_t>(num_packs), 0);
    for (int64_t item : order_descending(weight, num_items)) {
        int64_t pack = -1;
        for (int64_t p = 0; p < num_packs; ++p) {
            const auto pi = static_cast<size_t>(p);
            if (pack_items[pi] < per_pack &&
                (pack < 0 || pack_weight[pi] < pack_weight[static_cast<size_t>(pack)])) {
                pack = p;
            }
        }
        const auto pk = static_cast<size_t>(pack);
        out.pack_index[static_cast<size_t>(item)] = pack;
        out.rank_in_pack[static_cast<size_t>(item)] = pack_items[pk];
        pack_weight[pk] += weight[item];
        ++pack_items[pk];
    }
    return out;
}

Packing balanced_packing_distinct(const float* weight, const int64_t* label, int64_t num_items,
                                  int64_t num_packs) {
    EPLB_CHECK(num_packs > 0 && num_items % num_packs == 0, "items do not split over packs");
    const int64_t per_pack = num_items / num_packs;
    if (per_pack == 1) {
        return balanced_packing(weight, num_items, num_packs);
    }
    Packing out;
    out.pack_index.assign(static_cast<size_t>(num_items), 0);
    out.rank_in_pack.assign(static_cast<size_t>(num_items), 0);
    std::vector<float> pack_weight(static_cast<size_t>(num_packs), 0.0f);
    std::vector<int64_t> size(static_cast<size_t>(num_packs), 0);
    std::vector<int64_t> members(static_cast<size_t>(num_items));  // [pack, position] -> item
    const int64_t num_labels = 1 + *std::max_element(label, label + num_items);
    std::vector<char> held(static_cast<size_t>(num_labels * num_packs), 0);  // [label, pack]
    const auto at = [](int64_t index) { return static_cast<size_t>(index); };
    const auto holds = [&](int64_t pack, int64_t wanted) {
        return held[at(wanted * num_packs + pack)] != 0;
    };
    const auto put = [&](int64_t item, int64_t pack, int64_t position) {
        members[at(pack * per_pack + position)] = item;
        size[at(pack)] = std::max(size[at(pack)], position + 1);
        out.pack_index[at(item)] = pack;
        out.rank_in_pack[at(item)] = position;
        pack_weight[at(pack)] += weight[item];
        held[at(label[item] * num_packs + pack)] = 1;
    };
    for (int64_t item : order_descending(weight, num_items)) {
        int64_t pack = -1;
        int64_t lightest_open = -1;
        for (int64_t p = 0; p < num_packs; ++p) {
            if (size[at(p)] == per_pack) {
                continue;
            }
            if (lightest_open < 0 || pack_weight[at(p)] < pack_weight[at(lightest_open)]) {
                lightest_open = p;
            }
            if (!holds(p, label[item]) && (pack < 0 || pack_weight[at(p)] < pack_weight[at(pack)])) {
                pack = p;
            }
        }
        if (pack >= 0) {
            put(item, pack, size[at(pack)]);
            continue;
        }
        // Every pack with room holds this label: swap through the lightest open pack q.
        const int64_t q = lightest_open;
        int64_t best_pack = -1;
        int64_t best_position = -1;
        float best_peak = 0.0f;
        for (int64_t p = 0; p < num_packs; ++p) {
            if (p == q || holds(p, label[item])) {
                continue;
            }
            for (int64_t k = 0; k < size[at(p)]; ++k) {
                const int64_t y = members[at(p * per_pack + k)];
                if (holds(q, label[y])) {
                    continue;
                }
                const float peak = std::max(pack_weight[at(p)] - weight[y] + weight[item],
                                            pack_weight[at(q)] + weight[y]);
                if (best_pack < 0 || peak < best_peak) {
                    best_pack = p;
                    best_position = k;
                    best_peak = peak;
                }
            }
        }
        EPLB_CHECK(best_pack >= 0, "a label occurs more often than there are packs");
        const int64_t moved = members[at(best_pack * per_pack + best_position)];
        pack_weight[at(best_pack)] -= weight[moved];
        held[at(label[moved] * num_packs + best_pack)] = 0;  // a pack holds each label once
        put(moved, q, size[at(q)]);
        put(item, best_pack, best_position);
    }
    return out;
}

namespace {

constexpr double kBoundSlack = 1e-12;  // rounding slack on best_busiest_swap's rank bound

}  // namespace

bool rank_holds(const int64_t* row, int64_t rank, int64_t num_slots, int64_t expert) {
    const int64_t* begin = row + rank * num_slots;
    return std::find(begin, begin + num_slots, expert) != begin + num_slots;
}

Swap best_busiest_swap(const std::vector<int64_t>& row, const std::vector<double>& share,
                       const std::vector<double>& rank_load, int64_t copies,
                       const SwapRules& rules) {
    const auto num_ranks = static_cast<int64_t>(rank_load.size());
    const int64_t num_slots = static_cast<int64_t>(row.size()) / num_ranks;
    const auto busiest = static_cast<int64_t>(
        std::max_element(rank_load.begin(), rank_load.end()) - rank_load.begin());
    const auto lightest = static_cast<int64_t>(
        std::min_element(rank_load.begin(), rank_load.end()) - rank_load.begin());
    const double peak = rank_load[idx(busiest)];
    const int64_t* current = rules.current;
    double best_peak = peak * (1.0 - rules.min_gain);
    Swap best;
    const auto tie_key = [&](int64_t rank, int64_t a, int64_t b) {
        return rules.rank_first_ties ? std::make_tuple(rank, a, b) : std::make_tuple(a, b, int64_t{0});
    };
    const auto try_rank = [&](int64_t r) {
        const double load = rank_load[idx(r)];
        // Any swap leaves one of the two ranks at or above half their summed load (the slack
        // covers rounding): a rank that cannot tie the best so far is skipped.
        if (r == busiest || load >= best_peak ||
            0.5 * (peak + load) * (1.0 - kBoundSlack) > best_peak) {
            return;
        }
        for (int64_t a = busiest * num_slots; a < (busiest + 1) * num_slots; ++a) {
            const int64_t out = row[idx(a)];
            for (int64_t b = r * num_slots; b < (r + 1) * num_slots; ++b) {
                const int64_t in = row[idx(b)];
                const double delta = share[idx(out)] - share[idx(in)];
                if (delta <= 0.0) {
                    continue;
                }
                const double new_peak = std::max(peak - delta, load + delta);
                const bool better = new_peak < best_peak ||
                                    (new_peak == best_peak && best.from >= 0 &&
                                     tie_key(r, a, b) < tie_key(best.to / num_slots, best.from,
                                                                best.to));
                if (!better || rank_holds(row.data(), r, num_slots, out) ||
                    rank_holds(row.data(), busiest, num_slots, in)) {
                    continue;
                }
                int64_t after = copies;
                if (current != nullptr) {
                    // A slot is a copy when its expert was not on its rank in current.
                    after += !rank_holds(current, busiest, num_slots, in) -
                             !rank_holds(current, busiest, num_slots, out) +
                             !rank_holds(current, r, num_slots, out) -
                             !rank_holds(current, r, num_slots, in);
                    if (after > rules.max_copies) {
                        continue;
                    }
                }
                best_peak = new_peak;
                best = Swap{a, b, after};
            }
        }
    };
    // The lightest rank first, so that the bound above skips most other ranks.
    try_rank(lightest);
    for (int64_t r = 0; r < num_ranks; ++r) {
        if (r != lightest) {
            try_rank(r);
        }
    }
    return best;
}

void apply_swap(const Swap& swap, const std::vector<double>& share, std::vector<int64_t>& row,
                std::vector<double>& rank_load) {
    const int64_t num_slots = static_cast<int64_t>(row.size() / rank_load.size());
    const double delta = share[idx(row[idx(swap.from)])] - share[idx(row[idx(swap.to)])];
    std::swap(row[idx(swap.from)], row[idx(swap.to)]);
    rank_load[idx(swap.from / num_slots)] -= delta;
    rank_load[idx(swap.to / num_slots)] += delta;
}

int64_t swap_off_busiest(const std::vector<double>& share, const SwapRules& rules,
                         int64_t max_swaps, int64_t copies, std::vector<int64_t>& row,
                         std::vector<double>& rank_load) {
    for (int64_t done = 0; done < max_swaps; ++done) {
        const Swap swap = best_busiest_swap(row, share, rank_load, copies, rules);
        if (swap.from < 0) {
            break;
        }
        apply_swap(swap, share, row, rank_load);
        copies = swap.copies;
    }
    return copies;
}

std::vector<int64_t> hungarian_min_cost(const std::vector<double>& cost, int64_t n) {
    // Shortest augmenting paths with row/column potentials; 1-based with a virtual column 0.
    const double inf = std::numeric_limits<double>::infinity();
    const auto at = [](int64_t i) { return static_cast<size_t>(i); };
    std::vector<double> row_pot(at(n + 1), 0.0);
    std::vector<double> col_pot(at(n + 1), 0.0);
    std::vector<int64_t> col_match(at(n + 1), 0);  // row matched to each column
    std::vector<int64_t> way(at(n + 1), 0);
    // Feasible start: each row's potential is its smallest cost, and a row whose first
    // smallest-cost column is still free takes it; only the other rows need augmenting paths
    // (with a proposal close to the table in force, few do: near O(n^2) instead of O(n^3)).
    std::vector<char> matched(at(n + 1), 0);
    for (int64_t row = 1; row <= n; ++row) {
        const double* costs = cost.data() + (row - 1) * n;
        const int64_t best = std::min_element(costs, costs + n) - costs;
        row_pot[at(row)] = costs[best];
        for (int64_t col = best + 1; col <= n; ++col) {
            if (costs[col - 1] == costs[best] && col_match[at(col)] == 0) {
                col_match[at(col)] = row;
                matched[at(row)] = 1;
                break;
            }
        }
    }
    // Per augmenting path, the columns not visited yet in increasing order (the first column
    // of least slack wins ties, as in a scan of all columns) and the visited ones: each step
    // touches every column once, but only the unvisited ones are compared.
    std::vector<int64_t> unvisited;
    std::vector<int64_t> visited;
    std::vector<double> min_slack(at(n + 1));
    for (int64_t row = 1; row <= n; ++row) {
        if (matched[at(row)]) {
            continue;
        }
        col_match[0] = row;
        int64_t col0 = 0;
        unvisited.resize(at(n));
        std::iota(unvisited.begin(), unvisited.end(), int64_t{1});
        visited.assign(1, 0);
        std::fill(min_slack.begin(), min_slack.end(), inf);
        do {
            const int64_t row0 = col_match[at(col0)];
            const double* costs = cost.data() + (row0 - 1) * n;  // row row0, column col at col - 1
            const double pot = row_pot[at(row0)];
            double delta = inf;
            size_t pos1 = 0;
            for (size_t pos = 0; pos < unvisited.size(); ++pos) {
                const int64_t col = unvisited[pos];
                const double reduced = costs[col - 1] - pot - col_pot[at(col)];
                if (reduced < min_slack[at(col)]) {
                    min_slack[at(col)] = reduced;
                    way[at(col)] = col0;
                }
                if (min_slack[at(col)] < delta) {
                    delta = min_slack[at(col)];
                    pos1 = pos;
                }
            }
            for (const int64_t col : visited) {
                row_pot[at(col_match[at(col)])] += delta;
                col_pot[at(col)] -= delta;
            }
            for (const int64_t col : unvisited) {
                min_slack[at(col)] -= delta;
            }
            col0 = unvisited[pos1];
            unvisited.erase(unvisited.begin() + static_cast<std::ptrdiff_t>(pos1));
            visited.push_back(col0);
        } while (col_match[at(col0)] != 0);
        do {
            const int64_t col1 = way[at(col0)];
            col_match[at(col0)] = col_match[at(col1)];
            col0 = col1;
        } while (col0 != 0);
    }
    std::vector<int64_t> assignment(at(n), -1);
    for (int64_t col = 1; col <= n; ++col) {
        assignment[at(col_match[at(col)] - 1)] = col - 1;
    }
    return assignment;
}

namespace {

// Replicas of each expert on each rank of a row [D * S]: counts[r * num_ids + e]; -1 (an empty
// slot) is not counted.
std::vector<int32_t> rank_counts(const int64_t* row, int64_t num_ranks, int64_t num_slots,
                                 int64_t num_ids) {
    std::vector<int32_t> counts(static_cast<size_t>(num_ranks * num_ids), 0);
    for (int64_t p = 0; p < num_ranks * num_slots; ++p) {
        if (row[p] >= 0) {
            ++counts[static_cast<size_t>((p / num_slots) * num_ids + row[p])];
        }
    }
    return counts;
}

// Writes `row` (one rank's S experts) into `out` (that rank's S slots): experts found in `old`
// keep their slot there, the rest fill the free slots in order.
void keep_rank_slots(const int64_t* row, const int64_t* old, int64_t num_slots, int64_t* out,
                std::vector<char>& used) {
    std::fill(used.begin(), used.end(), 0);  // used[a]: row[a] already placed
    std::fill(out, out + num_slots, int64_t{-1});
    for (int64_t s = 0; s < num_slots; ++s) {
        for (int64_t a = 0; a < num_slots; ++a) {
            if (!used[static_cast<size_t>(a)] && row[a] == old[s]) {
                used[static_cast<size_t>(a)] = 1;
                out[s] = old[s];
                break;
            }
        }
    }
    int64_t s = 0;
    for (int64_t a = 0; a < num_slots; ++a) {
        if (used[static_cast<size_t>(a)]) {
            continue;
        }
        while (out[s] >= 0) {
            ++s;
        }
        out[s] = row[a];
    }
}

}  // namespace

std::vector<int64_t> keep_slots(const std::vector<int64_t>& proposed, const int64_t* current,
                                int64_t num_ranks) {
    const auto num_physical = static_cast<int64_t>(proposed.size());
    EPLB_CHECK(num_ranks > 0 && num_physical % num_ranks == 0, "slots do not split over ranks");
    const int64_t num_slots = num_physical / num_ranks;
    std::vector<char> used(static_cast<size_t>(num_slots), 0);
    std::vector<int64_t> kept(proposed.size(), -1);
    for (int64_t r = 0; r < num_ranks; ++r) {
        keep_rank_slots(proposed.data() + r * num_slots, current + r * num_slots, num_slots,
                        kept.data() + r * num_slots, used);
    }
    return kept;
}

std::vector<int64_t> align_to_current(const std::vector<int64_t>& proposed, const int64_t* current,
                                      int64_t num_ranks, int64_t num_nodes) {
    const auto num_physical = static_cast<int64_t>(proposed.size());
    EPLB_CHECK(num_ranks > 0 && num_physical % num_ranks == 0 && num_nodes > 0 &&
                   num_ranks % num_nodes == 0,
               "alignment shape");
    const int64_t num_slots = num_physical / num_ranks;
    const int64_t per_node = num_ranks / num_nodes;
    std::vector<char> used(static_cast<size_t>(num_slots), 0);
    const int64_t num_ids =
        1 + std::max(*std::max_element(proposed.begin(), proposed.end()),
                     *std::max_element(current, current + num_physical));
    const std::vector<int32_t> new_counts =
        rank_counts(proposed.data(), num_ranks, num_slots, num_ids);
    const std::vector<int32_t> old_counts = rank_counts(current, num_ranks, num_slots, num_ids);
    // Rank costs: fewer shared experts (multiset overlap) cost more; a rank keeping its label
    // breaks ties (its bonus summed over a block stays below one shared expert).
    const auto rank_cost = [&](int64_t r_new, int64_t r_old) {
        const int64_t* row = proposed.data() + r_new * num_slots;
        int64_t shared = 0;
        for (int64_t s = 0; s < num_slots; ++s) {
            const int32_t mine = new_counts[static_cast<size_t>(r_new * num_ids + row[s])];
            const int32_t theirs = old_counts[static_cast<size_t>(r_old * num_ids + row[s])];
            // min(mine, theirs) per expert, added at its first slot on the rank.
            if (mine == 1 || std::find(row, row + s, row[s]) == row + s) {
                shared += std::min(mine, theirs);
            }
        }
        return -(static_cast<double>(shared) * static_cast<double>(per_node + 1) +
                 (r_new == r_old ? 1.0 : 0.0));
    };
    // For each (new block, old block): the best rank matching inside and its total cost.
    std::vector<std::vector<int64_t>> inner(static_cast<size_t>(num_nodes * num_nodes));
    std::vector<double> node_cost(static_cast<size_t>(num_nodes * num_nodes));
    std::vector<double> cost(static_cast<size_t>(per_node * per_node));
    for (int64_t a = 0; a < num_nodes; ++a) {
        for (int64_t b = 0; b < num_nodes; ++b) {
            for (int64_t i = 0; i < per_node; ++i) {
                for (int64_t j = 0; j < per_node; ++j) {
                    cost[static_cast<size_t>(i * per_node + j)] =
                        rank_cost(a * per_node + i, b * per_node + j);
                }
            }
            auto& match = inner[static_cast<size_t>(a * num_nodes + b)];
            match = hungarian_min_cost(cost, per_node);
            double total = 0.0;
            for (int64_t i = 0; i < per_node; ++i) {
                total += cost[static_cast<size_t>(i * per_node + match[static_cast<size_t>(i)])];
            }
            // Same tie rule one level up: a block keeping its label wins among equal totals.
            node_cost[static_cast<size_t>(a * num_nodes + b)] =
                total * static_cast<double>(num_nodes + 1) - (a == b ? 1.0 : 0.0);
        }
    }
    const std::vector<int64_t> node_match = hungarian_min_cost(node_cost, num_nodes);
    std::vector<int64_t> aligned(proposed.size(), -1);
    for (int64_t a = 0; a < num_nodes; ++a) {
        const int64_t b = node_match[static_cast<size_t>(a)];
        const auto& match = inner[static_cast<size_t>(a * num_nodes + b)];
        for (int64_t i = 0; i < per_node; ++i) {
            const int64_t r_new = a * per_node + i;
            const int64_t r_old = b * per_node + match[static_cast<size_t>(i)];
            keep_rank_slots(proposed.data() + r_new * num_slots, current + r_old * num_slots,
                            num_slots, aligned.data() + r_old * num_slots, used);
        }
    }
    return aligned;
}

void validate_problem(const LoadView& load, const Topology& topo) {
    validate_topology(topo, load.data == nullptr ? 0 : load.num_layers);
    if (load.num_experts != topo.num_experts) {
        throw_invalid("load", "has " + std::to_string(load.num_experts) +
                                  " experts per layer, topology says " +
                                  std::to_string(topo.num_experts));
    }
    validate_load_values(load.data, load.num_layers * load.num_experts, load.num_experts, "load");
}

void validate_current(const int64_t* phy2log, int64_t num_layers, const Topology& topo,
                      const char* field, CurrentChecks checks) {
    if (phy2log == nullptr) {
        throw_invalid(field, "required by this policy (the placement to start from)");
    }
    const int64_t num_slots = topo.slots_per_rank();
    std::vector<int64_t> last_rank(static_cast<size_t>(topo.num_experts));
    for (int64_t l = 0; l < num_layers; ++l) {
        std::fill(last_rank.begin(), last_rank.end(), -1);
        const int64_t* row = phy2log + l * topo.num_replicas;
        for (int64_t p = 0; p < topo.num_replicas; ++p) {
            if (row[p] == -1 && checks.empty_slots) {
                continue;
            }
            if (row[p] < 0 || row[p] >= topo.num_experts) {
                throw_invalid(field, "layer " + std::to_string(l) + ", slot " + std::to_string(p) +
                                         ": expert id " + std::to_string(row[p]) +
                                         " outside [0, " + std::to_string(topo.num_experts) + ")");
            }
            // Slots are scanned in order, so a repeat on one rank shows as the same last rank.
            int64_t& seen_on = last_rank[static_cast<size_t>(row[p])];
            const int64_t rank = p / num_slots;
            if (checks.no_duplicate_on_rank && seen_on == rank) {
                throw_invalid(field, "layer " + std::to_string(l) + ": rank " +
                                         std::to_string(rank) + " holds expert " +
                                         std::to_string(row[p]) + " twice");
            }
            seen_on = rank;
        }
        for (int64_t e = 0; checks.every_expert && e < topo.num_experts; ++e) {
            if (last_rank[static_cast<size_t>(e)] < 0) {
                throw_invalid(field, "layer " + std::to_string(l) + ": expert " +
                                         std::to_string(e) + " has no replica");
            }
        }
    }
}

void validate_slot_stable(const int64_t* current, int64_t num_layers, const Topology& topo,
                          int64_t num_nodes) {
    validate_current(current, num_layers, topo, "current", {false, false, true});
    if (topo.num_replicas * num_nodes > topo.num_experts * topo.num_ranks) {
        throw_invalid("num_replicas", std::to_string(topo.num_replicas) + " slots over " +
                                          std::to_string(num_nodes) +
                                          " node(s) exceed experts x ranks per node: some rank "
                                          "would hold two replicas of one expert");
    }
}

uint64_t layer_seed(uint64_t seed, int64_t layer_idx) {
    uint64_t z = seed + 0x9E3779B97F4A7C15ULL * (static_cast<uint64_t>(layer_idx) + 1);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

}  // namespace eplb_native::policies
