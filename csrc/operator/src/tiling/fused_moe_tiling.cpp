#include "eplb_native/operator/tiling/fused_moe_tiling.h"

#include <algorithm>
#include <string>
#include <utility>

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

const char* dtype_name(DType dtype) {
    switch (dtype) {
        case DType::kFloat32:
            return "float32";
        case DType::kFloat16:
            return "float16";
        case DType::kBFloat16:
            return "bfloat16";
        case DType::kInt8:
            return "int8";
    }
    return "an unknown dtype";
}

int32_t blocks_for(int64_t work, int32_t cores) {
    return static_cast<int32_t>(std::max<int64_t>(1, std::min<int64_t>(work, cores)));
}

}  // namespace

void validate_kernel_params(const FusedMoeParams& params) {
    check_range("num_tokens", params.num_tokens, 1, shared::kMaxDecodeRows);
    check_range("top_k", params.top_k, 1, shared::kMaxTopK);
    if (params.num_tokens * params.top_k > shared::kMaxDecodeRows) {
        throw_invalid("num_tokens", "BS * K must be <= " + std::to_string(shared::kMaxDecodeRows) +
                                        " for the NPU kernels, got " +
                                        std::to_string(params.num_tokens) + " x " +
                                        std::to_string(params.top_k));
    }
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
    if (params.w8a8 != 0 && params.w8a8 != 1) {
        throw_invalid("w8a8", "expected 0 or 1, got " + std::to_string(params.w8a8));
    }
    if (params.w8a8 != 0) {
        for (const auto& [field, dtype] : {std::pair{"w1_scale", params.w1_scale_dtype},
                                           std::pair{"w2_scale", params.w2_scale_dtype}}) {
            if (!shared::is_scale_dtype_allowed(dtype, params.act_dtype)) {
                throw_invalid(field, std::string("with ") + dtype_name(params.act_dtype) +
                                         " activations the scales must be float32 or " +
                                         dtype_name(params.act_dtype) + ", got " +
                                         dtype_name(dtype));
            }
        }
    }
    if (params.has_mask != 0 && params.has_mask != 1) {
        throw_invalid("has_mask", "expected 0 or 1, got " + std::to_string(params.has_mask));
    }
}

int64_t max_gemm_tiles(int64_t num_rows, int64_t num_experts, int64_t cols) {
    const int64_t row_tiles =
        shared::ceil_div(num_rows, shared::kCubeTileM) + std::min(num_experts, num_rows) - 1;
    return std::max<int64_t>(row_tiles, 0) * shared::ceil_div(cols, shared::kCubeTileN);
}

FusedMoeTilingData make_fused_moe_tiling(const FusedMoeParams& params, const DeviceSpec& device) {
    validate_kernel_params(params);
    check_range("device.num_vector_cores", device.num_vector_cores, 1, 1024);
    check_range("device.num_cube_cores", device.num_cube_cores, 1, 1024);
    check_range("device.ub_bytes", device.ub_bytes, 1, shared::kUbBytes);

    const int64_t pairs = shared::max_rows(params);
    const auto act = static_cast<int32_t>(params.act_dtype);
    const int64_t elem_bytes = shared::dtype_bytes(act);
    const int64_t in_bytes = shared::gemm_in_bytes(act, params.w8a8);

    FusedMoeTilingData t{};
    t.num_tokens = params.num_tokens;
    t.hidden = params.hidden;
    t.intermediate = params.intermediate;
    t.top_k = params.top_k;
    t.num_experts = params.num_experts;
    t.load_steps = params.load_steps;
    t.act_dtype = act;
    t.load_mode = static_cast<int32_t>(params.load_mode);
    t.has_mask = params.has_mask;
    t.w8a8 = params.w8a8;
    const bool w8a8 = params.w8a8 != 0;
    t.w1_scale_dtype = static_cast<int32_t>(w8a8 ? params.w1_scale_dtype : DType::kFloat32);
    t.w2_scale_dtype = static_cast<int32_t>(w8a8 ? params.w2_scale_dtype : DType::kFloat32);
    t.row_chunk = std::min(shared::kRowChunk, align_up(params.hidden, shared::kUbBlockBytes));
    t.h1_stride = align_up(shared::w1_cols(params.intermediate), shared::kFractalRows);
    t.h2_stride = align_up(params.hidden, shared::kFractalRows);

    const struct {
        const char* kernel;
        int64_t bytes;
    } budgets[] = {
        {"moe_route_count", shared::route_ub_bytes(pairs, params.num_tokens, params.num_experts)},
        {"moe_permute", shared::permute_ub_bytes(pairs, params.num_experts, params.hidden,
                                                 t.row_chunk, elem_bytes, params.w8a8)},
        {"moe_swiglu", shared::swiglu_ub_bytes(pairs, params.num_experts, params.intermediate,
                                               elem_bytes, params.w8a8)},
        {"moe_combine", shared::combine_ub_bytes(pairs, params.top_k, t.row_chunk, elem_bytes,
                                                 params.w8a8)},
    };
    for (const auto& budget : budgets) {
        if (budget.bytes > device.ub_bytes) {
            throw_invalid("device.ub_bytes", std::string(budget.kernel) + " needs " +
                                                 std::to_string(budget.bytes) +
                                                 " bytes of unified buffer, the device has " +
                                                 std::to_string(device.ub_bytes));
        }
    }

    const int32_t vector = device.num_vector_cores;
    const int32_t cube = device.num_cube_cores;
    t.route_blocks = 1;  // one core routes all BS*K pairs: deterministic, no atomics
    t.permute_blocks = blocks_for(pairs, vector);
    t.gemm1_blocks = blocks_for(
        max_gemm_tiles(pairs, params.num_experts, shared::w1_cols(params.intermediate)), cube);
    t.swiglu_blocks = blocks_for(pairs, vector);
    t.gemm2_blocks = blocks_for(max_gemm_tiles(pairs, params.num_experts, params.hidden), cube);
    t.combine_blocks = blocks_for(params.num_tokens, vector);

    int64_t cursor = 0;
    const auto carve = [&cursor](int64_t bytes) {
        const int64_t offset = cursor;
        cursor = align_up(cursor + bytes, shared::kWorkspaceAlign);
        return offset;
    };
    const int64_t w8a8_rows = params.w8a8 != 0 ? pairs : 0;
    t.ws_offsets = carve((params.num_experts + 1) * 4);
    t.ws_row_of = carve(pairs * 4);
    t.ws_row_token = carve(pairs * 4);
    t.ws_x_rows = carve(pairs * params.hidden * in_bytes);
    t.ws_x_scale = carve(w8a8_rows * 4);
    t.ws_h1 = carve(pairs * t.h1_stride * 4);
    t.ws_act = carve(pairs * params.intermediate * in_bytes);
    t.ws_act_scale = carve(w8a8_rows * 4);
    t.ws_h2 = carve(pairs * t.h2_stride * 4);
    t.ws_bytes = cursor;
    return t;
}

}  // namespace eplb_native::tiling
