// The module's shared planner pool and what Python reads about threads: the usable cores and
// the most threads a call may ask for.

#include <pthread.h>

#include <mutex>
#include <string>

#include "bindings.h"
#include "eplb_native/error.h"
#include "numpy_views.h"
#include "shared_pool.h"

namespace eplb_native::bindings {
namespace {

// The pool every call shares. It is never deleted: its workers may outlive the interpreter's
// teardown, and after fork() the parent's pool is abandoned (its threads do not exist in the
// child, and its mutexes may be held by them), so a child builds a pool of its own.
struct SharedWorkers {
    std::mutex mutex;
    ThreadPool* pool = nullptr;
};

SharedWorkers& shared_workers() {
    static SharedWorkers* const holder = [] {
        auto* workers = new SharedWorkers();
        // Forking while another thread builds the pool would copy a held mutex into the child:
        // hold it across fork() and forget the parent's pool in the child.
        pthread_atfork([] { shared_workers().mutex.lock(); },
                       [] { shared_workers().mutex.unlock(); },
                       [] {
                           shared_workers().pool = nullptr;
                           shared_workers().mutex.unlock();
                       });
        return workers;
    }();
    return *holder;
}

}  // namespace

ThreadPool shared_pool(int64_t num_threads) {
    if (num_threads < 0 || num_threads > kMaxThreads) {
        throw_invalid("num_threads", "expected 0 (all usable cores) to " +
                                         std::to_string(kMaxThreads) + ", got " +
                                         std::to_string(num_threads));
    }
    SharedWorkers& workers = shared_workers();
    std::lock_guard<std::mutex> lock(workers.mutex);
    if (workers.pool == nullptr) {
        workers.pool = new ThreadPool(usable_cores());
    }
    return ThreadPool(*workers.pool, static_cast<int>(num_threads));
}

void bind_threads(py::module_& m) {
    m.def("usable_cores", &usable_cores,
          "Cores this process may use: its CPU affinity, capped by a cgroup CPU quota.");
    m.attr("MAX_THREADS") = kMaxThreads;
}

}  // namespace eplb_native::bindings
