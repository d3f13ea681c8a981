#include "eplb_native/thread_pool.h"

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <exception>
#include <fstream>
#include <mutex>
#include <new>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

namespace eplb_native {
namespace {

// CPUs granted by a cgroup quota file: v2 "cpu.max" holds "<quota> <period>" or "max <period>",
// v1 splits them over cpu.cfs_quota_us (-1: none) and cpu.cfs_period_us. 0 when unlimited or
// unreadable.
double quota_cpus(const std::string& quota_file, const std::string& period_file) {
    std::ifstream quota_in(quota_file);
    std::string quota_text;
    if (!(quota_in >> quota_text) || quota_text == "max" || quota_text == "-1") {
        return 0.0;
    }
    double period = 0.0;
    if (period_file.empty()) {
        quota_in >> period;
    } else {
        std::ifstream(period_file) >> period;
    }
    double quota = 0.0;
    try {
        quota = std::stod(quota_text);
    } catch (const std::exception&) {
        return 0.0;
    }
    return quota > 0.0 && period > 0.0 ? quota / period : 0.0;
}

// The smallest CPU quota over this process's cgroup and its parents (0: none).
double cgroup_cpus() {
    double cpus = 0.0;
    const auto take = [&cpus](double found) {
        if (found > 0.0 && (cpus == 0.0 || found < cpus)) {
            cpus = found;
        }
    };
    std::ifstream membership("/proc/self/cgroup");
    std::string line;
    while (std::getline(membership, line)) {
        if (line.rfind("0::", 0) == 0) {  // cgroup v2: "0::/path/of/the/cgroup"
            std::string path = line.substr(3);
            for (;;) {
                take(quota_cpus("/sys/fs/cgroup" + path + "/cpu.max", ""));
                if (path.empty() || path == "/") {
                    break;
                }
                path = path.substr(0, path.find_last_of('/'));
            }
        }
    }
    for (const char* dir : {"/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct"}) {  // cgroup v1
        take(quota_cpus(std::string(dir) + "/cpu.cfs_quota_us",
                        std::string(dir) + "/cpu.cfs_period_us"));
    }
    return cpus;
}

}  // namespace

int usable_cores() {
    int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    const int max_cpus = std::max(cores, 1024);
    cpu_set_t* set = CPU_ALLOC(max_cpus);
    if (set != nullptr) {
        const size_t size = CPU_ALLOC_SIZE(max_cpus);
        CPU_ZERO_S(size, set);
        if (sched_getaffinity(0, size, set) == 0) {
            cores = std::max(1, CPU_COUNT_S(size, set));
        }
        CPU_FREE(set);
    }
    const double quota = cgroup_cpus();
    if (quota > 0.0) {
        cores = std::min(cores, std::max(1, static_cast<int>(std::ceil(quota))));
    }
    return cores;
}

// The worker threads and their task queue, shared by every pool made on them.
class ThreadPool::Workers {
public:
    explicit Workers(int num_threads) {
        threads_.reserve(static_cast<size_t>(num_threads - 1));
        for (int i = 1; i < num_threads; ++i) {
            try {
                threads_.emplace_back([this] { loop(); });
            } catch (const std::system_error&) {
                break;  // the system refuses more threads: run on those started
            } catch (const std::bad_alloc&) {
                break;
            }
        }
    }

    ~Workers() {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            stopping_ = true;
        }
        ready_.notify_all();
        for (auto& thread : threads_) {
            thread.join();
        }
    }

    Workers(const Workers&) = delete;
    Workers& operator=(const Workers&) = delete;

    // Threads a parallel_for can use: the workers and the caller.
    [[nodiscard]] int size() const { return static_cast<int>(threads_.size()) + 1; }

    void post(int64_t count, const std::function<void()>& task) {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            for (int64_t i = 0; i < count; ++i) {
                tasks_.push_back(task);
            }
        }
        ready_.notify_all();
    }

private:
    void loop() {
        for (;;) {
            std::function<void()> task;
            {
                std::unique_lock<std::mutex> lock(mutex_);
                ready_.wait(lock, [this] { return stopping_ || !tasks_.empty(); });
                if (tasks_.empty()) {
                    return;  // stopping and drained
                }
                task = std::move(tasks_.front());
                tasks_.pop_front();
            }
            task();
        }
    }

    std::mutex mutex_;
    std::condition_variable ready_;
    std::deque<std::function<void()>> tasks_;
    bool stopping_ = false;
    std::vector<std::thread> threads_;
};

namespace {

// The workers whose task the current thread is running (nullptr outside any task).
thread_local const void* tls_current_workers = nullptr;

class CurrentWorkersScope {
public:
    explicit CurrentWorkersScope(const void* workers) : previous_(tls_current_workers) {
        tls_current_workers = workers;
    }
    ~CurrentWorkersScope() { tls_current_workers = previous_; }
    CurrentWorkersScope(const CurrentWorkersScope&) = delete;
    CurrentWorkersScope& operator=(const CurrentWorkersScope&) = delete;

private:
    const void* previous_;
};

}  // namespace

ThreadPool::ThreadPool(int num_threads)
    : workers_(std::make_shared<Workers>(num_threads <= 0 ? usable_cores() : num_threads)),
      num_threads_(workers_->size()) {}

ThreadPool::ThreadPool(const ThreadPool& shared, int num_threads)
    : workers_(shared.workers_),
      num_threads_(num_threads <= 0 ? workers_->size() : std::min(num_threads, workers_->size())) {}

ThreadPool::~ThreadPool() = default;

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t)>& fn) {
    if (n <= 0) {
        return;
    }
    // Shared by the caller and the helpers. Indices are claimed dynamically, but every index
    // writes only its own outputs, so the result does not depend on who ran it. A helper that
    // starts after every index was claimed returns at once (it never touches `fn`, which lives
    // only as long as this call), so the caller waits for claimed indices, not for helpers.
    struct State {
        std::atomic<int64_t> next{0};
        std::atomic<int64_t> done{0};
        std::mutex mutex;
        std::condition_variable done_cv;
        int64_t error_index = -1;
        std::exception_ptr error;
    };
    auto state = std::make_shared<State>();
    const Workers* owner = workers_.get();
    const std::function<void(int64_t)>* body = &fn;
    auto run_indices = [state, owner, body, n] {
        CurrentWorkersScope scope(owner);
        for (int64_t i = state->next.fetch_add(1); i < n; i = state->next.fetch_add(1)) {
            try {
                (*body)(i);
            } catch (...) {
                std::lock_guard<std::mutex> lock(state->mutex);
                if (state->error_index < 0 || i < state->error_index) {
                    state->error_index = i;
                    state->error = std::current_exception();
                }
            }
            if (state->done.fetch_add(1) + 1 == n) {
                std::lock_guard<std::mutex> lock(state->mutex);
                state->done_cv.notify_all();
            }
        }
    };

    const bool nested = tls_current_workers == owner;
    const int64_t num_helpers = nested ? 0 : std::min<int64_t>(num_threads_ - 1, n - 1);
    if (num_helpers > 0) {
        workers_->post(num_helpers, run_indices);
    }
    run_indices();
    {
        std::unique_lock<std::mutex> lock(state->mutex);
        state->done_cv.wait(lock, [&state, n] { return state->done.load() == n; });
    }
    if (state->error) {
        std::rethrow_exception(state->error);
    }
}

}  // namespace eplb_native
