#include "eplb_native/thread_pool.h"

#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <numeric>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define EPLB_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define EPLB_SANITIZED 1
#endif
#endif

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

TEST(ThreadPool, ZeroMeansTheUsableCores) {
    const int cores = usable_cores();
    EXPECT_GE(cores, 1);
    EXPECT_LE(cores, static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
    ThreadPool pool(0);
    EXPECT_EQ(pool.num_threads(), cores);
}

TEST(ThreadPool, APoolOnSharedWorkersUsesAtMostItsThreads) {
    ThreadPool shared(4);
    ThreadPool one(shared, 1);
    ThreadPool all(shared, 0);
    ThreadPool more(shared, 64);
    EXPECT_EQ(one.num_threads(), 1);
    EXPECT_EQ(all.num_threads(), shared.num_threads());
    EXPECT_EQ(more.num_threads(), shared.num_threads());
    // One thread: everything runs on the caller.
    std::set<std::thread::id> ran_on;
    one.parallel_for(100, [&](int64_t) { ran_on.insert(std::this_thread::get_id()); });
    EXPECT_EQ(ran_on, std::set<std::thread::id>{std::this_thread::get_id()});
}

TEST(ThreadPool, ConcurrentCallersOnSharedWorkersEachGetTheirIndices) {
    ThreadPool shared(3);
    constexpr int kCallers = 6;
    constexpr int64_t kIndices = 2000;
    std::vector<std::vector<int>> hits(kCallers, std::vector<int>(kIndices, 0));
    std::vector<std::thread> callers;
    for (int c = 0; c < kCallers; ++c) {
        callers.emplace_back([&, c] {
            ThreadPool pool(shared, 1 + c % 3);
            for (int round = 0; round < 20; ++round) {
                pool.parallel_for(kIndices, [&](int64_t i) { ++hits[c][static_cast<size_t>(i)]; });
            }
        });
    }
    for (auto& caller : callers) {
        caller.join();
    }
    for (int c = 0; c < kCallers; ++c) {
        for (int64_t i = 0; i < kIndices; ++i) {
            ASSERT_EQ(hits[c][static_cast<size_t>(i)], 20) << "caller " << c << " index " << i;
        }
    }
}

// Under an address-space limit that leaves room for only a few thread stacks, a pool asked for
// 64 threads runs on those it could start (it neither throws nor hangs). Runs in a child process
// (the limit must not touch this one) with an alarm as the timeout; sanitizers reserve far more
// address space than any such limit allows, so sanitized builds skip it.
TEST(ThreadPool, RunsOnTheThreadsItGetsWhenTheSystemRefusesMore) {
#ifdef EPLB_SANITIZED
    GTEST_SKIP() << "address-space limits do not mix with sanitizer shadow memory";
#else
    const pid_t child = fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
        alarm(20);
        std::ifstream status("/proc/self/status");
        std::string key;
        long long vm_kib = 0;
        while (status >> key && key != "VmSize:") {
        }
        status >> vm_kib;
        const rlim_t limit = static_cast<rlim_t>(vm_kib + 48 * 1024) * 1024;  // ~5 stacks of 8 MiB
        const rlimit cap{limit, limit};
        if (vm_kib == 0 || setrlimit(RLIMIT_AS, &cap) != 0) {
            _exit(3);
        }
        ThreadPool pool(64);
        std::atomic<int64_t> sum{0};
        pool.parallel_for(1000, [&](int64_t i) { sum += i; });
        const bool ok = pool.num_threads() >= 1 && pool.num_threads() < 64 && sum == 499500;
        _exit(ok ? 0 : 1);
    }
    int status = 0;
    ASSERT_EQ(waitpid(child, &status, 0), child);
    ASSERT_TRUE(WIFEXITED(status)) << "the child was killed (signal " << WTERMSIG(status)
                                   << "): the pool hung or crashed";
    EXPECT_EQ(WEXITSTATUS(status), 0);
#endif
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
