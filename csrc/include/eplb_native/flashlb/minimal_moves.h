#pragma once
// Keeping experts where they are: rank matching by maximum overlap (Hungarian assignment),
// slot-keeping inside ranks, and the incremental mode that edits the current table with a
// bounded number of weight copies.

#include <cstdint>
#include <vector>

#include "eplb_native/flashlb/placement.h"

namespace eplb_native::flashlb {

// Minimum-cost perfect assignment on a square n x n cost matrix (row-major): returns
// assignment[row] = column. O(n^3) Hungarian method (potentials + shortest augmenting paths).
[[nodiscard]] std::vector<int64_t> hungarian_min_cost(const std::vector<double>& cost, int64_t n);

// Reorders `proposed` (phy2log row [P]) without changing any rank's multiset of experts up to
// a rank permutation: new rank rows are matched to current rank rows by maximum overlap, then
// each expert that stays on its rank keeps its current slot. Rank loads as a multiset and
// replica counts are unchanged, and the weight copies from `current` never increase.
[[nodiscard]] std::vector<int64_t> align_to_current(const std::vector<int64_t>& proposed,
                                                    const std::vector<int64_t>& current,
                                                    const LayerShape& shape);

// Weight copies from `current` to `proposed`: slots whose expert is not on that rank in current.
[[nodiscard]] int64_t weight_copies(const std::vector<int64_t>& current,
                                    const std::vector<int64_t>& proposed, const LayerShape& shape);

// Incremental re-placement: starting from `current`, first moves replicas from experts that
// have more than target_counts to the hottest experts that have fewer (one copy each, onto the
// least loaded eligible rank), then swaps replicas off the busiest rank while that lowers it;
// never more than max_moves weight copies (max_moves < 0: no cap). Returns the new row.
[[nodiscard]] std::vector<int64_t> incremental_update(const std::vector<double>& weight,
                                                      const std::vector<int64_t>& target_counts,
                                                      const std::vector<int64_t>& current,
                                                      const LayerShape& shape, int64_t max_moves);

}  // namespace eplb_native::flashlb
