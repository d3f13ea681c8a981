// Bindings of the plan metrics the policies use: weight copies between two placements and the
// lower bound on the busiest rank's load, both from policies/building_blocks.h, so Python
// reports the same quantities the planners optimise.

#include <algorithm>
#include <array>
#include <string>
#include <vector>

#include "bindings.h"
#include "eplb_native/plan.h"
#include "eplb_native/policies/building_blocks.h"
#include "numpy_views.h"

namespace eplb_native::bindings {
namespace {

// Every id of `table` [L, P] is an expert id (>= 0) or -1, an empty slot.
void require_slot_ids(const py::array_t<int64_t>& table, int64_t num_physical,
                      const char* name) {
    const int64_t* ids = table.data();
    for (int64_t i = 0; i < static_cast<int64_t>(table.size()); ++i) {
        if (ids[i] < -1) {
            throw_invalid(name, "id " + std::to_string(ids[i]) + " at [" +
                                    std::to_string(i / num_physical) + ", " +
                                    std::to_string(i % num_physical) +
                                    "]; expected an expert id >= 0 or -1 (an empty slot)");
        }
    }
}

py::array_t<int64_t> weight_copies_per_layer(const py::object& old_object,
                                             const py::object& new_object, int64_t num_ranks) {
    const auto old_phy2log = as_carray<int64_t>(old_object, "old");
    const auto new_phy2log = as_carray<int64_t>(new_object, "new");
    const auto shape = shape_of(old_phy2log);
    if (shape.size() != 2) {
        throw_invalid("old", "expected a 2-D array [layers, physical_slots], got shape " +
                                         shape_str(shape));
    }
    if (shape_of(new_phy2log) != shape) {
        throw_invalid("new", "shape " + shape_str(shape_of(new_phy2log)) +
                                         " does not match old " + shape_str(shape));
    }
    require_positive(num_ranks, "num_ranks");
    const int64_t num_layers = shape[0];
    const int64_t num_physical = shape[1];
    require_slot_ids(old_phy2log, num_physical, "old");
    require_slot_ids(new_phy2log, num_physical, "new");
    if (num_physical % num_ranks != 0) {
        throw_invalid("num_ranks", std::to_string(num_physical) +
                                       " slots cannot be split evenly over " +
                                       std::to_string(num_ranks) + " ranks");
    }
    py::array_t<int64_t> out(num_layers);
    int64_t* copies = out.mutable_data();
    const int64_t* current = old_phy2log.data();
    const int64_t* proposed = new_phy2log.data();
    {
        py::gil_scoped_release release;  // the arguments hold both tables for the call
        for (int64_t layer = 0; layer < num_layers; ++layer) {
            copies[layer] = policies::weight_copies(current + layer * num_physical,
                                                    proposed + layer * num_physical,
                                                    num_physical, num_ranks);
        }
    }
    return out;
}

py::array_t<double> max_load_lower_bound(const py::object& load_object, int64_t num_physical,
                                         int64_t num_ranks) {
    const auto load = as_carray<double>(load_object, "load");
    require_ndim(load, 2, "load", "[rows, experts]");
    const auto shape = shape_of(load);
    const int64_t rows = shape[0];
    const int64_t num_experts = shape[1];
    require_positive(num_ranks, "num_ranks");
    require_positive(num_physical, "num_physical");
    if (num_physical < num_experts) {
        throw_invalid("num_physical", std::to_string(num_physical) + " slots cannot hold " +
                                          std::to_string(num_experts) + " experts");
    }
    // Beyond num_experts * num_ranks slots every expert already has a replica on each rank:
    // the bound is that of N * D slots, which also keeps the allotment's size in range.
    const int64_t min_ranks_for_all = (num_physical - 1) / num_experts + 1;
    const int64_t slots =
        num_ranks >= min_ranks_for_all ? num_physical : num_experts * num_ranks;
    require_array_size("num_physical", {slots}, "the replicas allotted per row");
    validate_load_values(load.data(), load.size(), num_experts, "load");
    py::array_t<double> out(rows);
    double* bound = out.mutable_data();
    const double* values = load.data();
    {
        py::gil_scoped_release release;  // the argument holds the load for the call
        std::vector<double> weight(static_cast<size_t>(num_experts));
        for (int64_t row = 0; row < rows; ++row) {
            std::copy(values + row * num_experts, values + (row + 1) * num_experts,
                      weight.begin());
            bound[row] = policies::max_load_lower_bound(weight, slots, num_ranks);
        }
    }
    return out;
}

py::tuple scan_load_values(const py::object& values_object) {
    const auto values = as_carray<double>(values_object, "load");
    LoadScan scan;
    {
        py::gil_scoped_release release;  // the argument holds the values for the call
        scan = eplb_native::scan_load_values(values.data(), static_cast<int64_t>(values.size()));
    }
    return py::make_tuple(scan.all_valid, scan.total);
}

py::array_t<int64_t> placement_violations(const py::object& current_object,
                                          const py::object& next_object) {
    const auto current = as_carray<int64_t>(current_object, "current_table");
    const auto next = as_carray<int64_t>(next_object, "new_table");
    const auto shape = shape_of(current);
    if (shape.size() != 3 || shape_of(next) != shape) {
        throw_invalid("new_table", "expected current_table's shape [L, D, S] " +
                                       shape_str(shape) + ", got " + shape_str(shape_of(next)));
    }
    const int64_t num_physical = shape[1] * shape[2];
    py::array_t<int64_t> out({shape[0], int64_t{3}});
    int64_t* first = out.mutable_data();
    {
        py::gil_scoped_release release;  // the arguments hold both tables for the call
        for (int64_t layer = 0; layer < shape[0]; ++layer) {
            const std::array<int64_t, 3> found = eplb_native::placement_violations(
                current.data() + layer * num_physical, next.data() + layer * num_physical,
                shape[1], shape[2]);
            std::copy(found.begin(), found.end(), first + layer * 3);
        }
    }
    return out;
}

}  // namespace

void bind_metrics(py::module_& m) {
    m.def("weight_copies_per_layer", &weight_copies_per_layer, py::arg("old"),
          py::arg("new"), py::arg("num_ranks"),
          "int64 [L]: per layer, the slots of new int64 [L, P] whose expert is not on "
          "the same rank in old int64 [L, P] (-1: an empty slot, holding nothing in "
          "old and needing no copy in new); a replica moving between slots of "
          "one rank costs nothing.");
    m.def("scan_load_values", &scan_load_values, py::arg("values"),
          "(all_valid, total): one pass over float64 values of any shape, whether all are "
          "finite and >= 0 and their sum (without naming a bad value: a caller that needs its "
          "index looks for it only when all_valid is False).");
    m.def("placement_violations", &placement_violations, py::arg("current_table"),
          py::arg("new_table"),
          "int64 [L, 3]: per layer of new_table int64 [L, D, S] against current_table (the "
          "table in force, same shape; a negative id is an empty slot), the first break of each "
          "placement rule: the smallest expert of current_table with no replica left, the first "
          "rank holding an expert more than once and more often than current_table there, the "
          "first rank where an expert that stays on it changes slot; -1 for a rule kept.");
    m.def("max_load_lower_bound", &max_load_lower_bound, py::arg("load"),
          py::arg("num_physical"), py::arg("num_ranks"),
          "float64 [R]: per row of load float64 [R, N] (tokens per expert), a lower bound on "
          "the busiest rank's tokens of any placement on num_physical slots over num_ranks "
          "ranks: the larger of the mean rank load and the smallest possible largest "
          "per-replica load (each expert on 1..num_ranks slots).");
}

}  // namespace eplb_native::bindings
