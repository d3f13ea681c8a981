#include "eplb_native/topology.h"

#include <string>

#include "eplb_native/error.h"

namespace eplb_native {

void validate_topology(const Topology& topo) {
    require_positive(topo.num_experts, "num_experts");
    require_positive(topo.num_replicas, "num_replicas");
    require_positive(topo.num_groups, "num_groups");
    require_positive(topo.num_nodes, "num_nodes");
    require_positive(topo.num_ranks, "num_ranks");
    if (topo.num_replicas < topo.num_experts) {
        throw_invalid("num_replicas", std::to_string(topo.num_replicas) +
                                          " physical slots cannot hold " +
                                          std::to_string(topo.num_experts) +
                                          " experts (need num_replicas >= num_experts)");
    }
    if (topo.num_replicas % topo.num_ranks != 0) {
        throw_invalid("num_replicas", std::to_string(topo.num_replicas) +
                                          " is not a multiple of num_ranks=" +
                                          std::to_string(topo.num_ranks) +
                                          " (every rank holds the same number of slots)");
    }
    if (topo.num_experts % topo.num_groups != 0) {
        throw_invalid("num_groups", std::to_string(topo.num_groups) + " does not divide " +
                                        std::to_string(topo.num_experts) + " experts");
    }
    if (topo.num_ranks % topo.num_nodes != 0) {
        throw_invalid("num_nodes", std::to_string(topo.num_nodes) + " does not divide " +
                                       std::to_string(topo.num_ranks) + " ranks");
    }
}

void validate_topology(const Topology& topo, int64_t num_layers) {
    validate_topology(topo);
    if (num_layers <= 0) {
        throw_invalid("load", "expected at least one layer");
    }
    require_array_size("num_replicas", {num_layers, topo.num_replicas}, "a plan of layers x slots");
}

}  // namespace eplb_native
