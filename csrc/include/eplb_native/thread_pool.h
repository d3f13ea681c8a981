#pragma once
// A pool of std::thread workers with a deterministic parallel_for, and the number of cores this
// process may use.

#include <cstdint>
#include <functional>
#include <memory>

namespace eplb_native {

// The most threads a pool may be asked for; larger requests are bad input, not a machine size.
constexpr int kMaxThreads = 4096;

// Cores this process may run on: its CPU affinity mask, further capped by a cgroup CPU quota
// (v2 cpu.max of its cgroup and their parents, or v1 cpu.cfs_quota_us / cpu.cfs_period_us),
// rounded up; at least 1.
[[nodiscard]] int usable_cores();

// A pool of `num_threads - 1` workers; the thread calling parallel_for is the last worker, so a
// pool of one thread runs everything inline. No global state: the caller owns its pools.
//
// parallel_for(n, fn) runs fn(i) for every i in [0, n) and returns when all are done. If any
// call throws, the exception of the lowest index is rethrown on the caller after all tasks have
// finished, whatever the thread count. Calls from inside a task on the same workers (nested
// parallelism, e.g. a tree search inside a per-layer task) run inline instead of deadlocking.
// Several threads may call parallel_for on pools sharing the same workers at once: each call
// runs its own indices and waits only for the indices other threads took from it.
class ThreadPool {
public:
    // Starts num_threads - 1 workers (num_threads <= 0: usable_cores()). When the system
    // refuses a thread (a pids or memory limit), the pool keeps the workers it started:
    // num_threads() says how many threads run.
    explicit ThreadPool(int num_threads = 0);
    // A pool on `shared`'s workers whose parallel_for uses at most `num_threads` threads
    // (<= 0 or more than `shared` has: all of them). The workers live while any pool on them
    // does.
    ThreadPool(const ThreadPool& shared, int num_threads);
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    // Threads a parallel_for of this pool runs on, the caller included.
    [[nodiscard]] int num_threads() const { return num_threads_; }

    void parallel_for(int64_t n, const std::function<void(int64_t)>& fn);

private:
    class Workers;

    std::shared_ptr<Workers> workers_;
    int num_threads_ = 1;
};

}  // namespace eplb_native
