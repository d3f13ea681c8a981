#include "eplb_native/policies/random_placement.h"

#include <limits>
#include <numeric>
#include <random>
#include <utility>
#include <vector>

#include "eplb_native/error.h"
#include "eplb_native/policies/building_blocks.h"

namespace eplb_native::policies {
namespace {

// Uniform in [0, bound) by rejection: fully specified, unlike std::uniform_int_distribution.
int64_t draw_below(std::mt19937_64& rng, int64_t bound) {
    const auto n = static_cast<uint64_t>(bound);
    const uint64_t limit = std::numeric_limits<uint64_t>::max() -
                           std::numeric_limits<uint64_t>::max() % n;
    uint64_t x = rng();
    while (x >= limit) {
        x = rng();
    }
    return static_cast<int64_t>(x % n);
}

void shuffle(std::vector<int64_t>& values, std::mt19937_64& rng) {
    for (auto i = static_cast<int64_t>(values.size()) - 1; i > 0; --i) {
        std::swap(values[static_cast<size_t>(i)],
                  values[static_cast<size_t>(draw_below(rng, i + 1))]);
    }
}

std::vector<int64_t> random_layer(const Topology& topo, uint64_t seed) {
    std::mt19937_64 rng(seed);
    const int64_t n = topo.num_experts;
    const int64_t d = topo.num_ranks;
    const int64_t s = topo.slots_per_rank();
    std::vector<int64_t> logcnt(static_cast<size_t>(n), 1);
    std::vector<int64_t> open;  // experts with fewer than D replicas
    for (int64_t extra = n; extra < topo.num_replicas; ++extra) {
        open.clear();
        for (int64_t e = 0; e < n; ++e) {
            if (logcnt[static_cast<size_t>(e)] < d) {
                open.push_back(e);
            }
        }
        const int64_t expert = open.empty()
                                   ? draw_below(rng, n)
                                   : open[static_cast<size_t>(
                                         draw_below(rng, static_cast<int64_t>(open.size())))];
        ++logcnt[static_cast<size_t>(expert)];
    }
    std::vector<int64_t> expert_order(static_cast<size_t>(n));
    std::iota(expert_order.begin(), expert_order.end(), int64_t{0});
    shuffle(expert_order, rng);
    std::vector<int64_t> rank_label(static_cast<size_t>(d));
    std::iota(rank_label.begin(), rank_label.end(), int64_t{0});
    shuffle(rank_label, rng);
    std::vector<int64_t> phy2log(static_cast<size_t>(topo.num_replicas), -1);
    int64_t position = 0;  // position i -> rank i % D, local slot i / D
    for (int64_t expert : expert_order) {
        for (int64_t k = 0; k < logcnt[static_cast<size_t>(expert)]; ++k, ++position) {
            const int64_t rank = rank_label[static_cast<size_t>(position % d)];
            phy2log[static_cast<size_t>(rank * s + position / d)] = expert;
        }
    }
    EPLB_CHECK(position == topo.num_replicas, "replica count mismatch");
    return phy2log;
}

}  // namespace

Plan plan_random(int64_t num_layers, const Topology& topo, uint64_t seed, ThreadPool& pool,
                 const int64_t* current) {
    validate_topology(topo, num_layers);
    if (current != nullptr) {
        validate_slot_stable(current, num_layers, topo, 1);
    }
    std::vector<int64_t> phy2log(static_cast<size_t>(num_layers * topo.num_replicas));
    pool.parallel_for(num_layers, [&](int64_t layer_idx) {
        std::vector<int64_t> row = random_layer(topo, layer_seed(seed, layer_idx));
        if (current != nullptr) {
            row = align_to_current(row, current + layer_idx * topo.num_replicas, topo.num_ranks);
        }
        std::copy(row.begin(), row.end(), phy2log.begin() + layer_idx * topo.num_replicas);
    });
    return plan_from_phy2log(phy2log.data(), num_layers, topo.num_replicas, topo.num_experts);
}

}  // namespace eplb_native::policies
