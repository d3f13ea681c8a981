#include "eplb_native/flashlb/placement.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <numeric>
#include <optional>
#include <tuple>
#include <utility>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "eplb_native/error.h"
#include "eplb_native/policies/building_blocks.h"

namespace eplb_native::flashlb {
namespace {

using policies::idx;

constexpr int kTargetSearchSteps = 16;       // bisection steps of pack_to_target
constexpr int64_t kRiskRanks = 16;           // risk LPT: eligible ranks evaluated per replica
constexpr double kRelativeTolerance = 1e-9;  // slack on "fits under the target"

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

// Bit `rank` of a row of 64-bit words.
bool test_bit(const uint64_t* row, int64_t rank) {
    return (row[idx(rank) >> 6U] >> (idx(rank) & 63U) & 1U) != 0;
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

    bool has(int64_t rank, int64_t expert) const { return test_bit(holds_row(expert), rank); }
    // Bits [D] of the ranks that hold `expert`.
    [[nodiscard]] const uint64_t* holds_row(int64_t expert) const {
        return holds.data() + idx(expert) * words_;
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

// Eight running float sums: lane j adds the products of elements j, j + 8, j + 16, ... in
// order (past the last multiple of 8, everything goes to lane 0), and the total is ((0 + 1) +
// (2 + 3)) + ((4 + 5) + (6 + 7)). A fixed order, so the result never depends on the machine:
// with SSE2 the lanes are two vector registers, elsewhere the same operations one by one.
class EightLanes {
public:
    static constexpr size_t kWidth = 8;

    // Lane j += x[j] * y[j] for j < 8.
    void add_products(const float* x, const float* y) {
#if defined(__SSE2__)
        low_ = _mm_add_ps(low_, _mm_mul_ps(_mm_loadu_ps(x), _mm_loadu_ps(y)));
        high_ = _mm_add_ps(high_, _mm_mul_ps(_mm_loadu_ps(x + 4), _mm_loadu_ps(y + 4)));
#else
        for (size_t j = 0; j < kWidth; ++j) {
            part_[j] += x[j] * y[j];
        }
#endif
    }

    // x[j] += y[j] * scale, then lane j += x[j] * x[j], for j < 8.
    void add_scaled_squares(float* x, const float* y, float scale) {
#if defined(__SSE2__)
        const __m128 factor = _mm_set1_ps(scale);
        const __m128 first = _mm_add_ps(_mm_loadu_ps(x), _mm_mul_ps(_mm_loadu_ps(y), factor));
        const __m128 second =
            _mm_add_ps(_mm_loadu_ps(x + 4), _mm_mul_ps(_mm_loadu_ps(y + 4), factor));
        _mm_storeu_ps(x, first);
        _mm_storeu_ps(x + 4, second);
        low_ = _mm_add_ps(low_, _mm_mul_ps(first, first));
        high_ = _mm_add_ps(high_, _mm_mul_ps(second, second));
#else
        for (size_t j = 0; j < kWidth; ++j) {
            x[j] += y[j] * scale;
            part_[j] += x[j] * x[j];
        }
#endif
    }

    void add_to_first(float value) {
#if defined(__SSE2__)
        low_ = _mm_add_ss(low_, _mm_set_ss(value));
#else
        part_[0] += value;
#endif
    }

    [[nodiscard]] float sum() const {
#if defined(__SSE2__)
        // (0 + 1, 2 + 3, 4 + 5, 6 + 7), then their pairs, then the two halves.
        const __m128 pairs = _mm_add_ps(_mm_shuffle_ps(low_, high_, _MM_SHUFFLE(2, 0, 2, 0)),
                                        _mm_shuffle_ps(low_, high_, _MM_SHUFFLE(3, 1, 3, 1)));
        const __m128 quads =
            _mm_add_ps(pairs, _mm_shuffle_ps(pairs, pairs, _MM_SHUFFLE(2, 3, 0, 1)));
        return _mm_cvtss_f32(_mm_add_ss(quads, _mm_movehl_ps(quads, quads)));
#else
        return ((part_[0] + part_[1]) + (part_[2] + part_[3])) +
               ((part_[4] + part_[5]) + (part_[6] + part_[7]));
#endif
    }

private:
#if defined(__SSE2__)
    __m128 low_ = _mm_setzero_ps();   // lanes 0-3
    __m128 high_ = _mm_setzero_ps();  // lanes 4-7
#else
    float part_[kWidth] = {};
#endif
};

// Dot product of two float vectors of length n, summed in EightLanes.
float dot(const float* a, const float* b, size_t n) {
    EightLanes lanes;
    size_t k = 0;
    for (; k + EightLanes::kWidth <= n; k += EightLanes::kWidth) {
        lanes.add_products(a + k, b + k);
    }
    for (; k < n; ++k) {
        lanes.add_to_first(a[k] * b[k]);
    }
    return lanes.sum();
}

// have += deviation * scale (float), returning dot(have, have, n) of the result in one pass.
float add_scaled(float* have, const float* deviation, float scale, size_t n) {
    EightLanes lanes;
    size_t k = 0;
    for (; k + EightLanes::kWidth <= n; k += EightLanes::kWidth) {
        lanes.add_scaled_squares(have + k, deviation + k, scale);
    }
    for (; k < n; ++k) {
        have[k] += deviation[k] * scale;
        lanes.add_to_first(have[k] * have[k]);
    }
    return lanes.sum();
}

// The episode-load deviations of the ranks of a partial placement, for the risk objective:
// each rank's summed episode loads minus their mean (rank-major [D, K], float32) and their
// variance over the episodes. A replica of expert e adds deviation[e] / counts[e].
class RankEpisodes {
public:
    // A replica about to be placed, as the risk objective sees it.
    struct Replica {
        const float* deviation = nullptr;  // [K] its expert's deviation
        float scale = 0.0F;                // 1 / counts[e]
        double twice_scale = 0.0;          // 2 / counts[e]
        double variance = 0.0;             // (stddev[e] / counts[e])^2
        double stddev = 0.0;               // stddev[e] / counts[e]
    };

    RankEpisodes(const EpisodeStats& stats, const std::vector<int64_t>& counts, int64_t num_ranks)
        : stats_(stats),
          counts_(counts),
          num_episodes_(idx(stats.num_episodes)),
          exact_inverse_((num_episodes_ & (num_episodes_ - 1)) == 0),
          inverse_episodes_(1.0 / static_cast<double>(num_episodes_)),
          rank_deviation_(idx(num_ranks) * num_episodes_, 0.0F),
          rank_variance_(idx(num_ranks), 0.0),
          rank_stddev_(idx(num_ranks), 0.0),
          num_members_(idx(num_ranks), 0) {}

    [[nodiscard]] Replica replica(int64_t expert) const {
        const auto count = static_cast<double>(counts_[idx(expert)]);
        const double scale = 1.0 / count;
        const double spread = stats_.stddev[idx(expert)] * scale;
        return {stats_.deviation.data() + idx(expert) * num_episodes_, static_cast<float>(scale),
                2.0 * scale, spread * spread, stats_.stddev[idx(expert)] / count};
    }

    // Rank `rank` takes `replica`.
    void add(int64_t rank, const Replica& replica) {
        float* have = rank_deviation_.data() + idx(rank) * num_episodes_;
        rank_variance_[idx(rank)] =
            per_episode(add_scaled(have, replica.deviation, replica.scale, num_episodes_));
        ++num_members_[idx(rank)];
        rank_stddev_[idx(rank)] = std::sqrt(rank_variance_[idx(rank)]);
    }

    void rebuild(const std::vector<int64_t>& phy2log, int64_t num_slots) {
        std::fill(rank_deviation_.begin(), rank_deviation_.end(), 0.0F);
        std::fill(rank_variance_.begin(), rank_variance_.end(), 0.0);
        std::fill(num_members_.begin(), num_members_.end(), 0);
        std::fill(rank_stddev_.begin(), rank_stddev_.end(), 0.0);
        for (size_t slot = 0; slot < phy2log.size(); ++slot) {
            if (phy2log[slot] >= 0) {
                add(static_cast<int64_t>(slot) / num_slots, replica(phy2log[slot]));
            }
        }
    }

    // Variance over the episodes of rank `rank`'s load once it takes `replica`:
    // var(rank) + var(replica) + 2 cov(rank, replica).
    [[nodiscard]] double variance_after(int64_t rank, const Replica& replica) const {
        const float* have = rank_deviation_.data() + idx(rank) * num_episodes_;
        // An empty rank's deviations are zeros and their product with any row a signed zero,
        // which adds nothing: the covariance is 0 without the sum.
        const double covariance = num_members_[idx(rank)] == 0
                                      ? 0.0
                                      : per_episode(dot(have, replica.deviation, num_episodes_));
        return std::max(0.0, rank_variance_[idx(rank)] + replica.variance +
                                 replica.twice_scale * covariance);
    }

    [[nodiscard]] double stddev(int64_t rank) const { return rank_stddev_[idx(rank)]; }
    // Rank `rank`'s summed episode loads minus their mean, [K].
    [[nodiscard]] const float* deviation(int64_t rank) const {
        return rank_deviation_.data() + idx(rank) * num_episodes_;
    }

private:
    // sum / K; a product where 1 / K is exact (K a power of two), the same value sooner.
    [[nodiscard]] double per_episode(float sum) const {
        return exact_inverse_ ? static_cast<double>(sum) * inverse_episodes_
                              : static_cast<double>(sum) / static_cast<double>(num_episodes_);
    }

    const EpisodeStats& stats_;
    const std::vector<int64_t>& counts_;
    size_t num_episodes_;
    bool exact_inverse_;
    double inverse_episodes_;  // 1 / K
    std::vector<float> rank_deviation_;
    std::vector<double> rank_variance_;
    std::vector<double> rank_stddev_;
    std::vector<int64_t> num_members_;  // [D] replicas added to each rank
};

// A lower bound on episode_score() of every completion of a partial placement under the risk
// objective, kept up to date as replicas are added. A rank's load in episode k is its mean
// load plus its float32 episode deviation. With T_k > 0 the busiest rank at the end carries at
// least the busiest rank's load now (loads only grow while no replica moves), T_k / D, and the
// mean over the ranks with a free slot of T_k less the full ranks' loads (all of it ends on
// them). Each of those loads is taken `error_[k]` lower: the float32 sums of at most S scaled
// deviations are within (S + 3) * 2^-24 * sum_e (|x_ek - mean_e| + mean_e) of the exact ones,
// and that sum is at most T_k + 2 * (mean of the T_k).
class ScoreFloor {
public:
    ScoreFloor(const EpisodeStats& stats, const RankEpisodes& episodes,
               const PartialPlacement& placement)
        : stats_(stats),
          episodes_(episodes),
          placement_(placement),
          num_episodes_(idx(stats.num_episodes)),
          peak_(num_episodes_, 0.0),
          full_load_(num_episodes_, 0.0),
          rank_share_(num_episodes_, 0.0),
          error_(num_episodes_, 0.0) {
        const int64_t num_ranks = placement.shape_.num_ranks;
        const double mean_total = std::accumulate(stats.total.begin(), stats.total.end(), 0.0) /
                                  static_cast<double>(num_episodes_);
        // Twice the rounding bound above (2^-24: float32's unit roundoff).
        const double relative =
            2.0 * static_cast<double>(placement.shape_.num_slots + 3) * std::ldexp(1.0, -24);
        for (size_t k = 0; k < num_episodes_; ++k) {
            if (stats.total[k] > 0.0) {
                rank_share_[k] = static_cast<double>(num_ranks) / stats.total[k];
            }
            error_[k] = relative * (stats.total[k] + 2.0 * mean_total);
        }
        for (int64_t rank = 0; rank < num_ranks; ++rank) {
            add(rank);
        }
    }

    // Rank `rank` took a replica (its load and deviations are updated already); or, from the
    // constructor, each rank once.
    void add(int64_t rank) {
        const double mean = placement_.load[idx(rank)];
        const float* deviation = episodes_.deviation(rank);
        for (size_t k = 0; k < num_episodes_; ++k) {
            peak_[k] = std::max(peak_[k], mean + static_cast<double>(deviation[k]));
        }
        if (placement_.fill[idx(rank)] == placement_.shape_.num_slots) {
            ++num_full_;
            for (size_t k = 0; k < num_episodes_; ++k) {
                full_load_[k] += mean + static_cast<double>(deviation[k]);
            }
        }
    }

    [[nodiscard]] double score() const {
        const int64_t num_open = placement_.shape_.num_ranks - num_full_;
        const double open_ranks = static_cast<double>(std::max<int64_t>(num_open, 1));
        double sum = 0.0;
        for (size_t k = 0; k < num_episodes_; ++k) {
            const double peak = peak_[k] - error_[k];
            const double spread = (stats_.total[k] - full_load_[k] - error_[k]) / open_ranks;
            sum += std::max({1.0, peak * rank_share_[k], spread * rank_share_[k]});
        }
        return sum / static_cast<double>(num_episodes_);
    }

private:
    const EpisodeStats& stats_;
    const RankEpisodes& episodes_;
    const PartialPlacement& placement_;
    size_t num_episodes_;
    std::vector<double> peak_;        // [K] the busiest rank's load
    std::vector<double> full_load_;   // [K] summed over the full ranks
    std::vector<double> rank_share_;  // [K] D / T_k; 0 where T_k = 0 (score 1)
    std::vector<double> error_;       // [K] bound on the float32 error of a rank's load
    int64_t num_full_ = 0;
};

// The ranks that hold each expert in the table in force (-1 slots skipped), in slot order,
// and a bit per (expert, rank) for the test.
class HeldRanks {
public:
    HeldRanks(const std::vector<int64_t>& current, const LayerShape& shape)
        : words_(idx((shape.num_ranks + 63) / 64)),
          offset_(idx(shape.num_experts) + 1, 0),
          ranks_(current.size()),
          bits_(idx(shape.num_experts) * words_, 0) {
        for (const int64_t expert : current) {
            if (expert >= 0) {
                ++offset_[idx(expert) + 1];
            }
        }
        std::partial_sum(offset_.begin(), offset_.end(), offset_.begin());
        std::vector<int64_t> next(offset_.begin(), offset_.end() - 1);
        for (size_t slot = 0; slot < current.size(); ++slot) {
            const int64_t expert = current[slot];
            if (expert >= 0) {
                const int64_t rank = static_cast<int64_t>(slot) / shape.num_slots;
                ranks_[idx(next[idx(expert)]++)] = rank;
                bits_[idx(expert) * words_ + (idx(rank) >> 6U)] |= uint64_t{1} << (idx(rank) & 63U);
            }
        }
    }

    [[nodiscard]] const int64_t* begin(int64_t expert) const {
        return ranks_.data() + offset_[idx(expert)];
    }
    [[nodiscard]] const int64_t* end(int64_t expert) const {
        return ranks_.data() + offset_[idx(expert) + 1];
    }
    // Bits [D] of the ranks that hold `expert`.
    [[nodiscard]] const uint64_t* row(int64_t expert) const {
        return bits_.data() + idx(expert) * words_;
    }

private:
    size_t words_;
    std::vector<int64_t> offset_;  // [N + 1] expert e's ranks: ranks_[offset_[e], offset_[e+1])
    std::vector<int64_t> ranks_;
    std::vector<uint64_t> bits_;   // [N, words_]
};

// The ranks of a partial placement with a free slot, by (load, index) ascending; kept sorted
// as loads grow.
class OpenRanks {
public:
    static constexpr size_t npos = std::numeric_limits<size_t>::max();

    // Every rank of the empty `placement` (all loads 0: index order).
    explicit OpenRanks(const PartialPlacement& placement)
        : placement_(placement), ranks_(idx(placement.shape_.num_ranks)) {
        std::iota(ranks_.begin(), ranks_.end(), 0);
    }

    [[nodiscard]] size_t size() const { return ranks_.size(); }
    [[nodiscard]] int64_t operator[](size_t pos) const { return ranks_[pos]; }
    // Position of `rank`, which is open.
    [[nodiscard]] size_t position(int64_t rank) const {
        return static_cast<size_t>(std::find(ranks_.begin(), ranks_.end(), rank) -
                                   ranks_.begin());
    }

    // The rank at `pos` just grew: it moves right past the ranks now before it, or leaves the
    // list when full.
    void grew(size_t pos) {
        const auto at = ranks_.begin() + static_cast<std::ptrdiff_t>(pos);
        if (placement_.fill[idx(*at)] >= placement_.shape_.num_slots) {
            ranks_.erase(at);
            return;
        }
        const int64_t rank = *at;
        const auto dest = std::upper_bound(at + 1, ranks_.end(), rank,
                                           [this](int64_t a, int64_t b) { return before(a, b); });
        std::move(at + 1, dest, at);
        *(dest - 1) = rank;
    }

    // Collects and sorts the open ranks afresh, after any number of ranks changed.
    void rebuild() {
        ranks_.clear();
        for (int64_t r = 0; r < placement_.shape_.num_ranks; ++r) {
            if (placement_.fill[idx(r)] < placement_.shape_.num_slots) {
                ranks_.push_back(r);
            }
        }
        std::sort(ranks_.begin(), ranks_.end(),
                  [this](int64_t a, int64_t b) { return before(a, b); });
    }

private:
    [[nodiscard]] bool before(int64_t a, int64_t b) const {
        const double la = placement_.load[idx(a)];
        const double lb = placement_.load[idx(b)];
        return la < lb || (la == lb && a < b);
    }

    const PartialPlacement& placement_;
    std::vector<int64_t> ranks_;
};

// Chooses the open rank that takes a replica: the eligible rank of the smallest cost, its mean
// load after taking it (plus z * stddev over the episodes for the risk objective) less the keep
// bonus where it holds the expert now. Ranks are visited by increasing load until the load
// alone reaches the best cost (no later rank can beat it without the bonus) or kRiskRanks risks
// were evaluated; then the expert's current ranks not visited yet are tried with the bonus.
// Keeps the ranks' episodes for the risk objective in step with the placement.
class ReplicaRankChooser {
public:
    ReplicaRankChooser(const PartialPlacement& placement, const OpenRanks& open,
                       const std::vector<double>& weight, const std::vector<int64_t>& counts,
                       const LptObjective& objective)
        : placement_(placement),
          open_(open),
          z_score_(objective.z_score),
          z_squared_(objective.z_score * objective.z_score),
          cached_variance_(idx(placement.shape_.num_ranks)),
          variance_stamp_(idx(placement.shape_.num_ranks), -1),
          visited_(idx(placement.shape_.num_ranks), -1) {
        if (objective.risk_stats != nullptr && objective.risk_stats->num_episodes > 1) {
            episodes_.emplace(*objective.risk_stats, counts, placement.shape_.num_ranks);
        }
        if (objective.current != nullptr && objective.keep_margin > 0.0) {
            held_.emplace(*objective.current, placement.shape_);
            keep_bonus_ = objective.keep_margin *
                          std::accumulate(weight.begin(), weight.end(), 0.0) /
                          static_cast<double>(placement.shape_.num_ranks);
        }
    }

    // The risk objective's rank episodes; null for the mean load alone.
    [[nodiscard]] const RankEpisodes* episodes() const {
        return episodes_ ? &*episodes_ : nullptr;
    }
    // A replica of `expert` as the risk objective sees it (empty for the mean load alone).
    [[nodiscard]] RankEpisodes::Replica replica(int64_t expert) const {
        return episodes_ ? episodes_->replica(expert) : RankEpisodes::Replica{};
    }

    // Position in the open ranks of the rank that takes a replica of `expert` (`share` of its
    // weight; `replica`: replica(expert)), or OpenRanks::npos when none can.
    size_t choose(int64_t expert, double share, const RankEpisodes::Replica& replica) {
        if (expert != stamp_expert_) {
            stamp_expert_ = expert;
            ++stamp_;
        }
        Choice choice(share, replica);
        ++visit_;
        offer_open_ranks(choice, expert);
        if (held_) {
            offer_unvisited_holders(choice, expert);
        }
        if (choice.pos == OpenRanks::npos && choice.rank >= 0) {
            choice.pos = open_.position(choice.rank);
        }
        return choice.pos;
    }

    // Rank `rank` took `replica` (put in the placement already).
    void took(int64_t rank, const RankEpisodes::Replica& replica) {
        if (episodes_) {
            episodes_->add(rank, replica);
            variance_stamp_[idx(rank)] = -1;  // its cached variance is stale
        }
    }

    // Replicas moved between ranks of the placement: the episodes are summed afresh.
    void replicas_moved() {
        if (episodes_) {
            episodes_->rebuild(placement_.phy2log, placement_.shape_.num_slots);
            ++stamp_;  // every rank's variance may have changed
        }
    }

private:
    // The best offer so far for one replica.
    struct Choice {
        Choice(double replica_share, const RankEpisodes::Replica& replica_risk)
            : share(replica_share), replica(replica_risk) {}

        double share;                   // the replica's load
        RankEpisodes::Replica replica;  // the replica as the risk objective sees it
        size_t pos = OpenRanks::npos;  // the chosen rank's position (npos: not looked up)
        int64_t rank = -1;             // the chosen rank (-1: none)
        double best = std::numeric_limits<double>::infinity();  // its cost
        int64_t evaluated = 0;  // risks evaluated
    };

    // Offers the open ranks by increasing load until the load alone reaches the best cost or
    // kRiskRanks risks were evaluated.
    void offer_open_ranks(Choice& choice, int64_t expert) {
        const uint64_t* taken = placement_.holds_row(expert);
        const uint64_t* kept = held_ ? held_->row(expert) : nullptr;
        for (size_t i = 0; i < open_.size() && choice.evaluated < kRiskRanks; ++i) {
            const int64_t rank = open_[i];
            if (placement_.load[idx(rank)] + choice.share >= choice.best) {
                break;
            }
            if (held_) {
                visited_[idx(rank)] = visit_;
            }
            if (!test_bit(taken, rank)) {
                offer(choice, i, rank, kept != nullptr && test_bit(kept, rank) ? keep_bonus_ : 0.0);
            }
        }
    }

    // Offers, with the keep bonus, the expert's current ranks that are open, eligible and were
    // not visited by offer_open_ranks.
    void offer_unvisited_holders(Choice& choice, int64_t expert) {
        const uint64_t* taken = placement_.holds_row(expert);
        for (const int64_t* holder = held_->begin(expert); holder != held_->end(expert);
             ++holder) {
            const int64_t rank = *holder;
            if (placement_.fill[idx(rank)] < placement_.shape_.num_slots &&
                visited_[idx(rank)] != visit_ && !test_bit(taken, rank)) {
                offer(choice, OpenRanks::npos, rank, keep_bonus_);
            }
        }
    }

    // Offers `rank`, at position `pos` of the open ranks (npos: not looked up), at cost mean +
    // z * stddev - bonus.
    void offer(Choice& choice, size_t pos, int64_t rank, double bonus) {
        const double mean = placement_.load[idx(rank)] + choice.share;
        // cost beats `best` when z * stddev < slack; the deviations of the rank and the
        // replica cancel at most down to |stddev(rank) - stddev(replica)|.
        const double slack = choice.best - (mean - bonus);
        if (slack <= 0.0) {
            return;
        }
        if (!episodes_) {
            choice.best = mean - bonus;
            choice.pos = pos;
            choice.rank = rank;
            return;
        }
        if (z_score_ * std::abs(episodes_->stddev(rank) - choice.replica.stddev) >= slack) {
            return;
        }
        ++choice.evaluated;
        const double variance = variance_after(rank, choice.replica);
        if (z_squared_ * variance < slack * slack) {
            choice.best = mean - bonus + z_score_ * std::sqrt(variance);
            choice.pos = pos;
            choice.rank = rank;
        }
    }

    // RankEpisodes::variance_after, cached per rank while the same expert is placed.
    double variance_after(int64_t rank, const RankEpisodes::Replica& replica) {
        if (variance_stamp_[idx(rank)] != stamp_) {
            cached_variance_[idx(rank)] = episodes_->variance_after(rank, replica);
            variance_stamp_[idx(rank)] = stamp_;
        }
        return cached_variance_[idx(rank)];
    }

    const PartialPlacement& placement_;
    const OpenRanks& open_;
    std::optional<RankEpisodes> episodes_;  // risk objective only
    double z_score_;
    double z_squared_;
    // The ranks that hold each expert in the current table (keep margin only).
    std::optional<HeldRanks> held_;
    double keep_bonus_ = 0.0;
    // Variances after taking a replica of the expert placed last, by rank, valid where
    // variance_stamp_[rank] == stamp_: the expert's next replica (placed next) meets the same
    // ranks, unchanged but for the one that took the last replica (its stamp is cleared).
    std::vector<double> cached_variance_;
    std::vector<int64_t> variance_stamp_;
    int64_t stamp_ = -1;
    int64_t stamp_expert_ = -1;
    // visited_[rank] == visit_: rank was visited by the current choose() (open ranks not
    // visited are offered again when they hold the expert now).
    std::vector<int64_t> visited_;
    int64_t visit_ = -1;
};

// Giving up under the risk objective: the score floor decides only near the end, so it is kept
// over the last eighth of the replicas, while no make_room has moved a replica.
class GiveUpCheck {
public:
    // `episodes`: the risk objective's rank episodes, null for the mean load alone (never
    // gives up).
    GiveUpCheck(const LptObjective& objective, const RankEpisodes* episodes,
                const PartialPlacement& placement)
        : stats_(objective.risk_stats),
          episodes_(episodes),
          placement_(placement),
          enabled_(episodes != nullptr &&
                   objective.give_up_at < std::numeric_limits<double>::infinity()),
          floor_from_(placement.shape_.num_physical() - placement.shape_.num_physical() / 8),
          give_up_at_(objective.give_up_at * (1.0 + kRelativeTolerance)) {}

    // A replica is about to be placed.
    void before_replica() {
        if (enabled_ && !moved_ && placed_++ == floor_from_) {
            floor_ = std::make_unique<ScoreFloor>(*stats_, *episodes_, placement_);
        }
    }

    // make_room moved a replica: the floor no longer holds.
    void replica_moved() {
        moved_ = true;
        floor_.reset();
    }

    // Rank `rank` took a replica (placement and episodes updated): true when the placement's
    // episode_score is now certain to be at least give_up_at.
    bool certain_after(int64_t rank) {
        if (!floor_) {
            return false;
        }
        floor_->add(rank);
        return floor_->score() >= give_up_at_;
    }

private:
    const EpisodeStats* stats_;
    const RankEpisodes* episodes_;
    const PartialPlacement& placement_;
    bool enabled_;
    int64_t floor_from_;  // replicas placed before the floor starts
    double give_up_at_;
    std::unique_ptr<ScoreFloor> floor_;  // null before the last eighth or after a move
    bool moved_ = false;
    int64_t placed_ = 0;
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
// least loaded eligible rank (lowest index on ties), that leaves the smallest busiest rank
// (then the lightest receiving rank, then the lowest expert id). Per free slot the rank loads
// are summed afresh; each expert's busiest rank after the move is found from the ranks by
// decreasing load and the expert's own ranks, so a slot costs O(P + D log D), not O(N D).
void fill_spare(const std::vector<double>& weight, const LayerShape& shape,
                std::vector<int64_t>& counts, std::vector<int64_t>& phy2log) {
    const int64_t num_slots = shape.num_slots;
    const int64_t num_ranks = shape.num_ranks;
    const int64_t num_experts = shape.num_experts;
    std::vector<double> load(idx(num_ranks));
    std::vector<int64_t> free_slot(idx(num_ranks));
    std::vector<char> holds(idx(num_ranks * num_experts));
    std::vector<std::vector<int64_t>> ranks_of(idx(num_experts));  // ranks holding each expert
    std::vector<int64_t> open;      // ranks with a free slot, by (load, index) ascending
    std::vector<int64_t> by_load;   // all ranks, by (load, index) descending
    for (;;) {
        std::fill(load.begin(), load.end(), 0.0);
        std::fill(free_slot.begin(), free_slot.end(), -1);
        std::fill(holds.begin(), holds.end(), 0);
        for (auto& ranks : ranks_of) {
            ranks.clear();
        }
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
                ranks_of[idx(e)].push_back(rank);
            }
        }
        if (!any_free) {
            return;
        }
        open.clear();
        by_load.resize(idx(num_ranks));
        std::iota(by_load.begin(), by_load.end(), 0);
        for (int64_t r = 0; r < num_ranks; ++r) {
            if (free_slot[idx(r)] >= 0) {
                open.push_back(r);
            }
        }
        const auto lighter = [&](int64_t a, int64_t b) {
            return load[idx(a)] < load[idx(b)] || (load[idx(a)] == load[idx(b)] && a < b);
        };
        std::sort(open.begin(), open.end(), lighter);
        std::sort(by_load.begin(), by_load.end(), [&](int64_t a, int64_t b) {
            return load[idx(a)] > load[idx(b)] || (load[idx(a)] == load[idx(b)] && a < b);
        });
        int64_t best_expert = -1;
        int64_t best_rank = -1;
        double best_peak = std::numeric_limits<double>::infinity();
        double best_receiver = std::numeric_limits<double>::infinity();
        for (int64_t e = 0; e < num_experts; ++e) {
            if (counts[idx(e)] >= num_ranks) {
                continue;
            }
            const auto holder = [&](int64_t r) { return holds[idx(r * num_experts + e)] != 0; };
            const auto rank_at = std::find_if(open.begin(), open.end(),
                                              [&](int64_t r) { return !holder(r); });
            if (rank_at == open.end()) {
                continue;
            }
            const int64_t rank = *rank_at;
            const double old_share = weight[idx(e)] / static_cast<double>(counts[idx(e)]);
            const double new_share = weight[idx(e)] / static_cast<double>(counts[idx(e)] + 1);
            // Busiest rank afterwards: the busiest rank untouched by the move, the expert's
            // ranks (lighter by old - new share) and the receiving rank.
            const auto untouched = std::find_if(by_load.begin(), by_load.end(), [&](int64_t r) {
                return r != rank && !holder(r);
            });
            double peak = untouched == by_load.end() ? 0.0 : load[idx(*untouched)];
            for (const int64_t r : ranks_of[idx(e)]) {
                peak = std::max(peak, load[idx(r)] - (old_share - new_share));
            }
            const double receiver = load[idx(rank)] + new_share;
            peak = std::max(peak, receiver);
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

std::vector<int64_t> place_lpt(const std::vector<double>& weight,
                               const std::vector<int64_t>& by_weight,
                               const std::vector<int64_t>& counts, const LayerShape& shape,
                               const LptObjective& objective) {
    PartialPlacement placement(shape);
    const std::vector<double> share_of = shares_of(weight, counts);
    OpenRanks open(placement);
    ReplicaRankChooser chooser(placement, open, weight, counts, objective);
    GiveUpCheck give_up(objective, chooser.episodes(), placement);
    for (const auto& [expert, share] : replicas_by_weight(weight, counts, by_weight)) {
        give_up.before_replica();
        const RankEpisodes::Replica replica = chooser.replica(expert);
        const size_t pos = chooser.choose(expert, share, replica);
        if (pos == OpenRanks::npos) {
            const int64_t rank = placement.make_room(expert, share_of);
            EPLB_CHECK(rank >= 0, "no rank can take a replica of expert " << expert);
            placement.put(rank, expert, share);
            open.rebuild();  // make_room changed two ranks
            chooser.replicas_moved();
            give_up.replica_moved();
            continue;
        }
        const int64_t rank = open[pos];
        placement.put(rank, expert, share);
        open.grew(pos);
        chooser.took(rank, replica);
        if (give_up.certain_after(rank)) {
            return {};
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

void refine_swaps(const std::vector<double>& weight, const std::vector<int64_t>& counts,
                  const LayerShape& shape, int64_t max_iterations, std::vector<int64_t>& phy2log) {
    std::vector<double> load = policies::row_rank_loads(weight, counts, phy2log, shape.num_ranks);
    policies::SwapRules rules;
    rules.min_gain = kRelativeTolerance;
    rules.rank_first_ties = true;
    policies::swap_off_busiest(shares_of(weight, counts), rules, max_iterations, 0, phy2log,
                               load);
}

}  // namespace eplb_native::flashlb
