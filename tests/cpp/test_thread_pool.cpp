#include "eplb_native/thread_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <numeric>
#include <stdexcept>
#include <vector>

namespace eplb_native {
namespace {

TEST(ThreadPool, RunsEveryIndexExactlyOnce) {
    for (int threads : {1, 2, 4}) {
        ThreadPool pool(threads);
        EXPECT_EQ(pool.num_threads(), threads);
        std::vector<std::atomic<int>> hits(1000);
        pool.parallel_for(1000, [&](int64_t i) { hits[static_cast<size_t>(i)]++; });
        for (size_t i = 0; i < hits.size(); ++i) {
            ASSERT_EQ(hits[i].load(), 1) << "threads=" << threads << " i=" << i;
        }
    }
}

TEST(ThreadPool, ZeroMeansHardwareConcurrency) {
    ThreadPool pool(0);
    EXPECT_GE(pool.num_threads(), 1);
}

TEST(ThreadPool, EmptyRangeDoesNothing) {
    ThreadPool pool(2);
    int calls = 0;
    pool.parallel_for(0, [&](int64_t) { ++calls; });
    EXPECT_EQ(calls, 0);
}

TEST(ThreadPool, RethrowsTheLowestIndexExceptionOnTheCaller) {
    for (int threads : {1, 2, 4}) {
        ThreadPool pool(threads);
        std::atomic<int> finished{0};
        try {
            pool.parallel_for(64, [&](int64_t i) {
                if (i == 7 || i == 40) {
                    throw std::invalid_argument("task " + std::to_string(i));
                }
                finished++;
            });
            FAIL() << "no exception, threads=" << threads;
        } catch (const std::invalid_argument& error) {
            EXPECT_STREQ(error.what(), "task 7") << "threads=" << threads;
        }
        // Every other task still ran: a failing task does not abandon its siblings mid-flight.
        EXPECT_EQ(finished.load(), 62);
        // The pool stays usable afterwards.
        std::atomic<int> after{0};
        pool.parallel_for(10, [&](int64_t) { after++; });
        EXPECT_EQ(after.load(), 10);
    }
}

TEST(ThreadPool, NestedParallelForRunsInlineWithoutDeadlock) {
    ThreadPool pool(2);
    std::vector<int64_t> sums(8, 0);
    pool.parallel_for(8, [&](int64_t outer) {
        std::vector<int64_t> inner(100, 0);
        pool.parallel_for(100, [&](int64_t i) { inner[static_cast<size_t>(i)] = i * outer; });
        sums[static_cast<size_t>(outer)] = std::accumulate(inner.begin(), inner.end(), int64_t{0});
    });
    for (int64_t outer = 0; outer < 8; ++outer) {
        EXPECT_EQ(sums[static_cast<size_t>(outer)], 4950 * outer);
    }
}

}  // namespace
}  // namespace eplb_native
