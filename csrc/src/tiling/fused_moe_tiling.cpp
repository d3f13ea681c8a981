#include "eplb_native/tiling/fused_moe_tiling.h"

#include <algorithm>
#include <string>

#include "eplb_native/error.h"

namespace eplb_native::tiling {

namespace {

using shared::align_up;
using shared::DType;
using shared::FusedMoeParams;
using shared::FusedMoeTilingData;
using shared::LoadMode;

void check_range(const char* field, int64_t value, int64_t low, int64_t high) {
    if (value < low || value > high) {
        throw_invalid(field, "expected " + std::to_string(low) + ".." + std::to_string(high) +
                                 " for the NPU kernels, got " + std::to_string(value));
    }
}

// Largest reduction chunk (a power of two in [kMinReduceChunk, kMaxReduceChunk], never longer
// than the reduction rounded up to kMinReduceChunk) whose GEMM buffers fit the UB.
int64_t pick_reduce_chunk(const char* field, int64_t reduce, int64_t halves,
                          const FusedMoeParams& params, int64_t ub_bytes) {
    const int64_t elem_bytes = shared::act_bytes(static_cast<int32_t>(params.act_dtype));
    const int64_t longest = align_up(reduce, shared::kMinReduceChunk);
    for (int64_t chunk = shared::kMaxReduceChunk; chunk >= shared::kMinReduceChunk; chunk /= 2) {
        if (chunk > longest && chunk > shared::kMinReduceChunk) {
            continue;
        }
        if (shared::gemm_ub_bytes(params.num_experts, halves, shared::kTileRows,
                                  shared::kTileCols, chunk, elem_bytes) <= ub_bytes) {
            return chunk;
        }
    }
    throw_invalid(field, "no GEMM reduction chunk fits a unified buffer of " +
                             std::to_string(ub_bytes) + " bytes");
}

int32_t blocks_for(int64_t work, int32_t cores) {
    return static_cast<int32_t>(std::max<int64_t>(1, std::min<int64_t>(work, cores)));
}

}  // namespace

void validate_kernel_params(const FusedMoeParams& params) {
    check_range("num_tokens", params.num_tokens, 1, shared::kMaxDecodeTokens);
    check_range("top_k", params.top_k, 1, shared::kMaxTopK);
    check_range("num_experts", params.num_experts, 1, shared::kMaxLocalExperts);
    check_range("hidden", params.hidden, 1, shared::kMaxHidden);
    check_range("intermediate", params.intermediate, 1, shared::kMaxIntermediate);
    if (params.act_dtype != DType::kBFloat16 && params.act_dtype != DType::kFloat16) {
        throw_invalid("act_dtype", "the NPU kernels take bfloat16 or float16, got code " +
                                       std::to_string(static_cast<int32_t>(params.act_dtype)));
    }
    switch (params.load_mode) {
        case LoadMode::kNone:
        case LoadMode::kTotal:
            if (params.load_steps != 0) {
                throw_invalid("load_steps", "must be 0 unless moe_load is a 2-D ring, got " +
                                                std::to_string(params.load_steps));
            }
            break;
        case LoadMode::kRing:
            check_range("load_steps", params.load_steps, 1, shared::kMaxRingSteps);
            break;
        default:
            throw_invalid("load_mode", "expected 0 (none), 1 (total) or 2 (ring), got " +
                                           std::to_string(static_cast<int32_t>(params.load_mode)));
    }
    if (params.w8a8 != 0) {
        throw_invalid("w8a8", "the NPU kernels implement bf16/fp16 weights only (no W8A8 yet)");
    }
    if (params.has_mask != 0 && params.has_mask != 1) {
        throw_invalid("has_mask", "expected 0 or 1, got " + std::to_string(params.has_mask));
    }
}

int64_t max_gemm_tiles(int64_t num_rows, int64_t num_experts, int64_t cols, int64_t tile_rows,
                       int64_t tile_cols) {
    const int64_t row_tiles =
        shared::ceil_div(num_rows, tile_rows) + std::min(num_experts, num_rows) - 1;
    return std::max<int64_t>(row_tiles, 0) * shared::ceil_div(cols, tile_cols);
}

FusedMoeTilingData make_fused_moe_tiling(const FusedMoeParams& params, const DeviceSpec& device) {
    validate_kernel_params(params);
    check_range("device.num_vector_cores", device.num_vector_cores, 1, 1024);
    check_range("device.ub_bytes", device.ub_bytes, 1, shared::kUbBytes);

    const int64_t pairs = shared::max_rows(params);
    const int64_t elem_bytes = shared::act_bytes(static_cast<int32_t>(params.act_dtype));
    const int32_t cores = device.num_vector_cores;

    FusedMoeTilingData t{};
    t.num_tokens = params.num_tokens;
    t.hidden = params.hidden;
    t.intermediate = params.intermediate;
    t.top_k = params.top_k;
    t.num_experts = params.num_experts;
    t.load_steps = params.load_steps;
    t.act_dtype = static_cast<int32_t>(params.act_dtype);
    t.load_mode = static_cast<int32_t>(params.load_mode);
    t.has_mask = params.has_mask;
    t.tiling_key = static_cast<int32_t>(shared::TilingKey::kVectorGemm);

    t.tile_rows = shared::kTileRows;
    t.tile_cols = shared::kTileCols;
    t.gemm1_reduce_chunk = pick_reduce_chunk("hidden", params.hidden, 2, params, device.ub_bytes);
    t.gemm2_reduce_chunk =
        pick_reduce_chunk("intermediate", params.intermediate, 1, params, device.ub_bytes);
    t.row_chunk = std::min(shared::kRowChunk, align_up(params.hidden, shared::kUbBlockBytes));

    const int64_t route_ub = shared::route_ub_bytes(pairs, params.num_tokens, params.num_experts);
    const int64_t permute_ub =
        shared::permute_ub_bytes(pairs, params.num_experts, t.row_chunk, elem_bytes);
    const int64_t combine_ub = shared::combine_ub_bytes(params.top_k, t.row_chunk, elem_bytes);
    if (std::max({route_ub, permute_ub, combine_ub}) > device.ub_bytes) {
        throw_invalid("device.ub_bytes", "routing/permute/combine need " +
                                             std::to_string(std::max({route_ub, permute_ub,
                                                                      combine_ub})) +
                                             " bytes of unified buffer, the device has " +
                                             std::to_string(device.ub_bytes));
    }

    t.route_blocks = 1;  // one core routes all BS*K pairs: deterministic, no atomics
    t.permute_blocks = blocks_for(pairs, cores);
    t.gemm1_blocks = blocks_for(max_gemm_tiles(pairs, params.num_experts, params.intermediate,
                                               t.tile_rows, t.tile_cols),
                                cores);
    t.gemm2_blocks = blocks_for(
        max_gemm_tiles(pairs, params.num_experts, params.hidden, t.tile_rows, t.tile_cols), cores);
    t.combine_blocks = blocks_for(params.num_tokens, cores);

    int64_t cursor = 0;
    const auto carve = [&cursor](int64_t bytes) {
        const int64_t offset = cursor;
        cursor = align_up(cursor + bytes, shared::kWorkspaceAlign);
        return offset;
    };
    t.ws_offsets = carve((params.num_experts + 1) * 4);
    t.ws_row_of = carve(pairs * 4);
    t.ws_row_token = carve(pairs * 4);
    t.ws_x_perm = carve(pairs * params.hidden * elem_bytes);
    t.ws_act = carve(pairs * params.intermediate * elem_bytes);
    t.ws_y = carve(pairs * params.hidden * elem_bytes);
    t.ws_bytes = cursor;
    return t;
}

}  // namespace eplb_native::tiling
