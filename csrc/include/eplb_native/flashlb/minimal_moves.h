#pragma once
// Keeping experts where they are: the incremental mode that edits the current table with a
// bounded number of weight copies (the alignment of a fresh plan to the table in force is
// policies::align_to_current).

#include <cstdint>
#include <vector>

#include "eplb_native/flashlb/placement.h"

namespace eplb_native::flashlb {

// Incremental re-placement: starting from `current`, first moves replicas from experts that
// have more than target_counts to the hottest experts that have fewer (one copy each, onto the
// least loaded eligible rank), then swaps replicas off the busiest rank while that lowers it;
// never more than max_moves weight copies (max_moves < 0: no cap). Returns the new row.
[[nodiscard]] std::vector<int64_t> incremental_update(const std::vector<double>& weight,
                                                      const std::vector<int64_t>& target_counts,
                                                      const std::vector<int64_t>& current,
                                                      const LayerShape& shape, int64_t max_moves);

}  // namespace eplb_native::flashlb
