#pragma once
// The shape of a placement problem: experts, physical replicas, expert groups, nodes, ranks.

#include <cstdint>

namespace eplb_native {

struct Topology {
    int64_t num_experts = 0;   // N logical experts per layer
    int64_t num_replicas = 0;  // P physical slots per layer (N + redundant)
    int64_t num_groups = 1;    // G expert groups (DeepSeek's group-limited routing); 1 = none
    int64_t num_nodes = 1;     // H nodes
    int64_t num_ranks = 1;     // D ranks (devices)

    [[nodiscard]] int64_t slots_per_rank() const { return num_replicas / num_ranks; }
    [[nodiscard]] int64_t ranks_per_node() const { return num_ranks / num_nodes; }
    // DeepSeek EPLB's rule: hierarchical balancing when the groups split evenly over nodes.
    [[nodiscard]] bool hierarchical() const { return num_groups % num_nodes == 0; }
};

// Throws std::invalid_argument naming the field unless: all sizes are positive,
// num_replicas >= num_experts, num_replicas % num_ranks == 0, num_experts % num_groups == 0,
// num_ranks % num_nodes == 0.
void validate_topology(const Topology& topo);

// validate_topology, and a plan of `num_layers` layers: num_layers > 0 (named "load", whose rows
// the layers are) and num_layers x num_replicas slots within kMaxArrayElements.
void validate_topology(const Topology& topo, int64_t num_layers);

}  // namespace eplb_native
