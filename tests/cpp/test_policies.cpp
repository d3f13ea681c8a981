#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <vector>

#include "eplb_native/plan.h"
#include "eplb_native/policies/building_blocks.h"
#include "eplb_native/policies/default_eplb.h"
#include "eplb_native/policies/random_placement.h"
#include "eplb_native/policies/swift_balancer.h"
#include "eplb_native/thread_pool.h"
#include "eplb_native/topology.h"

namespace eplb_native::policies {
namespace {

Topology make_topo(int64_t n, int64_t p, int64_t g, int64_t h, int64_t d) {
    Topology topo;
    topo.num_experts = n;
    topo.num_replicas = p;
    topo.num_groups = g;
    topo.num_nodes = h;
    topo.num_ranks = d;
    return topo;
}

void expect_valid(const Plan& plan, int64_t num_ranks, bool allow_duplicate) {
    EXPECT_NO_THROW(validate_plan(view_of(plan), num_ranks, allow_duplicate));
}

// Max rank load of one layer with each expert's load split evenly over its replicas.
double max_rank_load(const int64_t* row, const double* load, const Topology& topo) {
    std::vector<int64_t> count(static_cast<size_t>(topo.num_experts), 0);
    for (int64_t p = 0; p < topo.num_replicas; ++p) ++count[static_cast<size_t>(row[p])];
    std::vector<double> rank(static_cast<size_t>(topo.num_ranks), 0.0);
    for (int64_t p = 0; p < topo.num_replicas; ++p) {
        const auto e = static_cast<size_t>(row[p]);
        rank[static_cast<size_t>(p / topo.slots_per_rank())] += load[e] / static_cast<double>(count[e]);
    }
    return *std::max_element(rank.begin(), rank.end());
}

std::vector<double> synthetic_load(int64_t layers, int64_t experts, uint64_t seed) {
    std::vector<double> load(static_cast<size_t>(layers * experts));
    for (size_t i = 0; i < load.size(); ++i) {
        const uint64_t z = layer_seed(seed, static_cast<int64_t>(i));
        load[i] = static_cast<double>(z % 1000) * static_cast<double>(1 + (z >> 60));
    }
    return load;
}

// Source: deepseek-ai/EPLB README.md (usage example and its printed phy2log).
TEST(DefaultEplb, ReproducesDeepSeekReadmeExample) {
    const std::vector<double> weight = {90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86,
                                        20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27};
    const std::vector<int64_t> expected = {5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1,
                                           7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1};
    ThreadPool pool(2);
    const Plan plan = plan_default_eplb({weight.data(), 2, 12}, make_topo(12, 16, 4, 2, 8), pool);
    EXPECT_EQ(plan.phy2log, expected);
    expect_valid(plan, 8, true);
}

// FlashLB's published example: DeepSeek's algorithm reaches a max rank load of 232 and puts
// two replicas of expert 1 on the last rank (default_eplb keeps DeepSeek's output).
TEST(DefaultEplb, FlashLbExampleMaxLoad232) {
    const std::vector<double> load = {600, 560, 120, 120, 20, 10, 10, 10};
    const Topology topo = make_topo(8, 16, 1, 1, 8);
    ThreadPool pool(1);
    const Plan plan = plan_default_eplb({load.data(), 1, 8}, topo, pool);
    EXPECT_DOUBLE_EQ(max_rank_load(plan.phy2log.data(), load.data(), topo), 232.0);
    EXPECT_EQ(plan.phy2log[14], 1);
    EXPECT_EQ(plan.phy2log[15], 1);
}

TEST(Policies, IdenticalForAnyThreadCount) {
    const Topology topo = make_topo(64, 96, 8, 4, 16);
    const std::vector<double> load = synthetic_load(13, 64, 7);
    const LoadView view{load.data(), 13, 64};
    ThreadPool one(1);
    const Plan reference = plan_default_eplb(view, topo, one);
    const Plan random_ref = plan_random(13, topo, 5, one);
    const Plan swift_ref = plan_swift_balancer(view, topo, random_ref.phy2log.data(), {}, one);
    for (int threads : {2, 4}) {
        ThreadPool pool(threads);
        EXPECT_EQ(plan_default_eplb(view, topo, pool).phy2log, reference.phy2log);
        EXPECT_EQ(plan_random(13, topo, 5, pool).phy2log, random_ref.phy2log);
        EXPECT_EQ(plan_swift_balancer(view, topo, random_ref.phy2log.data(), {}, pool).phy2log,
                  swift_ref.phy2log);
    }
    expect_valid(reference, 16, true);
    expect_valid(random_ref, 16, false);
    expect_valid(swift_ref, 16, false);
}

TEST(SwiftBalancer, NeverWorseAndRespectsMoveBudget) {
    ThreadPool pool(2);
    for (uint64_t seed = 0; seed < 20; ++seed) {
        const int64_t d = 2 + static_cast<int64_t>(seed % 5);
        const int64_t s = 1 + static_cast<int64_t>(seed % 3);
        const int64_t n = d * s - static_cast<int64_t>(seed % 2);
        const Topology topo = make_topo(n, d * s, 1, 1, d);
        const std::vector<double> load = synthetic_load(3, n, seed);
        const Plan current = plan_random(3, topo, seed, pool);
        for (int64_t budget : {0, 1, 2, 5}) {
            SwiftBalancerOptions options;
            options.max_moves_per_layer = budget;
            const Plan plan = plan_swift_balancer({load.data(), 3, n}, topo, current.phy2log.data(),
                                                  options, pool);
            expect_valid(plan, d, false);
            for (int64_t l = 0; l < 3; ++l) {
                const int64_t* before = current.phy2log.data() + l * topo.num_replicas;
                const int64_t* after = plan.phy2log.data() + l * topo.num_replicas;
                EXPECT_LE(max_rank_load(after, load.data() + l * n, topo),
                          max_rank_load(before, load.data() + l * n, topo));
                int64_t copies = 0;  // slots whose expert was not on that rank before
                for (int64_t p = 0; p < topo.num_replicas; ++p) {
                    const int64_t rank = p / s;
                    copies += std::find(before + rank * s, before + (rank + 1) * s, after[p]) ==
                              before + (rank + 1) * s;
                }
                EXPECT_LE(copies, budget);
            }
        }
    }
}

TEST(Policies, BadInputThrowsInvalidArgument) {
    ThreadPool pool(1);
    std::vector<double> load = {1, 2, 3, 4};
    EXPECT_THROW((void)plan_default_eplb({load.data(), 1, 4}, make_topo(4, 3, 1, 1, 1), pool),
                 std::invalid_argument);  // num_replicas < N
    EXPECT_THROW((void)plan_default_eplb({load.data(), 1, 4}, make_topo(4, 6, 1, 1, 4), pool),
                 std::invalid_argument);  // P % D
    EXPECT_THROW((void)plan_default_eplb({load.data(), 1, 4}, make_topo(4, 4, 3, 1, 1), pool),
                 std::invalid_argument);  // G does not divide N
    load[2] = -1.0;
    EXPECT_THROW((void)plan_default_eplb({load.data(), 1, 4}, make_topo(4, 4, 1, 1, 2), pool),
                 std::invalid_argument);
    load[2] = 3.0;
    const std::vector<int64_t> missing = {0, 1, 2, 2};
    EXPECT_THROW((void)plan_swift_balancer({load.data(), 1, 4}, make_topo(4, 4, 1, 1, 2),
                                           missing.data(), {}, pool),
                 std::invalid_argument);
    EXPECT_THROW((void)plan_swift_balancer({load.data(), 1, 4}, make_topo(4, 4, 1, 1, 2), nullptr,
                                           {}, pool),
                 std::invalid_argument);
}

TEST(BuildingBlocks, LptAvoidsDuplicatesAndBalances) {
    // Expert 0 has two replicas of 50; LPT must put them on different ranks.
    const std::vector<int64_t> experts = {0, 0, 1, 2};
    const std::vector<double> loads = {50, 50, 30, 20};
    const std::vector<int64_t> phy2log = lpt_place(experts, loads, 3, 2);
    EXPECT_NE(phy2log[0], phy2log[1]);
    EXPECT_NE(phy2log[2], phy2log[3]);
}

}  // namespace
}  // namespace eplb_native::policies
