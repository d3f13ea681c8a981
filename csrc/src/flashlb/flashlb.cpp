#include "eplb_native/flashlb/flashlb.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>

#include "eplb_native/error.h"
#include "eplb_native/flashlb/minimal_moves.h"
#include "eplb_native/policies/building_blocks.h"

namespace eplb_native::flashlb {
namespace {

using policies::allot_min_max;
using policies::idx;
using policies::min_max_order;

// Robustness margin: a candidate replaces an earlier one (closer to the min-max allotment,
// which spreads replicas over the hottest experts and so generalises best to the next window)
// only when it scores lower by more than this fraction.
constexpr double kScoreMargin = 0.002;

bool clearly_better(double score, double than) { return score < than * (1.0 - kScoreMargin); }

// A complete candidate: replica counts [N], placement [P] and its episode score.
struct Candidate {
    std::vector<int64_t> counts;
    std::vector<int64_t> phy2log;
    double score = std::numeric_limits<double>::infinity();
};

// One layer's planning inputs: the statistics, the experts by decreasing risk (the allotment's
// weight) and by decreasing mean, and how every allotment is placed.
struct LayerInputs {
    const EpisodeStats& stats;
    const std::vector<int64_t>& by_risk;
    const std::vector<int64_t>& by_mean;
    LayerShape shape;
    LptObjective objective;

    // The placement of `counts` (LPT on the episodes' risk when there are several) and its
    // episode score; with several episodes, a placement certain to score at least
    // `give_up_at` is abandoned (an empty candidate, score infinity).
    [[nodiscard]] Candidate place(
        std::vector<int64_t> counts,
        double give_up_at = std::numeric_limits<double>::infinity()) const {
        LptObjective bounded = objective;
        bounded.give_up_at = give_up_at;
        Candidate cand;
        cand.phy2log = place_lpt(stats.mean, by_mean, counts, shape, bounded);
        if (!cand.phy2log.empty()) {
            cand.score = episode_score(stats, cand.phy2log, counts, shape.num_ranks);
            cand.counts = std::move(counts);
        }
        return cand;
    }
};

// Lower bound on episode_score for any placement of given replica counts. In episode k with
// total load T_k > 0 the busiest rank carries at least max(T_k / D, x_ke / c_e) for every e, so
// the score is at least (zero_episodes + max(busy_episodes, max_e share_sum[e] / c_e)) / K with
// share_sum[e] = sum_k x_ke * D / T_k: O(N) per candidate once share_sum is known.
struct ScoreBound {
    explicit ScoreBound(const EpisodeStats& stats, int64_t num_ranks)
        : share_sum(idx(stats.num_experts), 0.0) {
        const auto num_episodes = idx(stats.num_episodes);
        const std::vector<double>& total = stats.total;
        for (size_t k = 0; k < num_episodes; ++k) {
            (total[k] > 0.0 ? busy_episodes : zero_episodes) += 1.0;
        }
        // D / T_k, 0 for episodes without load.
        std::vector<double> rank_share(num_episodes, 0.0);
        for (size_t k = 0; k < num_episodes; ++k) {
            if (total[k] > 0.0) {
                rank_share[k] = static_cast<double>(num_ranks) / total[k];
            }
        }
        for (size_t e = 0; e < share_sum.size(); ++e) {
            for (size_t k = 0; k < num_episodes; ++k) {
                share_sum[e] += stats.loads[e * num_episodes + k] * rank_share[k];
            }
        }
    }

    [[nodiscard]] double operator()(const std::vector<int64_t>& counts) const {
        double peak = busy_episodes;
        for (size_t e = 0; e < counts.size(); ++e) {
            peak = std::max(peak, share_sum[e] / static_cast<double>(counts[e]));
        }
        return (zero_episodes + peak) / (zero_episodes + busy_episodes);
    }

    std::vector<double> share_sum;
    double zero_episodes = 0.0;
    double busy_episodes = 0.0;
};

// The tree search over how many redundant replicas each group of hot experts takes; returns
// the best candidate (LPT placement on risk-adjusted loads).
Candidate search_allotment(const LayerInputs& layer, const SearchSize& size, ThreadPool& pool) {
    const EpisodeStats& stats = layer.stats;
    const std::vector<int64_t>& order = layer.by_risk;
    const LayerShape& shape = layer.shape;
    const int64_t num_experts = shape.num_experts;
    const int64_t num_ranks = shape.num_ranks;
    const int64_t redundant = shape.num_physical() - num_experts;
    const std::vector<double>& weight = stats.risk;
    std::vector<int64_t> min_max(idx(num_experts), 1);
    allot_min_max(weight, order, redundant, num_ranks, min_max);
    Candidate best = layer.place(std::move(min_max));
    if (redundant == 0) {
        return best;
    }
    // Groups: the experts the min-max estimate replicates, and as many again, in `max_depth`
    // consecutive slices of the risk order; everything after the slices is only estimated.
    const auto hot = static_cast<int64_t>(std::count_if(
        best.counts.begin(), best.counts.end(), [](int64_t c) { return c > 1; }));
    const int64_t span = std::min(num_experts, std::max(2 * hot, size.max_depth));
    const int64_t num_groups = std::min(size.max_depth, span);
    std::vector<int64_t> group_begin(idx(num_groups + 1));
    for (int64_t g = 0; g <= num_groups; ++g) {
        group_begin[idx(g)] = g * span / num_groups;
    }
    const ScoreBound score_bound(stats, num_ranks);
    int64_t decided_extras = 0;
    for (int64_t g = 0; g < num_groups; ++g) {
        const std::vector<int64_t> group(order.begin() + group_begin[idx(g)],
                                         order.begin() + group_begin[idx(g + 1)]);
        const std::vector<int64_t> undecided(order.begin() + group_begin[idx(g + 1)], order.end());
        int64_t estimate = 0;
        for (const int64_t e : group) {
            estimate += best.counts[idx(e)] - 1;
        }
        const int64_t budget = redundant - decided_extras;
        const int64_t cap = std::min(budget, static_cast<int64_t>(group.size()) * (num_ranks - 1));
        const int64_t hi = std::min(cap, std::max<int64_t>(0, estimate - size.width / 2) +
                                             size.width - 1);
        const int64_t lo = std::max<int64_t>(0, hi - size.width + 1);
        // Candidate c gives the group lo + c extra replicas and the undecided experts the rest
        // of the budget, each by min-max allotment: prefixes of one order per set.
        std::vector<int64_t> base = best.counts;
        for (const int64_t e : group) {
            base[idx(e)] = 1;
        }
        for (const int64_t e : undecided) {
            base[idx(e)] = 1;
        }
        const std::vector<int64_t> group_order = min_max_order(weight, group, base, hi, num_ranks);
        const std::vector<int64_t> rest_order =
            min_max_order(weight, undecided, base, budget - lo, num_ranks);
        std::vector<Candidate> candidates(idx(hi - lo + 1));
        const double incumbent = best.score;
        pool.parallel_for(hi - lo + 1, [&](int64_t c) {
            std::vector<int64_t> counts = base;
            const auto add = [&counts](const std::vector<int64_t>& handed, int64_t extras) {
                const auto taken = std::min(handed.size(), idx(extras));
                for (size_t i = 0; i < taken; ++i) {
                    ++counts[idx(handed[i])];
                }
            };
            add(group_order, lo + c);
            add(rest_order, budget - (lo + c));
            if (counts == best.counts) {
                return;  // the incumbent itself, already scored
            }
            const int64_t total =
                std::accumulate(counts.begin(), counts.end(), static_cast<int64_t>(0));
            if (total != shape.num_physical() || score_bound(counts) >= incumbent) {
                return;  // infeasible split, or pruned: cannot beat the incumbent
            }
            // Only a score below incumbent * (1 - margin) can replace the best.
            candidates[idx(c)] = layer.place(std::move(counts), incumbent * (1.0 - kScoreMargin));
        });
        for (Candidate& cand : candidates) {
            if (clearly_better(cand.score, best.score)) {
                best = std::move(cand);
            }
        }
        for (const int64_t e : group) {
            decided_extras += best.counts[idx(e)] - 1;
        }
    }
    return best;
}

// Rounds of replica moves between the `kPolishExperts` heaviest experts: every (donor,
// receiver, 1..kPolishMaxShift replicas) move that keeps the donor >= 1 and the receiver <= D
// replicas is re-placed and scored; the best improving move is applied (LPT placement; swap
// refinement once at the end). Repeats while it improves, at most kPolishRounds times.
// Only for single-episode statistics (the score is then the busiest rank's load), and skipped
// when the busiest rank is already at `lower_bound`.
constexpr int64_t kPolishExperts = 8;
constexpr int kPolishRounds = 8;
constexpr int64_t kPolishMaxShift = 3;  // replicas moved at once from one expert to another
constexpr int64_t kRefineRounds = 4;  // swap refinement: at most 4 * D swaps
constexpr double kPolishSkipGap = 1e-3;  // skip polishing within 0.1% of the lower bound

void polish_allotment(const LayerInputs& layer, double lower_bound, ThreadPool& pool,
                      Candidate& best) {
    const EpisodeStats& stats = layer.stats;
    const std::vector<int64_t>& by_risk = layer.by_risk;
    const LayerShape& shape = layer.shape;
    const std::vector<double> load =
        policies::row_rank_loads(stats.mean, best.counts, best.phy2log, shape.num_ranks);
    if (*std::max_element(load.begin(), load.end()) <= lower_bound * (1.0 + kPolishSkipGap)) {
        return;  // already at the bound: no move can help
    }
    const std::vector<int64_t> order(
        by_risk.begin(), by_risk.begin() + std::min(kPolishExperts, shape.num_experts));
    const auto num_top = static_cast<int64_t>(order.size());
    for (int round = 0; round < kPolishRounds; ++round) {
        // Move index = (donor, receiver, shift - 1): `shift` replicas go from donor to receiver.
        std::vector<Candidate> moved(idx(num_top * num_top * kPolishMaxShift));
        pool.parallel_for(static_cast<int64_t>(moved.size()), [&](int64_t move) {
            const int64_t shift = move % kPolishMaxShift + 1;
            const int64_t pair = move / kPolishMaxShift;
            const int64_t donor = order[idx(pair / num_top)];
            const int64_t receiver = order[idx(pair % num_top)];
            if (donor == receiver || best.counts[idx(donor)] <= shift ||
                best.counts[idx(receiver)] + shift > shape.num_ranks) {
                return;
            }
            std::vector<int64_t> counts = best.counts;
            counts[idx(donor)] -= shift;
            counts[idx(receiver)] += shift;
            moved[idx(move)] = layer.place(std::move(counts));
        });
        bool improved = false;
        for (Candidate& cand : moved) {
            if (cand.score < best.score) {
                best = std::move(cand);
                improved = true;
            }
        }
        if (!improved) {
            break;
        }
    }
    std::vector<int64_t> refined = best.phy2log;
    refine_swaps(stats.risk, best.counts, shape, kRefineRounds * shape.num_ranks, refined);
    const double score = episode_score(stats, refined, best.counts, shape.num_ranks);
    if (score < best.score) {
        best.phy2log = std::move(refined);
        best.score = score;
    }
}

// Number of replica-count vectors (each expert 1..D, P in all), capped at cap + 1.
int64_t count_allotments(const LayerShape& shape, int64_t cap) {
    const int64_t extra = shape.num_physical() - shape.num_experts;
    // ways[x]: vectors of the experts so far that use x extra replicas.
    std::vector<int64_t> ways(idx(extra + 1), 0);
    ways[0] = 1;
    for (int64_t e = 0; e < shape.num_experts; ++e) {
        std::vector<int64_t> next(idx(extra + 1), 0);
        for (int64_t used = 0; used <= extra; ++used) {
            for (int64_t add = 0; add < shape.num_ranks && used + add <= extra; ++add) {
                next[idx(used + add)] = std::min(cap + 1, next[idx(used + add)] + ways[idx(used)]);
            }
        }
        ways = std::move(next);
    }
    return ways[idx(extra)];
}

// Tiny layers (at most kExhaustiveAllotments count vectors, one episode): every allotment is
// placed (LPT + swap refinement) and the best replaces `best` when it scores lower.
constexpr int64_t kExhaustiveAllotments = 2048;

void search_all_allotments(const LayerInputs& layer, Candidate& best) {
    const EpisodeStats& stats = layer.stats;
    const LayerShape& shape = layer.shape;
    if (count_allotments(shape, kExhaustiveAllotments) > kExhaustiveAllotments) {
        return;
    }
    std::vector<int64_t> counts(idx(shape.num_experts), 1);
    int64_t extra = shape.num_physical() - shape.num_experts;
    // Odometer over counts with the last expert taking what is left.
    const auto last = shape.num_experts - 1;
    for (;;) {
        const int64_t rest = extra;
        if (rest + 1 <= shape.num_ranks) {
            counts[idx(last)] = rest + 1;
            Candidate cand = layer.place(counts);
            refine_swaps(stats.risk, cand.counts, shape, kRefineRounds * shape.num_ranks,
                         cand.phy2log);
            cand.score = episode_score(stats, cand.phy2log, cand.counts, shape.num_ranks);
            if (cand.score < best.score) {
                best = std::move(cand);
            }
        }
        counts[idx(last)] = 1;
        // Advance the odometer on experts 0..last-1.
        int64_t pos = last - 1;
        while (pos >= 0 && (counts[idx(pos)] == shape.num_ranks || extra == 0)) {
            extra += counts[idx(pos)] - 1;
            counts[idx(pos)] = 1;
            --pos;
        }
        if (pos < 0) {
            return;
        }
        ++counts[idx(pos)];
        --extra;
    }
}

// FlashLB squares episode loads (their deviation, scaled by z_score <= kMaxZScore): a load or
// history whose values sum beyond this would overflow float64 on the way.
constexpr double kMaxSquarableTotal = 1e150;
constexpr double kMaxZScore = 100.0;

// Throws naming `field` unless 0 <= value <= upper (NaN fails).
void require_in_range(double value, double upper, const char* field) {
    if (!(value >= 0.0 && value <= upper)) {
        std::ostringstream message;
        message << "expected a value in [0, " << upper << "], got " << value;
        throw_invalid(field, message.str());
    }
}

void require_squarable_total(double total, const std::string& field) {
    if (total > kMaxSquarableTotal) {
        throw_invalid(field, "the values sum beyond 1e150, which FlashLB cannot square "
                             "without overflowing float64 (scale the loads down)");
    }
}

// validate_load_values over [rows, N] in parallel chunks of rows. The error of the lowest failing
// chunk is the one raised, so the message names the first bad value, as one scan would. A float
// history's total is checked too (integer counts cannot reach the limit).
template <typename Value>
void validate_history(const Value* data, int64_t num_rows, int64_t num_experts, ThreadPool& pool) {
    constexpr int64_t kRowsPerChunk = 512;
    const int64_t num_chunks = (num_rows + kRowsPerChunk - 1) / kRowsPerChunk;
    std::vector<double> totals(idx(num_chunks), 0.0);
    pool.parallel_for(num_chunks, [&](int64_t chunk) {
        const int64_t begin = chunk * kRowsPerChunk;
        const int64_t rows = std::min(kRowsPerChunk, num_rows - begin);
        const Value* values = data + begin * num_experts;
        if constexpr (std::is_same_v<Value, double>) {
            totals[idx(chunk)] =
                validate_load_values(values, rows * num_experts, num_experts, "history", begin);
        } else {
            validate_load_values(values, rows * num_experts, num_experts, "history", begin);
        }
    });
    require_squarable_total(std::accumulate(totals.begin(), totals.end(), 0.0), "history");
}

}  // namespace

void validate_options(const Options& options) {
    require_in_range(options.z_score, kMaxZScore, "z_score");
    for (const auto& [value, field] : {std::pair{options.max_depth, "max_depth"},
                                       std::pair{options.width, "width"}}) {
        if (value < 0) {
            throw_invalid(field, "expected a positive integer (or 0: the default), got " +
                                     std::to_string(value));
        }
    }
    require_positive(options.episode_steps, "episode_steps");
    require_positive(options.max_episodes, "max_episodes");
    require_in_range(options.keep_margin, 1.0, "keep_margin");  // a fraction of the mean load
}

std::vector<int64_t> plan_layer(const EpisodeStats& stats, const LayerShape& shape,
                                const Options& options, ThreadPool& pool,
                                const std::vector<int64_t>* current) {
    const int64_t num_ranks = shape.num_ranks;
    const std::vector<double>& weight = stats.risk;
    const std::vector<int64_t> by_risk =
        policies::order_descending(weight.data(), shape.num_experts);
    const std::vector<int64_t> by_mean =
        stats.num_episodes > 1 ? policies::order_descending(stats.mean.data(), shape.num_experts)
                               : by_risk;
    const LayerInputs layer{stats, by_risk, by_mean, shape,
                            LptObjective{&stats, options.z_score, current, options.keep_margin}};
    const SearchSize defaults = stats.num_episodes > 1 ? kEpisodeSearch : kAggregateSearch;
    const SearchSize size{options.max_depth > 0 ? options.max_depth : defaults.max_depth,
                          options.width > 0 ? options.width : defaults.width};
    Candidate best = search_allotment(layer, size, pool);
    if (stats.num_episodes > 1) {
        // Every candidate was placed and scored on the episodes themselves; packing and swaps
        // on the aggregate (below) never lower that score, so they are skipped.
        return best.phy2log;
    }
    // One episode: target packing between the allotment bound and the searched plan's busiest
    // rank replaces the searched plan when clearly better; swap refinement then polishes it.
    const std::vector<double> searched_load =
        policies::row_rank_loads(weight, best.counts, best.phy2log, num_ranks);
    const double upper = *std::max_element(searched_load.begin(), searched_load.end());
    const double lower = policies::max_load_lower_bound(weight, shape.num_physical(), num_ranks);
    std::vector<int64_t> packed = pack_to_target(weight, by_risk, shape, lower, upper);
    if (!packed.empty()) {
        std::vector<int64_t> counts = counts_of(packed, shape.num_experts);
        const double score = episode_score(stats, packed, counts, num_ranks);
        if (clearly_better(score, best.score)) {
            best = Candidate{std::move(counts), std::move(packed), score};
        }
    }
    std::vector<int64_t> refined = best.phy2log;
    refine_swaps(weight, best.counts, shape, kRefineRounds * num_ranks, refined);
    const double refined_score = episode_score(stats, refined, best.counts, num_ranks);
    if (refined_score < best.score) {
        best.phy2log = std::move(refined);
        best.score = refined_score;
    }
    search_all_allotments(layer, best);
    polish_allotment(layer,
                     policies::max_load_lower_bound(stats.mean, shape.num_physical(), num_ranks),
                     pool, best);
    return best.phy2log;
}

Plan plan_flashlb(const Request& request, const Topology& topo, const Options& options,
                  ThreadPool& pool) {
    validate_topology(topo, request.load.num_layers);
    validate_options(options);
    const LoadView& load = request.load;
    if (load.data == nullptr || load.num_layers <= 0 || load.num_experts != topo.num_experts) {
        throw_invalid("load", "expected [layers, num_experts=" + std::to_string(topo.num_experts) +
                                  "], got [" + std::to_string(load.num_layers) + ", " +
                                  std::to_string(load.num_experts) + "]");
    }
    if (topo.num_replicas > topo.num_experts * topo.num_ranks) {
        throw_invalid("num_replicas", std::to_string(topo.num_replicas) +
                                          " slots exceed num_experts * num_ranks = " +
                                          std::to_string(topo.num_experts * topo.num_ranks) +
                                          " (no rank holds two replicas of one expert)");
    }
    const int64_t num_layers = load.num_layers;
    const int64_t num_experts = topo.num_experts;
    require_squarable_total(
        validate_load_values(load.data, num_layers * num_experts, num_experts, "load"), "load");
    std::vector<int64_t> bounds;
    const HistoryView& history = request.history;
    if (!history.empty()) {
        if (history.num_steps <= 0) {
            throw_invalid("history", "expected at least one step, got " +
                                         std::to_string(history.num_steps));
        }
        history.visit([&](const auto* values) {
            validate_history(values, history.num_steps * num_layers, num_experts, pool);
        });
        bounds = episode_bounds(history.num_steps, options.episode_steps, options.max_episodes);
    }
    const LayerShape shape{num_experts, topo.num_ranks, topo.slots_per_rank()};
    const int64_t num_physical = shape.num_physical();
    if (options.incremental && request.current == nullptr) {
        throw_invalid("current", "incremental mode needs the current table");
    }
    if (request.current != nullptr) {
        // Alignment only needs ids in range (or -1, an empty slot); incremental mode edits the
        // table, so it must be a complete placement with no expert twice on a rank.
        const bool edits = options.incremental;
        policies::validate_current(request.current, num_layers, topo, "current",
                                   {edits, edits, !edits});
    }
    std::vector<int64_t> phy2log(idx(num_layers * num_physical));
    pool.parallel_for(num_layers, [&](int64_t layer) {
        const EpisodeStats stats =
            !history.empty()
                ? stats_from_history(history, num_layers, num_experts, layer, bounds,
                                     options.z_score)
                : stats_from_load(load.layer(layer), num_experts);
        std::vector<int64_t> current;
        if (request.current != nullptr) {
            current.assign(request.current + layer * num_physical,
                           request.current + (layer + 1) * num_physical);
        }
        std::vector<int64_t> row =
            plan_layer(stats, shape, options, pool, current.empty() ? nullptr : &current);
        if (!current.empty()) {
            if (options.incremental) {
                // Its swaps can move an expert back onto its rank in another slot.
                row = incremental_update(stats.mean, counts_of(row, num_experts), current, shape,
                                         options.max_moves_per_layer);
            }
            row = policies::align_to_current(row, current.data(), shape.num_ranks);
        }
        std::copy(row.begin(), row.end(), phy2log.begin() + layer * num_physical);
    });
    return plan_from_phy2log(phy2log.data(), num_layers, num_physical, num_experts);
}

}  // namespace eplb_native::flashlb
