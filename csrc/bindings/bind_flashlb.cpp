// Bindings of FlashLB: plan_flashlb on numpy arrays.

#include <pybind11/stl.h>

#include <optional>
#include <type_traits>

#include "bindings.h"
#include "eplb_native/flashlb/flashlb.h"
#include "numpy_views.h"
#include "shared_pool.h"

namespace eplb_native::bindings {

void bind_flashlb(py::module_& m) {
    m.def(
        "plan_flashlb",
        [](const py::object& load_object, int64_t num_replicas, int64_t num_groups,
           int64_t num_nodes, int64_t num_ranks, const py::object& current_object,
           const py::object& history, int64_t num_threads, double z_score, int64_t max_depth,
           int64_t width, int64_t episode_steps, int64_t max_episodes, bool incremental,
           int64_t max_moves_per_layer, double keep_margin) {
            const auto load = as_carray<double>(load_object, "load");
            std::optional<CArray<int64_t>> current;
            if (!current_object.is_none()) {
                current = as_carray<int64_t>(current_object, "current");
            }
            require_ndim(load, 2, "load", "[layers, experts]");
            const auto shape = shape_of(load);
            Topology topo{shape[1], num_replicas, num_groups, num_nodes, num_ranks};
            validate_topology(topo, shape[0]);
            std::vector<double> load_values(load.data(), load.data() + load.size());
            std::vector<int64_t> current_values;
            // Integer heat (int64 token counts) is read as is; anything else as float64.
            std::optional<CArray<int64_t>> history_counts;
            std::optional<CArray<double>> history_loads;
            flashlb::HistoryView history_view;
            // Holds `history` as an array of its value type; the view points into it.
            const auto hold = [&history](auto& held, const auto*& values) {
                using Array = typename std::decay_t<decltype(held)>::value_type;
                held = as_carray<typename Array::value_type>(history, "history");
                require_ndim(*held, 3, "history", "[steps, layers, experts]");
                values = held->data();
                return shape_of(*held);
            };
            if (!history.is_none()) {
                const py::array given = py::array::ensure(history);
                const std::vector<int64_t> h_shape =
                    given && given.dtype().is(py::dtype::of<int64_t>())
                        ? hold(history_counts, history_view.counts)
                        : hold(history_loads, history_view.loads);
                if (h_shape[1] != shape[0] || h_shape[2] != shape[1]) {
                    throw_invalid("history", "expected [steps, " + std::to_string(shape[0]) +
                                                 ", " + std::to_string(shape[1]) + "], got " +
                                                 shape_str(h_shape));
                }
                history_view.num_steps = h_shape[0];
            }
            if (current) {
                require_ndim(*current, 2, "current", "[layers, physical_slots]");
                const auto c_shape = shape_of(*current);
                if (c_shape[0] != shape[0] || c_shape[1] != num_replicas) {
                    throw_invalid("current", "expected [" + std::to_string(shape[0]) + ", " +
                                                 std::to_string(num_replicas) + "], got " +
                                                 shape_str(c_shape));
                }
                current_values.assign(current->data(), current->data() + current->size());
            }
            flashlb::Options options;
            options.z_score = z_score;
            options.max_depth = max_depth;
            options.width = width;
            options.episode_steps = episode_steps;
            options.max_episodes = max_episodes;
            options.incremental = incremental;
            options.max_moves_per_layer = max_moves_per_layer;
            options.keep_margin = keep_margin;
            flashlb::Request request;
            request.load = LoadView{load_values.data(), shape[0], shape[1]};
            // The history ([T, L, N], often 100+ MB) is read in place, not copied, when it is
            // C-contiguous int64 or float64: the arrays above hold it for the whole call and the
            // core only reads it.
            request.history = history_view;
            request.current = current ? current_values.data() : nullptr;
            ThreadPool pool = shared_pool(num_threads);
            Plan plan;
            {
                py::gil_scoped_release release;  // core touches no Python objects; inputs copied
                plan = flashlb::plan_flashlb(request, topo, options, pool);
            }
            return py::make_tuple(
                to_numpy(plan.phy2log, {plan.num_layers, plan.num_physical}),
                to_numpy(plan.log2phy, {plan.num_layers, plan.num_experts, plan.max_replicas}),
                to_numpy(plan.logcnt, {plan.num_layers, plan.num_experts}));
        },
        py::arg("load"), py::arg("num_replicas"), py::arg("num_groups"), py::arg("num_nodes"),
        py::arg("num_ranks"), py::arg("current") = py::none(), py::arg("history") = py::none(),
        py::arg("num_threads") = 0, py::arg("z_score") = 0.674, py::arg("max_depth") = 4,
        py::arg("width") = 8, py::arg("episode_steps") = 1, py::arg("max_episodes") = 64,
        py::arg("incremental") = false, py::arg("max_moves_per_layer") = -1,
        py::arg("keep_margin") = 0.0,
        "FlashLB plan: (load float64 [L, N], P, G, H, D, current int64 [L, P] | None, history "
        "int64 or float64 [T, L, N] | None, ...) -> (phy2log, log2phy, logcnt).");
}

}  // namespace eplb_native::bindings
