// Bindings of the placement policies: one entry, _core.rebalance_experts, dispatching by name.

#include <algorithm>
#include <optional>
#include <string>

#include <pybind11/stl.h>

#include "bindings.h"
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

constexpr const char* kCorePolicies = "default_eplb, swift_balancer, random";

py::tuple rebalance(const std::string& policy, const py::object& load_object,
                    int64_t num_replicas, int64_t num_groups, int64_t num_nodes,
                    int64_t num_ranks, const py::object& current_object, int64_t num_threads,
                    uint64_t seed, int64_t max_moves_per_layer) {
    if (policy != "default_eplb" && policy != "swift_balancer" && policy != "random") {
        throw_invalid("policy", "unknown policy '" + policy + "'; valid: " + kCorePolicies);
    }
    const auto load = as_carray<double>(load_object, "load");
    std::optional<CArray<int64_t>> current;
    if (!current_object.is_none()) {
        current = as_carray<int64_t>(current_object, "current");
    }
    require_ndim(load, 2, "load", "[layers, experts]");
    const auto shape = shape_of(load);
    Topology topo;
    topo.num_experts = shape[1];
    topo.num_replicas = num_replicas;
    topo.num_groups = num_groups;
    topo.num_nodes = num_nodes;
    topo.num_ranks = num_ranks;
    validate_topology(topo, shape[0]);
    ThreadPool pool = shared_pool(num_threads);
    // Copy the inputs out of the numpy buffers so the core runs without the GIL.
    std::vector<double> load_values(load.data(), load.data() + load.size());
    validate_load_values(load_values.data(), static_cast<int64_t>(load_values.size()), shape[1],
                         "load");
    std::vector<int64_t> current_values;
    if (current.has_value()) {
        require_ndim(*current, 2, "current", "[layers, physical_slots]");
        const auto c_shape = shape_of(*current);
        if (c_shape[0] != shape[0] || c_shape[1] != num_replicas) {
            throw_invalid("current", "expected shape " + shape_str({shape[0], num_replicas}) +
                                         " (load's layers x num_replicas), got " +
                                         shape_str(c_shape));
        }
        current_values.assign(current->data(), current->data() + current->size());
    } else if (policy == "swift_balancer") {
        throw_invalid("current", "swift_balancer needs the current placement phy2log [L, P]");
    }
    Plan plan;
    {
        // Safe: the core reads only the copied vectors above and touches no Python object.
        py::gil_scoped_release release;
        LoadView view{load_values.data(), shape[0], shape[1]};
        const int64_t* in_force = current.has_value() ? current_values.data() : nullptr;
        if (policy == "default_eplb") {
            plan = policies::plan_default_eplb(view, topo, pool, in_force);
        } else if (policy == "random") {
            plan = policies::plan_random(shape[0], topo, seed, pool, in_force);
        } else {
            policies::SwiftBalancerOptions options;
            options.max_moves_per_layer = max_moves_per_layer;
            plan = policies::plan_swift_balancer(view, topo, current_values.data(), options, pool);
        }
    }
    return py::make_tuple(
        to_numpy(plan.phy2log, {plan.num_layers, plan.num_physical}),
        to_numpy(plan.log2phy, {plan.num_layers, plan.num_experts, plan.max_replicas}),
        to_numpy(plan.logcnt, {plan.num_layers, plan.num_experts}));
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
    m.def("rebalance_experts", &rebalance, py::arg("policy"), py::arg("load"),
          py::arg("num_replicas"), py::arg("num_groups"), py::arg("num_nodes"),
          py::arg("num_ranks"), py::arg("current") = py::none(), py::arg("num_threads") = 0,
          py::arg("seed") = 0, py::arg("max_moves_per_layer") = 32,
          "(policy, load float64 [L, N], P, G, H, D, current int64 [L, P] | None, num_threads, "
          "seed, max_moves_per_layer) -> (phy2log [L, P], log2phy [L, N, max_replicas], "
          "logcnt [L, N]) for policy in default_eplb, swift_balancer, random.");
    m.def("keep_slots", &keep_slots, py::arg("phy2log"), py::arg("old_phy2log"),
          py::arg("num_ranks"),
          "int64 [L, P]: phy2log with, inside each rank, the experts old_phy2log (-1: empty "
          "slot) has there back in their old slots; the others fill the free slots in order.");
}

}  // namespace eplb_native::bindings
