// Bindings of the placement policies: one registry (name -> launcher and its options) behind
// one entry, _core.plan_policy, and the names Python lists from it, _core.POLICY_NAMES.

#include <algorithm>
#include <functional>
#include <optional>
#include <string>
#include <type_traits>

#include <pybind11/stl.h>

#include "bindings.h"
#include "eplb_native/flashlb/flashlb.h"
#include "eplb_native/plan.h"
#include "eplb_native/policies/building_blocks.h"
#include "eplb_native/policies/default_eplb.h"
#include "eplb_native/policies/random_placement.h"
#include "eplb_native/policies/swift_balancer.h"
#include "eplb_native/thread_pool.h"
#include "eplb_native/topology.h"
#include "numpy_views.h"
#include "shared_pool.h"

namespace eplb_native::bindings {
namespace {

// One planning call's inputs, copied out of numpy (the load, the table in force) or held for
// the call (the history, read in place), checked against the load's shape.
struct PolicyCall {
    std::vector<double> load;
    int64_t num_layers = 0;
    Topology topo;
    std::vector<int64_t> current;  // [L, P], empty: no table in force
    std::optional<CArray<int64_t>> history_counts;
    std::optional<CArray<double>> history_loads;
    flashlb::HistoryView history;
    uint64_t seed = 0;

    [[nodiscard]] LoadView load_view() const { return {load.data(), num_layers, topo.num_experts}; }
    [[nodiscard]] const int64_t* in_force() const {
        return current.empty() ? nullptr : current.data();
    }
};

// A policy's options, read from a dict by name: each read removes its key, and `finish`
// throws naming "options" for any key no read asked for.
class OptionReader {
public:
    explicit OptionReader(const py::dict& options) : options_(py::dict(options)) {}

    template <typename T>
    T get(const char* key, T fallback) {
        if (!options_.contains(key)) {
            return fallback;
        }
        const py::object value = options_.attr("pop")(key);
        try {
            return value.cast<T>();
        } catch (const py::cast_error&) {
            throw_invalid("options", std::string(key) + ": expected a " +
                                         (std::is_same_v<T, bool>       ? "bool"
                                          : std::is_integral_v<T> ? "integer"
                                                                  : "number") +
                                         ", got " + std::string(py::repr(value)));
        }
    }

    void finish(const std::string& policy) const {
        if (!options_.empty()) {
            throw_invalid("options", "unknown option(s) " + std::string(py::repr(options_)) +
                                         " for policy " + policy);
        }
    }

private:
    py::dict options_;
};

// A launcher reads its options (GIL held), then runs its core policy without the GIL.
using Launcher = std::function<Plan(const PolicyCall&, OptionReader&, ThreadPool&)>;

Plan launch_default_eplb(const PolicyCall& call, OptionReader& options, ThreadPool& pool) {
    options.finish("default_eplb");
    py::gil_scoped_release release;  // the core reads only the call's copies
    return policies::plan_default_eplb(call.load_view(), call.topo, pool, call.in_force());
}

Plan launch_random(const PolicyCall& call, OptionReader& options, ThreadPool& pool) {
    options.finish("random");
    py::gil_scoped_release release;
    return policies::plan_random(call.num_layers, call.topo, call.seed, pool, call.in_force());
}

Plan launch_swift_balancer(const PolicyCall& call, OptionReader& options, ThreadPool& pool) {
    policies::SwiftBalancerOptions swift;
    swift.max_moves_per_layer = options.get("max_moves_per_layer", swift.max_moves_per_layer);
    options.finish("swift_balancer");
    if (call.current.empty()) {
        throw_invalid("current", "swift_balancer needs the current placement phy2log [L, P]");
    }
    py::gil_scoped_release release;
    return policies::plan_swift_balancer(call.load_view(), call.topo, call.current.data(), swift,
                                         pool);
}

Plan launch_flashlb(const PolicyCall& call, OptionReader& options, ThreadPool& pool) {
    flashlb::Options flash;
    flash.z_score = options.get("z_score", flash.z_score);
    flash.max_depth = options.get("max_depth", flash.max_depth);
    flash.width = options.get("width", flash.width);
    flash.episode_steps = options.get("episode_steps", flash.episode_steps);
    flash.max_episodes = options.get("max_episodes", flash.max_episodes);
    flash.incremental = options.get("incremental", flash.incremental);
    flash.max_moves_per_layer = options.get("max_moves_per_layer", flash.max_moves_per_layer);
    flash.keep_margin = options.get("keep_margin", flash.keep_margin);
    options.finish("flashlb");
    flashlb::Request request;
    request.load = call.load_view();
    request.history = call.history;  // read in place: the call holds the history array
    request.current = call.in_force();
    py::gil_scoped_release release;
    return flashlb::plan_flashlb(request, call.topo, flash, pool);
}

// The policies in vllm-ascend's id order (0 random, 1 default, 2 swift, 3 flashlb).
// `scans_load`: the launcher scans the load values itself (FlashLB does, in its core).
struct PolicyEntry {
    const char* name;
    Launcher launch;
    bool scans_load;
};

const std::vector<PolicyEntry>& registry() {
    static const std::vector<PolicyEntry> entries = {
        {"random", launch_random, false},
        {"default_eplb", launch_default_eplb, false},
        {"swift_balancer", launch_swift_balancer, false},
        {"flashlb", launch_flashlb, true},
    };
    return entries;
}

const PolicyEntry& find_policy(const std::string& name) {
    std::string valid;
    for (const PolicyEntry& entry : registry()) {
        if (name == entry.name) {
            return entry;
        }
        valid += (valid.empty() ? "" : ", ") + std::string(entry.name);
    }
    throw_invalid("policy", "unknown policy '" + name + "'; valid: " + valid);
}

// Holds `history` (int64 token counts as they are, anything else as float64) and points the
// call's history view into it; throws naming "history" unless it is [T, L, N].
void hold_history(const py::object& history, PolicyCall& call) {
    const auto hold = [&history](auto& held, const auto*& values) {
        using Array = typename std::decay_t<decltype(held)>::value_type;
        held = as_carray<typename Array::value_type>(history, "history");
        require_ndim(*held, 3, "history", "[steps, layers, experts]");
        values = held->data();
        return shape_of(*held);
    };
    const py::array given = py::array::ensure(history);
    const std::vector<int64_t> h_shape = given && given.dtype().is(py::dtype::of<int64_t>())
                                             ? hold(call.history_counts, call.history.counts)
                                             : hold(call.history_loads, call.history.loads);
    if (h_shape[1] != call.num_layers || h_shape[2] != call.topo.num_experts) {
        throw_invalid("history", "expected [steps, " + std::to_string(call.num_layers) + ", " +
                                     std::to_string(call.topo.num_experts) + "], got " +
                                     shape_str(h_shape));
    }
    call.history.num_steps = h_shape[0];
}

py::object plan_policy(const std::string& name, const py::object& load_object,
                       int64_t num_replicas, int64_t num_groups, int64_t num_nodes,
                       int64_t num_ranks, const py::object& current_object,
                       const py::object& history, int64_t num_threads, uint64_t seed,
                       const py::dict& options) {
    const PolicyEntry& entry = find_policy(name);
    const auto load = as_carray<double>(load_object, "load");
    require_ndim(load, 2, "load", "[layers, experts]");
    const auto shape = shape_of(load);
    PolicyCall call;
    call.num_layers = shape[0];
    call.topo = Topology{shape[1], num_replicas, num_groups, num_nodes, num_ranks};
    call.seed = seed;
    validate_topology(call.topo, shape[0]);
    ThreadPool pool = shared_pool(num_threads);
    call.load.assign(load.data(), load.data() + load.size());
    if (!entry.scans_load) {
        validate_load_values(call.load.data(), static_cast<int64_t>(call.load.size()), shape[1],
                             "load");
    }
    if (!current_object.is_none()) {
        const auto current = as_carray<int64_t>(current_object, "current");
        require_ndim(current, 2, "current", "[layers, physical_slots]");
        const auto c_shape = shape_of(current);
        if (c_shape[0] != shape[0] || c_shape[1] != num_replicas) {
            throw_invalid("current", "expected shape " + shape_str({shape[0], num_replicas}) +
                                         " (load's layers x num_replicas), got " +
                                         shape_str(c_shape));
        }
        call.current.assign(current.data(), current.data() + current.size());
    }
    if (!history.is_none()) {
        hold_history(history, call);
    }
    OptionReader reader(options);
    return py::cast(entry.launch(call, reader, pool));
}

py::array_t<int64_t> keep_slots(const py::object& phy2log_object,
                                const py::object& current_object, int64_t num_ranks) {
    const auto phy2log = as_carray<int64_t>(phy2log_object, "phy2log");
    const auto current = as_carray<int64_t>(current_object, "old_phy2log");
    require_ndim(phy2log, 2, "phy2log", "[layers, physical_slots]");
    const auto shape = shape_of(phy2log);
    if (shape_of(current) != shape) {
        throw_invalid("old_phy2log", "expected the shape of phy2log " + shape_str(shape) +
                                         ", got " + shape_str(shape_of(current)));
    }
    if (num_ranks <= 0 || shape[1] % num_ranks != 0) {
        throw_invalid("num_ranks", "expected a positive divisor of the " +
                                       std::to_string(shape[1]) + " slots, got " +
                                       std::to_string(num_ranks));
    }
    std::vector<int64_t> rows(phy2log.data(), phy2log.data() + phy2log.size());
    if (std::any_of(rows.begin(), rows.end(), [](int64_t e) { return e < 0; })) {
        throw_invalid("phy2log", "expected expert ids >= 0 in every slot");
    }
    std::vector<int64_t> old(current.data(), current.data() + current.size());
    {
        py::gil_scoped_release release;  // the core reads only the copies above
        for (int64_t l = 0; l < shape[0]; ++l) {
            const auto first = rows.begin() + l * shape[1];
            const std::vector<int64_t> kept = policies::keep_slots(
                {first, first + shape[1]}, old.data() + l * shape[1], num_ranks);
            std::copy(kept.begin(), kept.end(), first);
        }
    }
    return to_numpy(rows, {shape[0], shape[1]});
}

}  // namespace

void bind_policies(py::module_& m) {
    py::list names;
    for (const PolicyEntry& entry : registry()) {
        names.append(entry.name);
    }
    m.attr("POLICY_NAMES") = py::tuple(names);
    m.def("plan_policy", &plan_policy, py::arg("policy"), py::arg("load"),
          py::arg("num_replicas"), py::arg("num_groups"), py::arg("num_nodes"),
          py::arg("num_ranks"), py::arg("current") = py::none(),
          py::arg("history") = py::none(), py::arg("num_threads") = 0, py::arg("seed") = 0,
          py::arg("options") = py::dict(),
          "Plan of the policy named `policy` (one of POLICY_NAMES): load float64 [L, N], P, G, "
          "H, D, current int64 [L, P] | None (the table in force), history int64 or float64 "
          "[T, L, N] | None (read in place), num_threads, seed, options {name: value} of that "
          "policy (swift_balancer: max_moves_per_layer; flashlb: z_score, max_depth, width, "
          "episode_steps, max_episodes, incremental, max_moves_per_layer, keep_margin).");
    m.def("keep_slots", &keep_slots, py::arg("phy2log"), py::arg("old_phy2log"),
          py::arg("num_ranks"),
          "int64 [L, P]: phy2log with, inside each rank, the experts old_phy2log (-1: empty "
          "slot) has there back in their old slots; the others fill the free slots in order.");
}

}  // namespace eplb_native::bindings
