#pragma once
// A caller-owned pool of std::thread workers with a deterministic parallel_for.

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace eplb_native {

// Owns `num_threads - 1` worker threads; the calling thread is the last worker, so a pool of
// one thread runs everything inline. No global state: every planner call takes a pool.
//
// parallel_for(n, fn) runs fn(i) for every i in [0, n) and returns when all are done. If any
// call throws, the exception of the lowest index is rethrown on the caller after all tasks have
// finished, whatever the thread count. Calls from inside a task of the same pool (nested
// parallelism, e.g. a tree search inside a per-layer task) run inline instead of deadlocking.
class ThreadPool {
public:
    // num_threads <= 0 means std::thread::hardware_concurrency().
    explicit ThreadPool(int num_threads = 0);
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    [[nodiscard]] int num_threads() const { return static_cast<int>(workers_.size()) + 1; }

    void parallel_for(int64_t n, const std::function<void(int64_t)>& fn);

private:
    void worker_loop();

    std::vector<std::thread> workers_;
    std::deque<std::function<void()>> tasks_;
    std::mutex mutex_;
    std::condition_variable task_ready_;
    bool stopping_ = false;
};

}  // namespace eplb_native
