#pragma once
// CPU reference of the single-device fused decode MoE operator, structured phase by
// phase like the Ascend C kernels: route (counts, prefix sums, row map, expert_token_nums,
// moe_load) -> permute rows -> GEMM1 tiles + SwiGLU epilogue -> GEMM2 tiles -> weighted combine.
//
// Numerics (normative, bit-exact on CPU; build with -ffp-contract=off):
//   h1[r,n] = sum_{d ascending} f32(x[t,d]) * f32(w1[e][d,n])      fp32, one accumulator
//   s = g / (1 + e) with e = f32(exp_f64(f64(-g)))                  (exp correctly rounded to
//                                                                     fp32 up to double rounding)
//   a[r,j] = round(s * u)                                            round = RNE to the act dtype
//   y[r,n] = round(sum_{i ascending} f32(a[r,i]) * f32(w2[e][i,n]))
//   out[t,n] = round(acc), acc = 0; acc = acc + scale[t,k] * f32(y[row(t,k),n]) for valid k
// For fp32 activations `round` is the identity (no rounding beyond the fp32 operations).
// Masked tokens and tokens with no valid k get out = 0.
// This is the arithmetic of the Ascend cube path: Mmad multiplies bf16/fp16 pairs (exact in
// fp32) and accumulates into fp32 in L0C, reduction steps ascending, with Mmad's own sum taken
// in ascending k too (the emulation's model; the hardware's order inside one Mmad is not
// published, which is what the device tolerance absorbs); the fp32 accumulators go to GM
// unrounded and the vector unit rounds them (Cast CAST_RINT) and runs SwiGLU and the combine.
//
// W8A8 mode (params.w8a8 = 1; int8 w1/w2, per-output-channel scales w1_scale[e] [2I] and
// w2_scale[e] [H] in fp32/fp16/bf16, widened exactly to fp32):
//   quant(v[0..n)): m = max |v| (NaN ignored); if m is 0 or not finite: codes 0, scale 0; else
//     s = 127 / m, code = clamp(rint_even(v * s), -127, 127) (NaN -> 0), scale = 1 / s
//   x is quantised per token; h1[r,n] = (f32(int32 sum_d xq*w1q) * w1_scale[n]) * x_scale[t]
//   a = s * u stays fp32 and is quantised per row; y[r,n] = round((f32(int32 sum_i aq*w2q) *
//   w2_scale[n]) * a_scale[r]); combine as above. Integer sums are exact (order-free), f32(int32)
//   rounds to nearest even. The operator restricts scale dtypes to fp32 or the activation dtype
//   (shared::is_scale_dtype_allowed); the reference accepts any of the three.

#include <cstdint>
#include <vector>

#include "eplb_native/operator/shared/fused_moe_params.h"
#include "eplb_native/thread_pool.h"

namespace eplb_native::reference {

// Row map of one call. All vectors are owned; sizes in comments.
struct RowMap {
    std::vector<int64_t> counts;      // [E] c[e], also expert_token_nums
    std::vector<int64_t> offsets;     // [E + 1] exclusive prefix sums of counts; offsets[E] = R
    std::vector<int64_t> row_of;      // [BS * K] workspace row of pair (t, k), -1 if not valid
    std::vector<int64_t> row_token;   // [R] source token of each workspace row
    [[nodiscard]] int64_t num_rows() const { return offsets.back(); }
};

// Borrowed input buffers (row-major, contiguous). 16-bit activations are raw bf16/fp16 bits.
struct FusedMoeInputs {
    const void* x = nullptr;                 // [BS, H] act dtype
    const int32_t* expert_ids = nullptr;     // [BS, K] local ids; outside [0, E) = skipped
    const float* expert_scales = nullptr;    // [BS, K]
    std::vector<const void*> w1;             // E pointers to [H, 2I]; nullptr allowed if c[e]=0
    std::vector<const void*> w2;             // E pointers to [I, H]; nullptr allowed if c[e]=0
    std::vector<const void*> w1_scale;       // W8A8 only: E pointers to [2I] scales
    std::vector<const void*> w2_scale;       // W8A8 only: E pointers to [H] scales
    const uint8_t* x_active_mask = nullptr;  // [BS] 0/1, nullptr = all active (has_mask = 0)
};

// Borrowed output / in-out buffers.
struct FusedMoeOutputs {
    void* out = nullptr;                   // [BS, H] act dtype
    int64_t* expert_token_nums = nullptr;  // [E]
    int64_t* moe_load_total = nullptr;     // [E], LoadMode::kTotal
    int32_t* moe_load_ring = nullptr;      // [T, E], LoadMode::kRing
    int32_t* load_counter = nullptr;       // scalar, LoadMode::kRing
};

// Throws std::invalid_argument naming the field for impossible sizes or modes.
void validate_params(const shared::FusedMoeParams& params);

// Phase 1: routing (single-threaded, integer only).
[[nodiscard]] RowMap route_tokens(const shared::FusedMoeParams& params, const int32_t* expert_ids,
                                  const uint8_t* x_active_mask);

// Phase 1 tail: moe_load accumulation, once per call after the counts are final.
void update_moe_load(const shared::FusedMoeParams& params, const RowMap& rows,
                     const FusedMoeOutputs& outputs);

// The whole operator. Writes out and expert_token_nums, updates moe_load / load_counter.
// Results are identical for any pool size.
void fused_moe_decode(const shared::FusedMoeParams& params, const FusedMoeInputs& inputs,
                      const FusedMoeOutputs& outputs, ThreadPool& pool);

}  // namespace eplb_native::reference
