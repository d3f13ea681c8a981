#pragma once
// Single-source description of the fused decode MoE operator: POD parameters,
// limits, tile sizes and index math. Compiled by g++ (reference, host tiling, tests) and by the
// Ascend C compiler (kernels), so it holds no std:: containers, no exceptions and no allocation.

#if defined(__CCE_AICORE__) || defined(__NPU_ARCH__) || defined(ASCENDC_CPU_DEBUG) || \
    defined(__DAV_CUBE__) || defined(__DAV_VEC__)
#define EPLB_HD __aicore__
#else
#include <cstdint>
#define EPLB_HD
#endif

namespace eplb_native::shared {

// Element type of activations, weights and W8A8 scales. fp32 activations exist for the
// reference only (no kernel).
enum class DType : int32_t { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kInt8 = 3 };

// How the call's counts are accumulated into moe_load.
enum class LoadMode : int32_t {
    kNone = 0,   // no moe_load given
    kTotal = 1,  // moe_load int64 [E]: moe_load[e] += c[e]
    kRing = 2,   // moe_load int32 [T, E]: row load_counter mod T, then load_counter += 1
};

// Decode limits the device kernels are sized for: a single AIV core routes the BS*K pairs, at
// most kMaxDecodeRows of them (vllm-ascend's decode bound of 256 tokens x top-12). After an
// expert-parallel dispatch a rank runs the operator on the pairs it received, one row each
// (K = 1), so BS itself may reach kMaxDecodeRows.
// The CPU reference is general and does not enforce them; the NPU binding does.
inline constexpr int64_t kMaxTopK = 12;
inline constexpr int64_t kMaxDecodeRows = 256 * kMaxTopK;
inline constexpr int64_t kMaxLocalExperts = 1024;

// Shapes and modes of one call. BS tokens, H hidden, I intermediate, K top-k, E local experts,
// T ring rows (kRing only, else 0).
struct FusedMoeParams {
    int64_t num_tokens;    // BS
    int64_t hidden;        // H
    int64_t intermediate;  // I
    int64_t top_k;         // K
    int64_t num_experts;   // E
    int64_t load_steps;    // T
    DType act_dtype;       // x, w1, w2, out
    LoadMode load_mode;
    int32_t has_mask;      // x_active_mask given (else every token is active)
    int32_t w8a8;          // 1: int8 w1/w2 with per-output-channel scales, x quantised per token
    DType w1_scale_dtype;  // W8A8: fp32 | fp16 | bf16, w1_scale[e] [2I]
    DType w2_scale_dtype;  // W8A8: fp32 | fp16 | bf16, w2_scale[e] [H]
};  // 6 x 8 + 6 x 4 bytes: 8-byte aligned, no implicit padding

// W8A8 dynamic quantisation: int8 codes lie in [-kInt8Max, kInt8Max].
inline constexpr float kInt8Max = 127.0F;

// Weight-scale dtypes of the published DispatchGmmCombineDecode operator: fp32 or the activation
// dtype (fp32/bf16 scales with bf16 activations, fp32/fp16 with fp16), chosen per list, so w1 and
// w2 scales may differ; 16-bit scales are widened to fp32 (exactly) before use.
EPLB_HD inline constexpr bool is_scale_dtype_allowed(DType scale_dtype, DType act_dtype) {
    return scale_dtype == DType::kFloat32 || scale_dtype == act_dtype;
}

EPLB_HD inline constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Element offsets into row-major buffers.
EPLB_HD inline constexpr int64_t pair_index(int64_t token, int64_t k, int64_t top_k) {
    return token * top_k + k;
}
EPLB_HD inline constexpr int64_t w1_cols(int64_t intermediate) { return 2 * intermediate; }
EPLB_HD inline constexpr int64_t gate_col(int64_t j) { return j; }
EPLB_HD inline constexpr int64_t up_col(int64_t j, int64_t intermediate) {
    return intermediate + j;
}
EPLB_HD inline constexpr int64_t w1_offset(int64_t d, int64_t n, int64_t intermediate) {
    return d * w1_cols(intermediate) + n;
}
EPLB_HD inline constexpr int64_t w2_offset(int64_t i, int64_t n, int64_t hidden) {
    return i * hidden + n;
}
// Workspace rows: permuted x [R, H], SwiGLU output a [R, I], GEMM2 output y [R, H].
EPLB_HD inline constexpr int64_t row_offset(int64_t row, int64_t width) { return row * width; }

// True when (token, k) is routed: active token and a local id in [0, E).
EPLB_HD inline constexpr bool is_valid_pair(bool active, int32_t expert_id, int64_t num_experts) {
    return active && expert_id >= 0 && static_cast<int64_t>(expert_id) < num_experts;
}

// Ring row of this call: load_counter mod T, floored so negative counters stay in [0, T)
// (torch's % on tensors, as vllm-ascend's load_counter % num_iter).
EPLB_HD inline constexpr int64_t ring_slot(int64_t load_counter, int64_t load_steps) {
    return ((load_counter % load_steps) + load_steps) % load_steps;
}

// Upper bound on workspace rows of one call.
EPLB_HD inline constexpr int64_t max_rows(const FusedMoeParams& p) {
    return p.num_tokens * p.top_k;
}

}  // namespace eplb_native::shared
