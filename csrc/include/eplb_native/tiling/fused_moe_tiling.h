#pragma once
// Host tiling of the fused decode MoE kernels: validates the call against the kernel limits,
// chooses block dims and tile sizes that fit the unified buffer, and carves the workspace.
// Plain C++17 (no CANN, no torch): the torch_npu binding calls it, gtest covers it.

#include <cstdint>

#include "eplb_native/shared/fused_moe_params.h"
#include "eplb_native/shared/fused_moe_tiling_data.h"

namespace eplb_native::tiling {

// What the tiling needs to know about the device.
struct DeviceSpec {
    int32_t num_vector_cores = shared::kDefaultVectorCores;  // AIV cores available to one launch
    int64_t ub_bytes = shared::kUbUsableBytes;                // UB a TPipe may hand out per core
};

// Throws std::invalid_argument naming the field when the call is outside what the kernels
// handle: BS 1..256, K 1..12, E 1..1024, H 1..7168, I 1..3072, bf16/fp16, T 1..2^20 for the
// ring, T = 0 otherwise, no W8A8 (w8a8 = 0).
void validate_kernel_params(const shared::FusedMoeParams& params);

// Tiling of one call. Validates params and device first; throws std::invalid_argument when no
// tile fits the UB of `device`.
[[nodiscard]] shared::FusedMoeTilingData make_fused_moe_tiling(const shared::FusedMoeParams& params,
                                                               const DeviceSpec& device = {});

// Upper bound on the GEMM tiles of one call with `cols` output columns, over every way the
// BS*K rows can be split among E experts (each non-empty expert adds at most one partial tile).
[[nodiscard]] int64_t max_gemm_tiles(int64_t num_rows, int64_t num_experts, int64_t cols,
                                     int64_t tile_rows, int64_t tile_cols);

}  // namespace eplb_native::tiling
