#include "eplb_native/plan.h"

#include <gtest/gtest.h>

#include <functional>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "eplb_native/error.h"

namespace eplb_native {
namespace {

// vllm-ascend's fixture layout: 2 devices x 5 slots, experts 0..7, 7 and 2 replicated.
const std::vector<int64_t> kFixture = {7, 2, 0, 3, 5, 6, 1, 4, 7, 2};


std::string message_of(const std::function<void()>& fn) {
    try {
        fn();
    } catch (const std::invalid_argument& error) {
        return error.what();
    }
    return "";
}

TEST(Plan, DerivesLog2PhyAndLogcntFromPhy2Log) {
    const Plan plan = plan_from_phy2log(kFixture.data(), 1, 10, 8);
    EXPECT_EQ(plan.max_replicas, 2);
    EXPECT_EQ(plan.logcnt, (std::vector<int64_t>{1, 1, 2, 1, 1, 1, 1, 2}));
    // Expert 7 lives in slots 0 and 8, expert 2 in 1 and 9, expert 0 in slot 2 only.
    EXPECT_EQ(plan.log2phy[7 * 2], 0);
    EXPECT_EQ(plan.log2phy[7 * 2 + 1], 8);
    EXPECT_EQ(plan.log2phy[2 * 2], 1);
    EXPECT_EQ(plan.log2phy[2 * 2 + 1], 9);
    EXPECT_EQ(plan.log2phy[0 * 2 + 1], -1);
    EXPECT_NO_THROW(validate_plan(view_of(plan), 2, false));
}

TEST(Plan, RejectsMissingExpertAndOutOfRangeIdsNamingTheField) {
    std::vector<int64_t> missing = kFixture;
    missing[2] = 7;  // expert 0 gone
    EXPECT_NE(message_of([&] { (void)plan_from_phy2log(missing.data(), 1, 10, 8); })
                  .find("phy2log: layer 0: expert 0 has no replica"),
              std::string::npos);
    std::vector<int64_t> out_of_range = kFixture;
    out_of_range[3] = 8;
    EXPECT_NE(message_of([&] { (void)plan_from_phy2log(out_of_range.data(), 1, 10, 8); })
                  .find("phy2log: layer 0, slot 3: expert id 8 outside [0, 8)"),
              std::string::npos);
}

TEST(Plan, ValidateRejectsDuplicatesOnOneRankUnlessAllowed) {
    const std::vector<int64_t> duplicate = {7, 7, 0, 3, 5, 6, 1, 4, 2, 2};
    const Plan plan = plan_from_phy2log(duplicate.data(), 1, 10, 8);
    EXPECT_NE(message_of([&] { validate_plan(view_of(plan), 2, false); })
                  .find("rank 0 holds expert 7 twice"),
              std::string::npos);
    EXPECT_NO_THROW(validate_plan(view_of(plan), 2, true));
}

TEST(Plan, ValidateRejectsInconsistentMaps) {
    Plan plan = plan_from_phy2log(kFixture.data(), 1, 10, 8);
    plan.logcnt[3] = 2;
    EXPECT_EQ(message_of([&] { validate_plan(view_of(plan), 2, false); }).rfind("logcnt:", 0), 0u);
    plan = plan_from_phy2log(kFixture.data(), 1, 10, 8);
    plan.log2phy[7 * 2 + 1] = 3;  // slot 3 holds expert 3, not 7
    EXPECT_EQ(message_of([&] { validate_plan(view_of(plan), 2, false); }).rfind("log2phy:", 0), 0u);
    plan = plan_from_phy2log(kFixture.data(), 1, 10, 8);
    EXPECT_EQ(message_of([&] { validate_plan(view_of(plan), 3, false); }).rfind("num_ranks:", 0), 0u);
}

TEST(Plan, RankExpertMapsGiveLocalSlotsOrMinusOne) {
    const Plan plan = plan_from_phy2log(kFixture.data(), 1, 10, 8);
    const auto maps = rank_expert_maps(plan, 2);  // [2, 1, 8]
    const std::vector<int64_t> rank0 = {2, -1, 1, 3, -1, 4, -1, 0};
    const std::vector<int64_t> rank1 = {-1, 1, 4, -1, 2, -1, 0, 3};
    EXPECT_EQ(std::vector<int64_t>(maps.begin(), maps.begin() + 8), rank0);
    EXPECT_EQ(std::vector<int64_t>(maps.begin() + 8, maps.end()), rank1);
}

TEST(Plan, RankLog2PhyPrefersLocalReplicaAndSplitsOtherRanksEvenly) {
    // 4 ranks x 1 slot... use 8 ranks x 2 slots: expert 0 replicated on ranks 0 and 5.
    std::vector<int64_t> phy2log(16);
    for (int64_t p = 0; p < 16; ++p) {
        phy2log[static_cast<size_t>(p)] = p % 15;  // slot 15 is a second copy of expert 0
    }
    const Plan plan = plan_from_phy2log(phy2log.data(), 1, 16, 15);
    const auto routes = rank_log2phy(plan, 8);  // [8, 1, 15]
    int64_t to_slot0 = 0;
    int64_t to_slot15 = 0;
    for (int64_t rank = 0; rank < 8; ++rank) {
        const int64_t slot = routes[static_cast<size_t>(rank * 15 + 0)];
        if (rank == 0) {
            EXPECT_EQ(slot, 0);
        }
        if (rank == 7) {
            EXPECT_EQ(slot, 15);
        }
        to_slot0 += slot == 0;
        to_slot15 += slot == 15;
    }
    EXPECT_EQ(to_slot0, 4);
    EXPECT_EQ(to_slot15, 4);
}

TEST(Plan, ValidateLoadValuesNamesTheProblem) {
    const double nan = std::numeric_limits<double>::quiet_NaN();
    const std::vector<double> loads = {1.0, 2.0, nan, 4.0};
    EXPECT_NE(message_of([&] { validate_load_values(loads.data(), 4, 2, "load"); })
                  .find("load: NaN value"),
              std::string::npos);
    const std::vector<double> negative = {1.0, -2.0};
    EXPECT_NE(message_of([&] { validate_load_values(negative.data(), 2, 2, "load"); })
                  .find("load: negative value"),
              std::string::npos);
}

TEST(Plan, ValidateLoadValuesRefusesFiniteValuesWhoseSumOverflows) {
    const std::vector<double> huge(16, 5e307);
    EXPECT_NE(message_of([&] { validate_load_values(huge.data(), 16, 16, "load"); })
                  .find("load: the values sum beyond 1e300"),
              std::string::npos);
    const std::vector<double> fine = {1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0};
    EXPECT_EQ(validate_load_values(fine.data(), 9, 3, "load"), 45.0);
}

TEST(Plan, RefusesSizesBeyondTheSlotsBeforeAllocating) {
    // 2^40 experts cannot each have one of 10 slots: refused before logcnt [L, N] is allocated.
    EXPECT_NE(message_of([&] { (void)plan_from_phy2log(kFixture.data(), 1, 10, int64_t{1} << 40); })
                  .find("phy2log: 10 physical slots cannot hold num_experts=1099511627776"),
              std::string::npos);
    EXPECT_NE(message_of([&] { (void)require_array_size("num_replicas", {2, int64_t{1} << 40}, "a plan"); })
                  .find("num_replicas: a plan (2 x 1099511627776 elements) exceeds the limit"),
              std::string::npos);
    // The product is formed without overflowing int64.
    EXPECT_NE(message_of([&] {
                  (void)require_array_size("x", {int64_t{1} << 62, int64_t{1} << 62, 4}, "x");
              }).find("exceeds the limit"),
              std::string::npos);
    EXPECT_EQ(require_array_size("x", {3, 0, int64_t{1} << 62}, "x"), 0);
    EXPECT_EQ(require_array_size("x", {1 << 14, 1 << 14}, "x"), kMaxArrayElements);
}

// The fixture by hand: rank 0 holds slots 0-4 (experts 7, 2, 0, 3, 5), rank 1 slots 5-9
// (6, 1, 4, 7, 2); experts 7 and 2 have two replicas each.
TEST(Plan, LoadConversionsFollowTheSlots) {
    const Plan plan = plan_from_phy2log(kFixture.data(), 1, 10, 8);
    const std::vector<double> load = {1, 2, 4, 8, 16, 32, 64, 128,  // row 0: expert e has 2^e
                                      0, 0, 6, 0, 0, 0, 0, 10};     // row 1
    std::vector<double> per_rank(4, -1.0);
    rank_loads(plan, load.data(), 2, 2, per_rank.data());
    EXPECT_EQ(per_rank, (std::vector<double>{64 + 2 + 1 + 8 + 32, 64 + 2 + 16 + 64 + 2,  //
                                             5 + 3 + 0, 0 + 0 + 0 + 5 + 3}));
    const std::vector<double> slots = {3, 1, 1, 1, 1, 1, 1, 1, 5, 2};
    std::vector<double> per_expert(8, -1.0);
    expert_load_from_slot_load(plan, slots.data(), 1, per_expert.data());
    EXPECT_EQ(per_expert, (std::vector<double>{1, 1, 3, 1, 1, 1, 1, 8}));
    EXPECT_NE(message_of([&] { rank_loads(plan, load.data(), 2, 3, per_rank.data()); })
                  .find("num_ranks: 10 physical slots cannot be split evenly over 3 ranks"),
              std::string::npos);
}

}  // namespace
}  // namespace eplb_native
