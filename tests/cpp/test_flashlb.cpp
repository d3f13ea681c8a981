#include "eplb_native/flashlb/flashlb.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "eplb_native/flashlb/minimal_moves.h"
#include "eplb_native/policies/building_blocks.h"

namespace eplb_native::flashlb {
namespace {

Topology topology(int64_t num_experts, int64_t num_ranks, int64_t num_slots) {
    return Topology{num_experts, num_ranks * num_slots, 1, 1, num_ranks};
}

// Busiest rank's load of layer `layer` of `plan`, each expert split evenly over its replicas.
double max_rank_load(const Plan& plan, const std::vector<double>& load, int64_t layer,
                     int64_t num_ranks) {
    const int64_t num_slots = plan.num_physical / num_ranks;
    std::vector<double> rank_load(static_cast<size_t>(num_ranks), 0.0);
    for (int64_t slot = 0; slot < plan.num_physical; ++slot) {
        const int64_t e = plan.phy2log[static_cast<size_t>(layer * plan.num_physical + slot)];
        const auto cnt = plan.logcnt[static_cast<size_t>(layer * plan.num_experts + e)];
        rank_load[static_cast<size_t>(slot / num_slots)] +=
            load[static_cast<size_t>(layer * plan.num_experts + e)] / static_cast<double>(cnt);
    }
    return *std::max_element(rank_load.begin(), rank_load.end());
}

std::vector<double> random_load(int64_t num_layers, int64_t num_experts, unsigned seed) {
    std::mt19937 rng(seed);
    std::lognormal_distribution<double> popularity(0.0, 0.8);
    std::vector<double> load(static_cast<size_t>(num_layers * num_experts));
    for (double& value : load) {
        value = std::round(1000.0 * popularity(rng));
    }
    return load;
}

Plan run(const std::vector<double>& load, const Topology& topo, int threads,
         const int64_t* current = nullptr, Options options = {}) {
    Request request;
    request.load = LoadView{load.data(), static_cast<int64_t>(load.size()) / topo.num_experts,
                            topo.num_experts};
    request.current = current;
    ThreadPool pool(threads);
    return plan_flashlb(request, topo, options, pool);
}

std::string message_of(const std::function<void()>& fn) {
    try {
        fn();
    } catch (const std::invalid_argument& error) {
        return error.what();
    }
    return "no exception";
}

// Source: the FlashLB publication's example (8 ranks x 2 slots); the optimum 196.67 was
// confirmed with the exact solver in tests/python/exact_placement.py.
TEST(FlashLB, PublishedExampleReachesTheOptimum) {
    const std::vector<double> load = {600, 560, 120, 120, 20, 10, 10, 10};
    for (int threads : {1, 2, 4}) {
        const Plan plan = run(load, topology(8, 8, 2), threads);
        EXPECT_NEAR(max_rank_load(plan, load, 0, 8), 590.0 / 3.0, 1e-9) << "threads=" << threads;
    }
}

TEST(FlashLB, PlansAreIdenticalForAnyThreadCount) {
    const std::vector<double> load = random_load(6, 64, 7);
    const Topology topo = topology(64, 8, 10);
    const Plan one = run(load, topo, 1);
    for (int threads : {2, 4}) {
        EXPECT_EQ(run(load, topo, threads).phy2log, one.phy2log) << "threads=" << threads;
    }
}

TEST(FlashLB, AlignmentKeepsBalanceAndNeverAddsCopies) {
    const int64_t num_experts = 32;
    const int64_t num_ranks = 8;
    const Topology topo = topology(num_experts, num_ranks, 5);
    const std::vector<double> old_load = random_load(3, num_experts, 11);
    const std::vector<double> new_load = random_load(3, num_experts, 12);
    const Plan current = run(old_load, topo, 1);
    const Plan fresh = run(new_load, topo, 1);
    const Plan aligned = run(new_load, topo, 1, current.phy2log.data());
    for (int64_t layer = 0; layer < 3; ++layer) {
        const auto row = [&](const Plan& plan) {
            return std::vector<int64_t>(plan.phy2log.begin() + layer * plan.num_physical,
                                        plan.phy2log.begin() + (layer + 1) * plan.num_physical);
        };
        EXPECT_DOUBLE_EQ(max_rank_load(aligned, new_load, layer, num_ranks),
                         max_rank_load(fresh, new_load, layer, num_ranks));
        const auto copies = [&](const Plan& plan) {
            return policies::weight_copies(row(current).data(), row(plan).data(),
                                           plan.num_physical, num_ranks);
        };
        EXPECT_LE(copies(aligned), copies(fresh))
            << "layer=" << layer;
    }
    // Replanning the load the current plan was made for, aligned to it, moves nothing.
    const Plan same = run(old_load, topo, 1, current.phy2log.data());
    EXPECT_EQ(same.phy2log, current.phy2log);
}

TEST(FlashLB, IncrementalModeRespectsMaxMoves) {
    const int64_t num_experts = 32;
    const Topology topo = topology(num_experts, 8, 5);
    const LayerShape shape{num_experts, 8, 5};
    const Plan current = run(random_load(2, num_experts, 21), topo, 1);
    const std::vector<double> new_load = random_load(2, num_experts, 22);
    for (int64_t cap : {0, 1, 3, 6}) {
        Options options;
        options.incremental = true;
        options.max_moves_per_layer = cap;
        const Plan plan = run(new_load, topo, 1, current.phy2log.data(), options);
        for (int64_t layer = 0; layer < 2; ++layer) {
            const std::vector<int64_t> old_row(current.phy2log.begin() + layer * 40,
                                               current.phy2log.begin() + (layer + 1) * 40);
            const std::vector<int64_t> new_row(plan.phy2log.begin() + layer * 40,
                                               plan.phy2log.begin() + (layer + 1) * 40);
            EXPECT_LE(policies::weight_copies(old_row.data(), new_row.data(), 40, shape.num_ranks),
                      cap) << "cap=" << cap;
        }
    }
}

TEST(FlashLB, DegenerateLoadsGiveValidPlans) {
    // All-zero load, one expert, no redundant slot.
    const Plan zero = run(std::vector<double>(16, 0.0), topology(16, 4, 5), 2);
    EXPECT_EQ(std::accumulate(zero.logcnt.begin(), zero.logcnt.end(), int64_t{0}), 20);
    const Plan single = run({5.0}, topology(1, 1, 1), 1);
    EXPECT_EQ(single.phy2log, std::vector<int64_t>{0});
    const Plan spread = run({5.0}, topology(1, 4, 1), 1);
    EXPECT_EQ(spread.logcnt, std::vector<int64_t>{4});
}

TEST(FlashLB, BadInputNamesTheField) {
    const Topology topo = topology(4, 2, 2);
    std::vector<double> load = {1, 2, std::nan(""), 4};
    EXPECT_NE(message_of([&] { (void)run(load, topo, 1); }).find("load"), std::string::npos);
    load = {1, 2, -3, 4};
    EXPECT_NE(message_of([&] { (void)run(load, topo, 1); }).find("load"), std::string::npos);
    load = {1, 2, 3, 4};
    Options options;
    options.width = -1;
    EXPECT_NE(message_of([&] { (void)run(load, topo, 1, nullptr, options); }).find("width"),
              std::string::npos);
    const std::vector<int64_t> current = {0, 1, 2, 7};
    EXPECT_NE(message_of([&] { (void)run(load, topo, 1, current.data()); }).find("current"),
              std::string::npos);
    options = Options{};
    options.incremental = true;
    EXPECT_NE(message_of([&] { (void)run(load, topo, 1, nullptr, options); }).find("current"),
              std::string::npos);
    EXPECT_NE(message_of([&] { (void)run(load, topology(4, 2, 5), 1); }).find("num_replicas"),
              std::string::npos);
    options = Options{};
    options.keep_margin = -0.5;
    EXPECT_NE(message_of([&] { (void)run(load, topo, 1, nullptr, options); }).find("keep_margin"),
              std::string::npos);
}

TEST(FlashLB, EpisodesCoverEveryChunkWhenMoreThanTheCap) {
    // 10 steps of 1: at most 4 episodes, so runs of 2 or 3 adjacent steps merge; all 10 count.
    EXPECT_EQ(episode_bounds(10, 1, 4), (std::vector<int64_t>{0, 2, 2, 5, 5, 7, 7, 10}));
    // Under the cap: one chunk each; the trailing partial chunk is dropped.
    EXPECT_EQ(episode_bounds(10, 3, 8), (std::vector<int64_t>{0, 3, 3, 6, 6, 9}));
    // Fewer steps than one chunk: the one episode is all of them.
    EXPECT_EQ(episode_bounds(5, 16, 64), (std::vector<int64_t>{0, 5}));
}

// Integer token counts are read as they are: the same plan as the same values in float64. A bad
// value is named by its row (step * L + layer) and expert, the first one in the array even when
// the scan runs on several threads.
TEST(FlashLB, IntegerHistoryPlansLikeFloatHistory) {
    const int64_t num_steps = 700;  // 1400 rows: three validation chunks
    const std::vector<double> layer_load = random_load(num_steps * 2, 16, 3);
    const std::vector<int64_t> counts(layer_load.begin(), layer_load.end());
    std::vector<double> load(32, 0.0);
    for (size_t i = 0; i < layer_load.size(); ++i) {
        load[i % 32] += layer_load[i];
    }
    const Topology topo = topology(16, 4, 5);
    const auto plan_with = [&](const HistoryView& history, int threads) {
        Request request;
        request.load = LoadView{load.data(), 2, 16};
        request.history = history;
        Options options;
        options.episode_steps = 10;
        ThreadPool pool(threads);
        return plan_flashlb(request, topo, options, pool);
    };
    const Plan from_loads = plan_with(HistoryView{layer_load.data(), nullptr, num_steps}, 1);
    EXPECT_EQ(plan_with(HistoryView{nullptr, counts.data(), num_steps}, 2).phy2log,
              from_loads.phy2log);
    std::vector<int64_t> bad = counts;
    bad[1300 * 16 + 5] = -2;
    bad[600 * 16 + 7] = -1;
    for (int threads : {1, 3}) {
        const std::string message = message_of(
            [&] { (void)plan_with(HistoryView{nullptr, bad.data(), num_steps}, threads); });
        EXPECT_NE(message.find("history: negative value -1 at row 600, expert 7"),
                  std::string::npos)
            << message;
    }
}

// A placement given a score it cannot reach gives up (an empty row); given one just above its
// score, it is the placement made without the threshold, also when every other step carries a
// millionth of the others' tokens (the float32 deviations are then large next to those steps'
// loads, and the floor must not overshoot there).
class PlacementGivesUp : public ::testing::TestWithParam<double> {};

TEST_P(PlacementGivesUp, OnlyOnAScoreItCannotBeat) {
    const int64_t num_steps = 12;
    const int64_t num_experts = 24;
    const LayerShape shape{num_experts, 6, 5};
    std::vector<double> history = random_load(num_steps, num_experts, 11);
    for (size_t i = 0; i < history.size(); i += 2 * static_cast<size_t>(num_experts)) {
        for (size_t e = i; e < i + static_cast<size_t>(num_experts); ++e) {
            history[e] *= GetParam();  // every other step scaled
        }
    }
    const EpisodeStats stats =
        stats_from_history(HistoryView{history.data(), nullptr, num_steps}, 1, num_experts, 0,
                           episode_bounds(num_steps, 1, 64), 0.674);
    std::vector<int64_t> experts(static_cast<size_t>(num_experts));
    std::iota(experts.begin(), experts.end(), 0);
    std::vector<int64_t> counts(experts.size(), 1);
    policies::allot_min_max(stats.risk, experts, shape.num_physical() - num_experts, shape.num_ranks,
                  counts);
    std::vector<int64_t> by_mean = experts;
    std::stable_sort(by_mean.begin(), by_mean.end(), [&](int64_t a, int64_t b) {
        return stats.mean[static_cast<size_t>(a)] > stats.mean[static_cast<size_t>(b)];
    });
    LptObjective objective{&stats, 0.674};
    const std::vector<int64_t> row = place_lpt(stats.mean, by_mean, counts, shape, objective);
    const double score = episode_score(stats, row, counts, shape.num_ranks);
    ASSERT_GT(score, 1.0);
    if (GetParam() == 1.0) {
        objective.give_up_at = 0.99 * score;
        EXPECT_TRUE(place_lpt(stats.mean, by_mean, counts, shape, objective).empty());
    }
    objective.give_up_at = score * (1.0 + 1e-6);
    EXPECT_EQ(place_lpt(stats.mean, by_mean, counts, shape, objective), row);
}

INSTANTIATE_TEST_SUITE_P(FlashLB, PlacementGivesUp, ::testing::Values(1.0, 1e-6));

}  // namespace
}  // namespace eplb_native::flashlb
