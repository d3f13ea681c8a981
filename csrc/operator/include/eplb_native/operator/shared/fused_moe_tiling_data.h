#pragma once
// Tiling of the fused decode MoE kernels: the POD block the host fills and copies to the device,
// the workspace layout, the cube tile geometry and the unified-buffer (UB) budget of every vector
// kernel. Compiled by g++ (host tiling, binding, gtest) and by the Ascend C compiler (kernels):
// the budgets here are the ones the kernels size their TPipe buffers with, so the host check and
// the device allocation cannot drift apart. No std::, no exceptions, no allocation.

#include "eplb_native/operator/shared/fused_moe_params.h"

namespace eplb_native::shared {

// On-chip sizes of dav-2201 (A2/A3): UB 192 KiB per vector core, of which a TPipe may hand out
// 184 KiB; per cube core L1 512 KiB (128 bytes reserved), L0A and L0B 64 KiB, L0C 128 KiB.
inline constexpr int64_t kUbBytes = 192 * 1024;
inline constexpr int64_t kUbUsableBytes = 184 * 1024;
inline constexpr int64_t kL1UsableBytes = 512 * 1024 - 128;
inline constexpr int64_t kL0ABytes = 64 * 1024;
inline constexpr int64_t kL0BBytes = 64 * 1024;
inline constexpr int64_t kL0CBytes = 128 * 1024;
// UB and L1 buffers start on 32-byte blocks; workspace regions on 512 bytes (as the aclnn
// framework aligns its workspace).
inline constexpr int64_t kUbBlockBytes = 32;
inline constexpr int64_t kWorkspaceAlign = 512;

// Shape limits of the device kernels (vllm-ascend's decode limits; the lower bounds on H and 2I
// are dropped because every copy handles tails).
inline constexpr int64_t kMaxHidden = 7168;
inline constexpr int64_t kMaxIntermediate = 3072;  // 2I <= 6144
inline constexpr int64_t kMaxRingSteps = 1 << 20;

// Elements of one activation row moved per DMA in the bf16/fp16 permute and in the combine.
inline constexpr int64_t kRowChunk = 4096;
// Cores of one A3 die (Ascend910_9391: 24 cube + 48 vector); the binding asks the runtime.
inline constexpr int32_t kDefaultVectorCores = 48;
inline constexpr int32_t kDefaultCubeCores = 24;

// ---- cube GEMM geometry (moe_gemm1, moe_gemm2) ------------------------------------------------
// A tile is up to kCubeTileM rows of one expert x kCubeTileN output columns, accumulated in L0C
// over the reduction: GM -> L1 in chunks of kCubeChunkKBytes per row (ND -> Nz on the way),
// L1 -> L0A/L0B in steps of kCubeStepKBytes per row, one Mmad per step. Sizes are in bytes of the
// input element so that bf16/fp16 (2 bytes) and int8 (1 byte) tiles occupy the same buffers.
inline constexpr int64_t kCubeTileM = 128;
inline constexpr int64_t kCubeTileN = 128;
inline constexpr int64_t kCubeChunkKBytes = 512;
inline constexpr int64_t kCubeStepKBytes = 128;
// Fractal geometry: 16 rows x 32 bytes (512 bytes) in L1/L0A/L0B, 16 x 16 accumulators in L0C.
inline constexpr int64_t kFractalRows = 16;
inline constexpr int64_t kFractalRowBytes = 32;
inline constexpr int64_t kFractalBytes = kFractalRows * kFractalRowBytes;

// Bytes of each double-buffered cube buffer.
inline constexpr int64_t kCubeL1ABytes = kCubeTileM * kCubeChunkKBytes;
inline constexpr int64_t kCubeL1BBytes = kCubeChunkKBytes * kCubeTileN;
inline constexpr int64_t kCubeL0ABytes = kCubeTileM * kCubeStepKBytes;
inline constexpr int64_t kCubeL0BBytes = kCubeStepKBytes * kCubeTileN;
inline constexpr int64_t kCubeL0CBytes = kCubeTileM * kCubeTileN * 4;  // fp32 / int32
static_assert(2 * (kCubeL1ABytes + kCubeL1BBytes) <= kL1UsableBytes, "L1 double buffer");
static_assert(2 * kCubeL0ABytes <= kL0ABytes && 2 * kCubeL0BBytes <= kL0BBytes, "L0A/L0B");
static_assert(2 * kCubeL0CBytes <= kL0CBytes, "L0C double buffer");
static_assert(kCubeChunkKBytes % kCubeStepKBytes == 0, "whole L0 steps per L1 chunk");
static_assert(kCubeTileM % kFractalRows == 0 && kCubeTileN % 32 == 0, "whole fractals");

// Everything a kernel needs besides its tensor addresses. Filled by
// eplb_native::tiling::make_fused_moe_tiling, copied verbatim to device memory, read through the
// `tiling` GM_ADDR. Only fixed-width fields, 8-byte aligned, no implicit padding.
struct FusedMoeTilingData {
    // Shapes (see FusedMoeParams).
    int64_t num_tokens;    // BS
    int64_t hidden;        // H
    int64_t intermediate;  // I
    int64_t top_k;         // K
    int64_t num_experts;   // E
    int64_t load_steps;    // T (LoadMode::kRing), else 0
    int32_t act_dtype;     // DType: kBFloat16 or kFloat16
    int32_t load_mode;     // LoadMode
    int32_t has_mask;      // x_active_mask given
    int32_t w8a8;          // 1: int8 weights, activations quantised per row
    int32_t w1_scale_dtype;  // DType of w1_scale (W8A8): kFloat32 or act_dtype
    int32_t w2_scale_dtype;  // DType of w2_scale (W8A8): kFloat32 or act_dtype
    // Blocks of each launch, in launch order (vector cores, except the two cube GEMMs).
    int32_t route_blocks;
    int32_t permute_blocks;
    int32_t gemm1_blocks;
    int32_t swiglu_blocks;
    int32_t gemm2_blocks;
    int32_t combine_blocks;
    int64_t row_chunk;  // permute / combine: elements per DMA
    // Row strides (elements) of the GEMM outputs h1 [R, 2I] and h2 [R, H]: whole 16-column
    // blocks, so that every Fixpipe writes whole blocks without overlapping the next row.
    int64_t h1_stride;
    int64_t h2_stride;
    // Workspace byte offsets (each kWorkspaceAlign-aligned) and total size; R <= BS * K rows.
    int64_t ws_offsets;    // int32 [E + 1]: exclusive prefix sums of the counts, [E] = R
    int64_t ws_row_of;     // int32 [BS * K]: workspace row of pair (t, k), -1 if not routed
    int64_t ws_row_token;  // int32 [BS * K]: source token of each row (first R entries used)
    int64_t ws_x_rows;     // act or int8 [BS * K, H]: x rows in expert order (GEMM1 input)
    int64_t ws_x_scale;    // fp32 [BS * K]: W8A8 dequantisation scale of each x row
    int64_t ws_h1;         // fp32 or int32 [BS * K, h1_stride]: GEMM1 accumulators
    int64_t ws_act;        // act or int8 [BS * K, I]: SwiGLU output (GEMM2 input)
    int64_t ws_act_scale;  // fp32 [BS * K]: W8A8 dequantisation scale of each act row
    int64_t ws_h2;         // fp32 or int32 [BS * K, h2_stride]: GEMM2 accumulators
    int64_t ws_bytes;      // total
};
// Same bytes on host and device: 19 eight-byte and 12 four-byte fields, no padding.
static_assert(sizeof(FusedMoeTilingData) == 19 * 8 + 12 * 4, "FusedMoeTilingData layout changed");

EPLB_HD inline constexpr int64_t align_up(int64_t value, int64_t alignment) {
    return ceil_div(value, alignment) * alignment;
}

// Bytes of one element of a DType.
EPLB_HD inline constexpr int64_t dtype_bytes(int32_t dtype) {
    return dtype == static_cast<int32_t>(DType::kFloat32)  ? 4
           : dtype == static_cast<int32_t>(DType::kInt8) ? 1
                                                          : 2;
}

// Bytes of one GEMM input element: int8 under W8A8, else the activation dtype.
EPLB_HD inline constexpr int64_t gemm_in_bytes(int32_t act_dtype, int32_t w8a8) {
    return w8a8 != 0 ? 1 : dtype_bytes(act_dtype);
}

// Contiguous share [begin, end) of `total` items for block `block_idx` of `num_blocks`;
// shares differ by at most one item and are in block order.
EPLB_HD inline constexpr int64_t block_begin(int64_t total, int64_t num_blocks, int64_t block_idx) {
    return total * block_idx / num_blocks;
}

// Cube tiles of one expert with `rows` routed rows and `cols` output columns.
EPLB_HD inline constexpr int64_t expert_tiles(int64_t rows, int64_t cols) {
    return ceil_div(rows, kCubeTileM) * ceil_div(cols, kCubeTileN);
}

// UB row stride, in elements, of a row of `cols` elements: whole 32-byte blocks.
EPLB_HD inline constexpr int64_t ub_row_elems(int64_t cols, int64_t elem_bytes) {
    return align_up(cols * elem_bytes, kUbBlockBytes) / elem_bytes;
}

// ---- UB budget of each vector kernel (bytes), exactly the buffers its TPipe initialises ----

// moe_route_count: ids, row_of and row_token int32 [BS*K], mask uint8 [BS], counts, offsets
// and cursors int32 [E+1] each, expert_token_nums as int32 pairs [2E].
EPLB_HD inline constexpr int64_t route_ub_bytes(int64_t num_pairs, int64_t num_tokens,
                                                int64_t num_experts) {
    return 3 * align_up(num_pairs * 4, kUbBlockBytes) + align_up(num_tokens, kUbBlockBytes) +
           3 * align_up((num_experts + 1) * 4, kUbBlockBytes) +
           align_up(num_experts * 8, kUbBlockBytes);
}

// Offsets int32 [E + 1] in UB: every kernel after routing reads R (and some the counts).
EPLB_HD inline constexpr int64_t offsets_ub_bytes(int64_t num_experts) {
    return align_up((num_experts + 1) * 4, kUbBlockBytes);
}

// quantize_row_int8 on rows of up to `cols` elements: the fp32 row, two fp32 scratch rows (one
// for ReduceMax), the fp16 and int8 codes, and one 32-byte block for the maximum.
EPLB_HD inline constexpr int64_t quantize_ub_bytes(int64_t cols) {
    return 3 * align_up(cols * 4, kUbBlockBytes) + align_up(cols * 2, kUbBlockBytes) +
           align_up(cols, kUbBlockBytes) + kUbBlockBytes;
}

// moe_permute: offsets, the row_token share int32 [BS*K], and either a double-buffered
// activation chunk [row_chunk] (bf16/fp16) or, under W8A8, one activation row [H] and the
// quantisation buffers of an [H] row.
EPLB_HD inline constexpr int64_t permute_ub_bytes(int64_t num_pairs, int64_t num_experts,
                                                  int64_t hidden, int64_t row_chunk,
                                                  int64_t elem_bytes, int32_t w8a8) {
    return offsets_ub_bytes(num_experts) + align_up(num_pairs * 4, kUbBlockBytes) +
           (w8a8 != 0 ? align_up(hidden * elem_bytes, kUbBlockBytes) + quantize_ub_bytes(hidden)
                      : 2 * align_up(row_chunk * elem_bytes, kUbBlockBytes));
}

// moe_swiglu, one row at a time: offsets, the gate and up halves of the GEMM1 row ([I] each,
// fp32 or int32), and either the fp32 SwiGLU row and the act output row (bf16/fp16) or, under
// W8A8, the gate and up w1_scale of the current expert as fp32 [I] each, their raw 16-bit copy
// [I], the share's row scales fp32 [BS*K] and the quantisation buffers of an [I] row.
EPLB_HD inline constexpr int64_t swiglu_ub_bytes(int64_t num_pairs, int64_t num_experts,
                                                 int64_t intermediate, int64_t elem_bytes,
                                                 int32_t w8a8) {
    const int64_t row32 = align_up(intermediate * 4, kUbBlockBytes);
    return offsets_ub_bytes(num_experts) + 2 * row32 +
           (w8a8 != 0 ? 2 * row32 + align_up(intermediate * 2, kUbBlockBytes) +
                            align_up(num_pairs * 4, kUbBlockBytes) + quantize_ub_bytes(intermediate)
                      : row32 + align_up(intermediate * elem_bytes, kUbBlockBytes));
}

// moe_combine: row_of, scales and expert ids of one token ([K] each), a double-buffered GEMM2
// row chunk [row_chunk] (fp32 or int32), the fp32 y and accumulator chunks, the rounded and the
// output chunks (act dtype), and under W8A8 the w2_scale chunk as fp32 plus its raw 16-bit copy
// and the act_scale of every row fp32 [BS*K].
EPLB_HD inline constexpr int64_t combine_ub_bytes(int64_t num_pairs, int64_t top_k,
                                                  int64_t row_chunk, int64_t elem_bytes,
                                                  int32_t w8a8) {
    const int64_t chunk32 = align_up(row_chunk * 4, kUbBlockBytes);
    return 3 * align_up(top_k * 4, kUbBlockBytes) + 2 * chunk32 + 2 * chunk32 +
           2 * align_up(row_chunk * elem_bytes, kUbBlockBytes) +
           (w8a8 != 0 ? chunk32 + align_up(row_chunk * 2, kUbBlockBytes) +
                            align_up(num_pairs * 4, kUbBlockBytes)
                      : 0);
}

}  // namespace eplb_native::shared
