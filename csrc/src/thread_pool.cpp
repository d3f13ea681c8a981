#include "eplb_native/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <exception>
#include <memory>

namespace eplb_native {
namespace {

// The pool whose task the current thread is running (nullptr outside any task).
thread_local const ThreadPool* tls_current_pool = nullptr;

class CurrentPoolScope {
public:
    explicit CurrentPoolScope(const ThreadPool* pool) : previous_(tls_current_pool) {
        tls_current_pool = pool;
    }
    ~CurrentPoolScope() { tls_current_pool = previous_; }
    CurrentPoolScope(const CurrentPoolScope&) = delete;
    CurrentPoolScope& operator=(const CurrentPoolScope&) = delete;

private:
    const ThreadPool* previous_;
};

}  // namespace

ThreadPool::ThreadPool(int num_threads) {
    if (num_threads <= 0) {
        num_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    }
    workers_.reserve(static_cast<size_t>(num_threads - 1));
    for (int i = 1; i < num_threads; ++i) {
        workers_.emplace_back([this] { worker_loop(); });
    }
}

ThreadPool::~ThreadPool() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stopping_ = true;
    }
    task_ready_.notify_all();
    for (auto& worker : workers_) {
        worker.join();
    }
}

void ThreadPool::worker_loop() {
    for (;;) {
        std::function<void()> task;
        {
            std::unique_lock<std::mutex> lock(mutex_);
            task_ready_.wait(lock, [this] { return stopping_ || !tasks_.empty(); });
            if (tasks_.empty()) {
                return;  // stopping and drained
            }
            task = std::move(tasks_.front());
            tasks_.pop_front();
        }
        task();
    }
}

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t)>& fn) {
    if (n <= 0) {
        return;
    }
    // Shared by the caller and the helpers; indices are claimed dynamically, but every index
    // writes only its own outputs, so the result does not depend on who ran it.
    struct State {
        std::atomic<int64_t> next{0};
        std::mutex mutex;
        std::condition_variable done_cv;
        int64_t helpers_running = 0;
        int64_t error_index = -1;
        std::exception_ptr error;
    };
    auto state = std::make_shared<State>();
    auto run_indices = [this, state, n, &fn] {
        CurrentPoolScope scope(this);
        for (int64_t i = state->next.fetch_add(1); i < n; i = state->next.fetch_add(1)) {
            try {
                fn(i);
            } catch (...) {
                std::lock_guard<std::mutex> lock(state->mutex);
                if (state->error_index < 0 || i < state->error_index) {
                    state->error_index = i;
                    state->error = std::current_exception();
                }
            }
        }
    };

    const bool nested = tls_current_pool == this;
    const int64_t num_helpers =
        nested ? 0 : std::min<int64_t>(static_cast<int64_t>(workers_.size()), n - 1);
    if (num_helpers > 0) {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            state->helpers_running = num_helpers;
            for (int64_t h = 0; h < num_helpers; ++h) {
                tasks_.emplace_back([state, run_indices] {
                    run_indices();
                    std::lock_guard<std::mutex> done_lock(state->mutex);
                    if (--state->helpers_running == 0) {
                        state->done_cv.notify_all();
                    }
                });
            }
        }
        task_ready_.notify_all();
    }
    run_indices();
    {
        std::unique_lock<std::mutex> lock(state->mutex);
        state->done_cv.wait(lock, [&state] { return state->helpers_running == 0; });
    }
    if (state->error) {
        std::rethrow_exception(state->error);
    }
}

}  // namespace eplb_native
