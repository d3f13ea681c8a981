#pragma once
// Host tiling of the fused decode MoE kernels: validates the call against the kernel limits,
// chooses block dims, checks that every vector kernel fits the unified buffer, and carves the
// workspace. Plain C++17 (no CANN, no torch): the torch_npu binding calls it, gtest covers it.

#include <cstdint>

#include "eplb_native/operator/shared/fused_moe_params.h"
#include "eplb_native/operator/shared/fused_moe_tiling_data.h"

namespace eplb_native::tiling {

// What the tiling needs to know about the device.
struct DeviceSpec {
    int32_t num_vector_cores = shared::kDefaultVectorCores;  // AIV cores available to one launch
    int32_t num_cube_cores = shared::kDefaultCubeCores;      // AIC cores available to one launch
    int64_t ub_bytes = shared::kUbUsableBytes;                // UB a TPipe may hand out per core
};

// Throws std::invalid_argument naming the field when the call is outside what the kernels
// handle: BS 1..3072, K 1..12 with BS * K <= 3072, E 1..1024, H 1..7168, I 1..3072, bf16/fp16
// activations, T 1..2^20 for the ring, T = 0 otherwise; under W8A8 each scale dtype is fp32 or
// the activation dtype (the published DispatchGmmCombineDecode rule,
// shared::is_scale_dtype_allowed).
void validate_kernel_params(const shared::FusedMoeParams& params);

// Tiling of one call. Validates params and device first; throws std::invalid_argument when a
// vector kernel's buffers do not fit the UB of `device`.
[[nodiscard]] shared::FusedMoeTilingData make_fused_moe_tiling(const shared::FusedMoeParams& params,
                                                               const DeviceSpec& device = {});

// Upper bound on the cube tiles of one call with `cols` output columns, over every way the
// BS*K rows can be split among E experts (each non-empty expert adds at most one partial tile).
[[nodiscard]] int64_t max_gemm_tiles(int64_t num_rows, int64_t num_experts, int64_t cols);

}  // namespace eplb_native::tiling
