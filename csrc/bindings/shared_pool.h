#pragma once
// The process-wide planner pool of the Python module: one set of worker threads, started on the
// first parallel call, that every binding's call runs on.

#include <cstdint>

#include "eplb_native/thread_pool.h"

namespace eplb_native::bindings {

// A pool on the module's shared workers (usable_cores() threads, started on first use) that
// runs on at most `num_threads` of them (0: all). Throws std::invalid_argument naming
// "num_threads" unless 0 <= num_threads <= kMaxThreads. Safe to call from several threads at
// once and after fork() (a child starts its own workers: the parent's do not exist there).
[[nodiscard]] ThreadPool shared_pool(int64_t num_threads);

}  // namespace eplb_native::bindings
