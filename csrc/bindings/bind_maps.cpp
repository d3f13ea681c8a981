// Bindings of the plan model: the core Plan as a Python value (_core.Plan), built and validated
// once, and the maps, loads and checks that take it as built.

#include "bindings.h"
#include "eplb_native/plan.h"
#include "eplb_native/thread_pool.h"
#include "numpy_views.h"
#include "shared_pool.h"

namespace eplb_native::bindings {
namespace {

// Rows of a [rows, L, width] load array for `plan`; throws naming `field` unless its last two
// extents are the plan's L and `width`.
int64_t load_rows(const CArray<double>& load, const Plan& plan, int64_t width,
                  const std::string& field) {
    require_ndim(load, 3, field, "[rows, layers, " + std::to_string(width) + "]");
    const auto shape = shape_of(load);
    if (shape[1] != plan.num_layers || shape[2] != width) {
        throw_invalid(field, "expected [rows, " + std::to_string(plan.num_layers) + ", " +
                                 std::to_string(width) + "], got " + shape_str(shape));
    }
    return shape[0];
}

// A Plan holding copies of three given maps, checked once by the core (every rule but the
// ranks': those come with validate_plan's num_ranks).
Plan plan_from_maps(const py::object& phy2log_object, const py::object& log2phy_object,
                    const py::object& logcnt_object) {
    const auto phy2log = as_carray<int64_t>(phy2log_object, "phy2log");
    const auto log2phy = as_carray<int64_t>(log2phy_object, "log2phy");
    const auto logcnt = as_carray<int64_t>(logcnt_object, "logcnt");
    require_ndim(phy2log, 2, "phy2log", "[layers, physical_slots]");
    require_ndim(log2phy, 3, "log2phy", "[layers, experts, max_replicas]");
    require_ndim(logcnt, 2, "logcnt", "[layers, experts]");
    const auto p_shape = shape_of(phy2log);
    const auto l_shape = shape_of(log2phy);
    const auto c_shape = shape_of(logcnt);
    if (c_shape[0] != p_shape[0]) {
        throw_invalid("logcnt", "has " + std::to_string(c_shape[0]) + " layers but phy2log has " +
                                    std::to_string(p_shape[0]));
    }
    if (l_shape[0] != p_shape[0] || l_shape[1] != c_shape[1]) {
        throw_invalid("log2phy", "shape " + shape_str(l_shape) +
                                     " does not match [layers, experts] = " +
                                     shape_str({c_shape[0], c_shape[1]}));
    }
    Plan plan;
    plan.num_layers = p_shape[0];
    plan.num_physical = p_shape[1];
    plan.num_experts = c_shape[1];
    plan.max_replicas = l_shape[2];
    plan.phy2log.assign(phy2log.data(), phy2log.data() + phy2log.size());
    plan.log2phy.assign(log2phy.data(), log2phy.data() + log2phy.size());
    plan.logcnt.assign(logcnt.data(), logcnt.data() + logcnt.size());
    validate_plan(view_of(plan), 1, true);
    return plan;
}

// A read-only numpy view of one of the maps of the Plan held by `owner` (kept alive by it).
py::array_t<int64_t> map_view(const py::object& owner, const std::vector<int64_t>& values,
                              const std::vector<int64_t>& shape) {
    const std::vector<py::ssize_t> extents(shape.begin(), shape.end());
    py::array_t<int64_t> view(extents, values.data(), owner);
    view.attr("setflags")(py::arg("write") = false);
    return view;
}

const Plan& core_plan(const py::object& owner) { return owner.cast<const Plan&>(); }

}  // namespace

void bind_maps(py::module_& m) {
    m.attr("MAX_ARRAY_ELEMENTS") = kMaxArrayElements;
    py::class_<Plan>(m, "Plan",
                     "A placement plan held by the core: built by plan_from_phy2log or a policy, "
                     "or from three maps (checked here); its maps are read-only views.")
        .def(py::init(&plan_from_maps), py::arg("phy2log"), py::arg("log2phy"), py::arg("logcnt"))
        .def_property_readonly("phy2log",
                               [](const py::object& self) {
                                   const Plan& plan = core_plan(self);
                                   return map_view(self, plan.phy2log,
                                                   {plan.num_layers, plan.num_physical});
                               })
        .def_property_readonly("log2phy",
                               [](const py::object& self) {
                                   const Plan& plan = core_plan(self);
                                   return map_view(
                                       self, plan.log2phy,
                                       {plan.num_layers, plan.num_experts, plan.max_replicas});
                               })
        .def_property_readonly("logcnt",
                               [](const py::object& self) {
                                   const Plan& plan = core_plan(self);
                                   return map_view(self, plan.logcnt,
                                                   {plan.num_layers, plan.num_experts});
                               })
        .def_readonly("num_layers", &Plan::num_layers)
        .def_readonly("num_experts", &Plan::num_experts)
        .def_readonly("num_physical", &Plan::num_physical)
        .def_readonly("max_replicas", &Plan::max_replicas);

    m.def(
        "plan_from_phy2log",
        [](const py::object& phy2log_object, int64_t num_experts) {
            const auto phy2log = as_carray<int64_t>(phy2log_object, "phy2log");
            require_ndim(phy2log, 2, "phy2log", "[layers, physical_slots]");
            const auto shape = shape_of(phy2log);
            // Copy out of the numpy buffer first; the core then runs without the GIL.
            std::vector<int64_t> values(phy2log.data(), phy2log.data() + phy2log.size());
            py::gil_scoped_release release;  // core touches no Python objects; input was copied
            return plan_from_phy2log(values.data(), shape[0], shape[1], num_experts);
        },
        py::arg("phy2log"), py::arg("num_experts"),
        "Plan from phy2log int64 [L, P] and N: log2phy [L, N, max_replicas] (-1 padded) and "
        "logcnt [L, N] derived.");

    m.def(
        "validate_plan",
        [](const Plan& plan, int64_t num_ranks, bool allow_duplicate_on_rank) {
            py::gil_scoped_release release;  // the plan is immutable from Python
            validate_plan(view_of(plan), num_ranks, allow_duplicate_on_rank);
        },
        py::arg("plan"), py::arg("num_ranks"), py::arg("allow_duplicate_on_rank") = false,
        "Raise ValueError naming the field unless the plan is a valid placement on num_ranks "
        "ranks.");

    m.def(
        "rank_expert_maps",
        [](const Plan& plan, int64_t num_ranks) {
            std::vector<int64_t> maps;
            {
                py::gil_scoped_release release;  // the plan is immutable from Python
                maps = rank_expert_maps(plan, num_ranks);
            }
            return to_numpy(maps, {num_ranks, plan.num_layers, plan.num_experts});
        },
        py::arg("plan"), py::arg("num_ranks"),
        "int64 [D, L, N]: local slot of expert e on rank r, -1 if absent.");

    m.def(
        "rank_log2phy",
        [](const Plan& plan, int64_t num_ranks, int64_t tp_size) {
            std::vector<int64_t> routes;
            {
                py::gil_scoped_release release;  // the plan is immutable from Python
                routes = rank_log2phy(plan, num_ranks, tp_size);
            }
            return to_numpy(routes, {num_ranks, plan.num_layers, plan.num_experts});
        },
        py::arg("plan"), py::arg("num_ranks"), py::arg("tp_size") = 0,
        "int64 [D, L, N]: physical slot that rank r routes expert e's tokens to (tp_size 0: "
        "own replica, else an even spread; >= 1: vllm-ascend's generate_log2phy_map rule).");

    // The two load conversions read the load array in place (often [steps, L, P], tens of MB)
    // and write a new numpy array without the GIL: the arguments hold both for the call.
    m.def(
        "expert_load_from_slot_load",
        [](const Plan& plan, const py::object& slot_load_object) {
            const auto slot_load = as_carray<double>(slot_load_object, "slot_load");
            const int64_t rows = load_rows(slot_load, plan, plan.num_physical, "slot_load");
            py::array_t<double> out({rows, plan.num_layers, plan.num_experts});
            double* values = out.mutable_data();
            {
                py::gil_scoped_release release;
                expert_load_from_slot_load(plan, slot_load.data(), rows, values);
            }
            return out;
        },
        py::arg("plan"), py::arg("slot_load"),
        "float64 [rows, L, N]: tokens per expert, its slots' tokens (slot_load [rows, L, P]) "
        "summed.");

    m.def(
        "rank_loads",
        [](const Plan& plan, const py::object& load_object, int64_t num_ranks) {
            const auto load = as_carray<double>(load_object, "load");
            const int64_t rows = load_rows(load, plan, plan.num_experts, "load");
            require_positive(num_ranks, "num_ranks");
            require_array_size("num_ranks", {rows, plan.num_layers, num_ranks},
                               "rank loads [rows, layers, ranks]");
            py::array_t<double> out({rows, plan.num_layers, num_ranks});
            double* values = out.mutable_data();
            {
                py::gil_scoped_release release;
                rank_loads(plan, load.data(), rows, num_ranks, values);
            }
            return out;
        },
        py::arg("plan"), py::arg("load"), py::arg("num_ranks"),
        "float64 [rows, L, D]: tokens per rank, each expert's tokens (load [rows, L, N]) split "
        "evenly among its replicas.");

    m.def(
        "layer_balance",
        [](const Plan& plan, const py::object& load_object, int64_t num_ranks,
           int64_t num_threads) {
            const auto load = as_carray<double>(load_object, "load");
            const int64_t rows = load_rows(load, plan, plan.num_experts, "load");
            require_positive(num_ranks, "num_ranks");
            ThreadPool pool = shared_pool(num_threads);
            py::array_t<double> out({rows, plan.num_layers});
            double* values = out.mutable_data();
            {
                py::gil_scoped_release release;
                pool.parallel_for(plan.num_layers, [&](int64_t layer) {
                    layer_balance(plan, load.data(), rows, num_ranks, layer, values);
                });
            }
            return out;
        },
        py::arg("plan"), py::arg("load"), py::arg("num_ranks"), py::arg("num_threads") = 1,
        "float64 [rows, L]: each layer's balance per row of load [rows, L, N], mean / peak rank "
        "load (1.0 for a row with no load); equal to numpy's 1 / "
        "peak_to_average(rank_loads(...)). num_threads: 0 for all cores.");
}

}  // namespace eplb_native::bindings
