#include "eplb_native/policies/default_eplb.h"

#include <limits>
#include <string>
#include <vector>

#include "eplb_native/error.h"
#include "eplb_native/policies/building_blocks.h"

namespace eplb_native::policies {
namespace {

std::vector<int64_t> inverse(const std::vector<int64_t>& perm) {
    std::vector<int64_t> inv(perm.size());
    for (size_t i = 0; i < perm.size(); ++i) {
        inv[static_cast<size_t>(perm[i])] = static_cast<int64_t>(i);
    }
    return inv;
}

std::vector<int64_t> hierarchical_layer(const std::vector<float>& weight, int64_t num_physical,
                                        int64_t num_groups, int64_t num_nodes, int64_t num_ranks,
                                        bool distinct) {
    const auto num_experts = static_cast<int64_t>(weight.size());
    const int64_t group_size = num_experts / num_groups;
    const int64_t groups_per_node = num_groups / num_nodes;
    const int64_t experts_per_node = num_experts / num_nodes;
    const int64_t physical_per_node = num_physical / num_nodes;
    const int64_t ranks_per_node = num_ranks / num_nodes;
    const int64_t slots_per_rank = num_physical / num_ranks;

    // Step 1: groups onto nodes. log2mlog numbers experts node by node ("middle" ids).
    std::vector<float> group_load(static_cast<size_t>(num_groups), 0.0f);
    for (int64_t e = 0; e < num_experts; ++e) {
        group_load[static_cast<size_t>(e / group_size)] += weight[static_cast<size_t>(e)];
    }
    const Packing groups = balanced_packing(group_load.data(), num_groups, num_nodes);
    std::vector<int64_t> log2mlog(static_cast<size_t>(num_experts));
    for (int64_t e = 0; e < num_experts; ++e) {
        const auto g = static_cast<size_t>(e / group_size);
        log2mlog[static_cast<size_t>(e)] =
            (groups.pack_index[g] * groups_per_node + groups.rank_in_pack[g]) * group_size +
            e % group_size;
    }
    const std::vector<int64_t> mlog2log = inverse(log2mlog);

    std::vector<int64_t> phy2log(static_cast<size_t>(num_physical));
    std::vector<float> node_load(static_cast<size_t>(experts_per_node));
    std::vector<float> replica_load(static_cast<size_t>(physical_per_node));
    for (int64_t node = 0; node < num_nodes; ++node) {
        // Step 2: replicate within the node.
        for (int64_t j = 0; j < experts_per_node; ++j) {
            node_load[static_cast<size_t>(j)] =
                weight[static_cast<size_t>(mlog2log[static_cast<size_t>(node * experts_per_node + j)])];
        }
        const Replication rep = replicate_min_max(
            node_load.data(), experts_per_node, physical_per_node,
            distinct ? ranks_per_node : std::numeric_limits<int64_t>::max());
        // Step 3: the node's replicas onto its ranks.
        for (int64_t p = 0; p < physical_per_node; ++p) {
            const auto m = static_cast<size_t>(rep.phy2log[static_cast<size_t>(p)]);
            replica_load[static_cast<size_t>(p)] =
                node_load[m] / static_cast<float>(rep.logcnt[m]);
        }
        const Packing ranks =
            distinct ? balanced_packing_distinct(replica_load.data(), rep.phy2log.data(),
                                                 physical_per_node, ranks_per_node)
                     : balanced_packing(replica_load.data(), physical_per_node, ranks_per_node);
        for (int64_t p = 0; p < physical_per_node; ++p) {
            const auto pi = static_cast<size_t>(p);
            const int64_t local_slot = ranks.pack_index[pi] * slots_per_rank + ranks.rank_in_pack[pi];
            const int64_t mlog = rep.phy2log[pi] + node * experts_per_node;
            phy2log[static_cast<size_t>(node * physical_per_node + local_slot)] =
                mlog2log[static_cast<size_t>(mlog)];
        }
    }
    return phy2log;
}

}  // namespace

std::vector<int64_t> default_eplb_layer(const double* load, const Topology& topo, bool distinct) {
    std::vector<float> weight(load, load + topo.num_experts);  // DeepSeek's weight.float()
    if (topo.hierarchical()) {
        return hierarchical_layer(weight, topo.num_replicas, topo.num_groups, topo.num_nodes,
                                  topo.num_ranks, distinct);
    }
    return hierarchical_layer(weight, topo.num_replicas, 1, 1, topo.num_ranks, distinct);
}

Plan plan_default_eplb(const LoadView& load, const Topology& topo, ThreadPool& pool,
                       const int64_t* current) {
    validate_problem(load, topo);
    const int64_t num_nodes = topo.hierarchical() ? topo.num_nodes : 1;
    if (current != nullptr) {
        validate_slot_stable(current, load.num_layers, topo, num_nodes);
    }
    std::vector<int64_t> phy2log(static_cast<size_t>(load.num_layers * topo.num_replicas));
    pool.parallel_for(load.num_layers, [&](int64_t layer_idx) {
        std::vector<int64_t> row = default_eplb_layer(load.layer(layer_idx), topo, current != nullptr);
        if (current != nullptr) {
            row = align_to_current(row, current + layer_idx * topo.num_replicas, topo.num_ranks,
                                   num_nodes);
        }
        std::copy(row.begin(), row.end(), phy2log.begin() + layer_idx * topo.num_replicas);
    });
    return plan_from_phy2log(phy2log.data(), load.num_layers, topo.num_replicas, topo.num_experts);
}

}  // namespace eplb_native::policies
