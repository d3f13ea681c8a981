#include "eplb_native/policies/building_blocks.h"

#include <algorithm>
#include <limits>
#include <numeric>
#include <string>

#include "eplb_native/error.h"

namespace eplb_native::policies {

namespace {

template <typename T>
std::vector<int64_t> descending_order(const T* values, int64_t n) {
    std::vector<int64_t> order(static_cast<size_t>(n));
    std::iota(order.begin(), order.end(), int64_t{0});
    std::stable_sort(order.begin(), order.end(),
                     [values](int64_t a, int64_t b) { return values[a] > values[b]; });
    return order;
}

}  // namespace

std::vector<int64_t> order_descending(const float* values, int64_t n) {
    return descending_order(values, n);
}

std::vector<int64_t> order_descending(const double* values, int64_t n) {
    return descending_order(values, n);
}

Replication replicate_min_max(const float* weight, int64_t num_experts, int64_t num_physical) {
    EPLB_CHECK(num_physical >= num_experts && num_experts > 0, "bad replication shape");
    Replication out;
    out.phy2log.resize(static_cast<size_t>(num_physical));
    out.replica_rank.assign(static_cast<size_t>(num_physical), 0);
    out.logcnt.assign(static_cast<size_t>(num_experts), 1);
    std::iota(out.phy2log.begin(), out.phy2log.begin() + num_experts, int64_t{0});
    for (int64_t slot = num_experts; slot < num_physical; ++slot) {
        int64_t best = 0;
        float best_ratio = -1.0f;
        for (int64_t e = 0; e < num_experts; ++e) {
            const float ratio = weight[e] / static_cast<float>(out.logcnt[static_cast<size_t>(e)]);
            if (ratio > best_ratio) {  // strict: the first maximum wins, as torch.max
                best_ratio = ratio;
                best = e;
            }
        }
        out.phy2log[static_cast<size_t>(slot)] = best;
        out.replica_rank[static_cast<size_t>(slot)] = out.logcnt[static_cast<size_t>(best)];
        ++out.logcnt[static_cast<size_t>(best)];
    }
    return out;
}

Packing balanced_packing(const float* weight, int64_t num_items, int64_t num_packs) {
    EPLB_CHECK(num_packs > 0 && num_items % num_packs == 0, "items do not split over packs");
    const int64_t per_pack = num_items / num_packs;
    Packing out;
    out.pack_index.assign(static_cast<size_t>(num_items), 0);
    out.rank_in_pack.assign(static_cast<size_t>(num_items), 0);
    if (per_pack == 1) {
        std::iota(out.pack_index.begin(), out.pack_index.end(), int64_t{0});
        return out;
    }
    std::vector<float> pack_weight(static_cast<size_t>(num_packs), 0.0f);
    std::vector<int64_t> pack_items(static_cast<size_t>(num_packs), 0);
    for (int64_t item : order_descending(weight, num_items)) {
        int64_t pack = -1;
        for (int64_t p = 0; p < num_packs; ++p) {
            const auto pi = static_cast<size_t>(p);
            if (pack_items[pi] < per_pack &&
                (pack < 0 || pack_weight[pi] < pack_weight[static_cast<size_t>(pack)])) {
                pack = p;
            }
        }
        const auto pk = static_cast<size_t>(pack);
        out.pack_index[static_cast<size_t>(item)] = pack;
        out.rank_in_pack[static_cast<size_t>(item)] = pack_items[pk];
        pack_weight[pk] += weight[item];
        ++pack_items[pk];
    }
    return out;
}

std::vector<int64_t> lpt_place(const std::vector<int64_t>& replica_expert,
                               const std::vector<double>& replica_load, int64_t num_experts,
                               int64_t num_ranks) {
    const auto num_replicas = static_cast<int64_t>(replica_expert.size());
    EPLB_CHECK(replica_load.size() == replica_expert.size(), "size mismatch");
    EPLB_CHECK(num_ranks > 0 && num_replicas % num_ranks == 0, "slots do not split over ranks");
    const int64_t per_rank = num_replicas / num_ranks;
    const std::vector<int64_t> order = order_descending(replica_load.data(), num_replicas);
    std::vector<double> rank_load(static_cast<size_t>(num_ranks), 0.0);
    std::vector<int64_t> rank_items(static_cast<size_t>(num_ranks), 0);
    std::vector<char> holds(static_cast<size_t>(num_ranks * num_experts), 0);
    std::vector<int64_t> phy2log(static_cast<size_t>(num_replicas), -1);
    for (int64_t replica : order) {
        const int64_t expert = replica_expert[static_cast<size_t>(replica)];
        int64_t best = -1;
        bool best_free_of_expert = false;
        for (int64_t r = 0; r < num_ranks; ++r) {
            const auto ri = static_cast<size_t>(r);
            if (rank_items[ri] >= per_rank) {
                continue;
            }
            const bool free_of_expert = holds[static_cast<size_t>(r * num_experts + expert)] == 0;
            if (best < 0 || (free_of_expert && !best_free_of_expert) ||
                (free_of_expert == best_free_of_expert &&
                 rank_load[ri] < rank_load[static_cast<size_t>(best)])) {
                best = r;
                best_free_of_expert = free_of_expert;
            }
        }
        const auto bi = static_cast<size_t>(best);
        phy2log[static_cast<size_t>(best * per_rank + rank_items[bi])] = expert;
        holds[static_cast<size_t>(best * num_experts + expert)] = 1;
        rank_load[bi] += replica_load[static_cast<size_t>(replica)];
        ++rank_items[bi];
    }
    return phy2log;
}

void validate_problem(const LoadView& load, const Topology& topo) {
    validate_topology(topo);
    if (load.data == nullptr || load.num_layers <= 0) {
        throw_invalid("load", "expected at least one layer");
    }
    if (load.num_experts != topo.num_experts) {
        throw_invalid("load", "has " + std::to_string(load.num_experts) +
                                  " experts per layer, topology says " +
                                  std::to_string(topo.num_experts));
    }
    validate_load_values(load.data, load.num_layers * load.num_experts, load.num_experts, "load");
}

void validate_current(const int64_t* phy2log, int64_t num_layers, const Topology& topo,
                      const char* field, CurrentChecks checks) {
    if (phy2log == nullptr) {
        throw_invalid(field, "required by this policy (the placement to start from)");
    }
    const int64_t num_slots = topo.slots_per_rank();
    std::vector<int64_t> last_rank(static_cast<size_t>(topo.num_experts));
    for (int64_t l = 0; l < num_layers; ++l) {
        std::fill(last_rank.begin(), last_rank.end(), -1);
        const int64_t* row = phy2log + l * topo.num_replicas;
        for (int64_t p = 0; p < topo.num_replicas; ++p) {
            if (row[p] < 0 || row[p] >= topo.num_experts) {
                throw_invalid(field, "layer " + std::to_string(l) + ", slot " + std::to_string(p) +
                                         ": expert id " + std::to_string(row[p]) +
                                         " outside [0, " + std::to_string(topo.num_experts) + ")");
            }
            // Slots are scanned in order, so a repeat on one rank shows as the same last rank.
            int64_t& seen_on = last_rank[static_cast<size_t>(row[p])];
            const int64_t rank = p / num_slots;
            if (checks.no_duplicate_on_rank && seen_on == rank) {
                throw_invalid(field, "layer " + std::to_string(l) + ": rank " +
                                         std::to_string(rank) + " holds expert " +
                                         std::to_string(row[p]) + " twice");
            }
            seen_on = rank;
        }
        for (int64_t e = 0; checks.every_expert && e < topo.num_experts; ++e) {
            if (last_rank[static_cast<size_t>(e)] < 0) {
                throw_invalid(field, "layer " + std::to_string(l) + ": expert " +
                                         std::to_string(e) + " has no replica");
            }
        }
    }
}

uint64_t layer_seed(uint64_t seed, int64_t layer_idx) {
    uint64_t z = seed + 0x9E3779B97F4A7C15ULL * (static_cast<uint64_t>(layer_idx) + 1);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

}  // namespace eplb_native::policies
