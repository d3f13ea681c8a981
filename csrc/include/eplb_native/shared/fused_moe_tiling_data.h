#pragma once
// Tiling of the fused decode MoE kernels (design §2.4, §7.4): the POD block the host fills and
// copies to the device, the workspace layout, and the unified-buffer (UB) budget of every kernel.
// Compiled by g++ (host tiling, binding, gtest) and by the Ascend C compiler (kernels): the UB
// formulas here are the ones the kernels use to size their TPipe buffers, so the host check and
// the device allocation cannot drift apart. No std::, no exceptions, no allocation.

#include "eplb_native/shared/fused_moe_params.h"

namespace eplb_native::shared {

// On-chip sizes of dav-2201 (A2/A3 AIV): UB is 192 KiB, of which TPipe may hand out 184 KiB.
inline constexpr int64_t kUbBytes = 192 * 1024;
inline constexpr int64_t kUbUsableBytes = 184 * 1024;
// UB buffers start on 32-byte blocks; workspace regions on 512 bytes (as the aclnn framework
// aligns its workspace).
inline constexpr int64_t kUbBlockBytes = 32;
inline constexpr int64_t kWorkspaceAlign = 512;

// Shape limits of the device kernels (vllm-ascend's decode limits, design §1.4; the lower bounds
// on H and 2I are dropped because every copy handles tails with DataCopyPad).
inline constexpr int64_t kMaxHidden = 7168;
inline constexpr int64_t kMaxIntermediate = 3072;  // 2I <= 6144
inline constexpr int64_t kMaxRingSteps = 1 << 20;

// Reduction rows of a weight chunk held in UB per DMA: the largest candidate that fits the UB.
inline constexpr int64_t kMaxReduceChunk = 256;
inline constexpr int64_t kMinReduceChunk = 16;
// Elements of one activation row moved per DMA in permute and combine.
inline constexpr int64_t kRowChunk = 4096;
// AIV cores of one A3 die (Ascend910_9391: 24 AIC + 48 AIV); the binding asks the runtime.
inline constexpr int32_t kDefaultVectorCores = 48;

// Selects the GEMM implementation. Only the vector-core path exists; the cube path (AIC Mmad
// with an AIV epilogue, design §7.4 v2) will take key 1 without changing the other kernels.
enum class TilingKey : int32_t { kVectorGemm = 0, kCubeGemm = 1 };

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
    int32_t tiling_key;    // TilingKey
    // AIV blocks of each launch, in launch order.
    int32_t route_blocks;
    int32_t permute_blocks;
    int32_t gemm1_blocks;
    int32_t gemm2_blocks;
    int32_t combine_blocks;
    int32_t reserved;
    // Tiles: a GEMM tile is tile_rows rows of one expert x tile_cols output columns; the
    // reduction is walked in ascending chunks of gemm*_reduce_chunk rows of the weight.
    int64_t tile_rows;
    int64_t tile_cols;
    int64_t gemm1_reduce_chunk;  // over H
    int64_t gemm2_reduce_chunk;  // over I
    int64_t row_chunk;           // permute / combine: elements per DMA
    // Workspace byte offsets (each kWorkspaceAlign-aligned) and total size.
    int64_t ws_offsets;    // int32 [E + 1]: exclusive prefix sums of the counts, [E] = R
    int64_t ws_row_of;     // int32 [BS * K]: workspace row of pair (t, k), -1 if not routed
    int64_t ws_row_token;  // int32 [BS * K]: source token of each row (first R entries used)
    int64_t ws_x_perm;     // act [BS * K, H]: x rows in expert order
    int64_t ws_act;        // act [BS * K, I]: SwiGLU output a
    int64_t ws_y;          // act [BS * K, H]: GEMM2 output y
    int64_t ws_bytes;      // total
};
// Same bytes on host and device: 18 eight-byte and 10 four-byte fields, no padding.
static_assert(sizeof(FusedMoeTilingData) == 184, "FusedMoeTilingData layout changed");

EPLB_HD inline constexpr int64_t align_up(int64_t value, int64_t alignment) {
    return ceil_div(value, alignment) * alignment;
}

// Bytes of one element of an activation dtype the kernels support (bf16 / fp16).
EPLB_HD inline constexpr int64_t act_bytes(int32_t act_dtype) {
    return act_dtype == static_cast<int32_t>(DType::kFloat32) ? 4 : 2;
}

// Contiguous share [begin, end) of `total` items for block `block_idx` of `num_blocks`;
// shares differ by at most one item and are in block order.
EPLB_HD inline constexpr int64_t block_begin(int64_t total, int64_t num_blocks, int64_t block_idx) {
    return total * block_idx / num_blocks;
}

// GEMM tiles of one expert with `rows` routed rows and `cols` output columns.
EPLB_HD inline constexpr int64_t expert_tiles(int64_t rows, int64_t cols, int64_t tile_rows,
                                              int64_t tile_cols) {
    return ceil_div(rows, tile_rows) * ceil_div(cols, tile_cols);
}

// UB row stride, in elements, of a tile row of `cols` elements: whole 32-byte blocks.
EPLB_HD inline constexpr int64_t ub_row_elems(int64_t cols, int64_t elem_bytes) {
    return align_up(cols * elem_bytes, kUbBlockBytes) / elem_bytes;
}

// ---- UB budget of each kernel (bytes), exactly the buffers each kernel's TPipe initialises ----

// moe_route_count: ids, row_of and row_token int32 [BS*K], mask uint8 [BS], counts, offsets
// and cursors int32 [E+1] each, expert_token_nums as int32 pairs [2E].
EPLB_HD inline constexpr int64_t route_ub_bytes(int64_t num_pairs, int64_t num_tokens,
                                                int64_t num_experts) {
    return 3 * align_up(num_pairs * 4, kUbBlockBytes) + align_up(num_tokens, kUbBlockBytes) +
           3 * align_up((num_experts + 1) * 4, kUbBlockBytes) +
           align_up(num_experts * 8, kUbBlockBytes);
}

// Offsets int32 [E + 1] in UB: every kernel after routing reads R (and the GEMMs the counts).
EPLB_HD inline constexpr int64_t offsets_ub_bytes(int64_t num_experts) {
    return align_up((num_experts + 1) * 4, kUbBlockBytes);
}

// moe_permute: offsets, the whole row_token table int32 [BS*K] (a core reads its share), and a
// double-buffered activation chunk [row_chunk].
EPLB_HD inline constexpr int64_t permute_ub_bytes(int64_t num_pairs, int64_t num_experts,
                                                  int64_t row_chunk, int64_t elem_bytes) {
    return offsets_ub_bytes(num_experts) + align_up(num_pairs * 4, kUbBlockBytes) +
           2 * align_up(row_chunk * elem_bytes, kUbBlockBytes);
}

// Vector GEMM with `halves` weight column blocks per tile (2 for gate|up, 1 for GEMM2):
//   offsets, weight chunk queue (depth 2) act [halves, chunk, tile_cols] (rows padded to 32
//   bytes), its fp32 copy with the same row stride,
//   activation chunk act [tile_rows, chunk] + fp32 copy, fp32 accumulators [halves, rows, cols],
//   one fp32 product row, one fp32 epilogue scratch tile and the act output tile.
EPLB_HD inline constexpr int64_t gemm_ub_bytes(int64_t num_experts, int64_t halves,
                                               int64_t tile_rows, int64_t tile_cols,
                                               int64_t chunk, int64_t elem_bytes) {
    return offsets_ub_bytes(num_experts) +
           2 * halves * chunk * align_up(tile_cols * elem_bytes, kUbBlockBytes) +
           halves * chunk * ub_row_elems(tile_cols, elem_bytes) * 4 +
           tile_rows * align_up(chunk * elem_bytes, kUbBlockBytes) + tile_rows * chunk * 4 +
           halves * tile_rows * tile_cols * 4 + tile_cols * 4 + tile_rows * tile_cols * 4 +
           tile_rows * align_up(tile_cols * elem_bytes, kUbBlockBytes);
}

// moe_combine: row_of int32 [K] and scales fp32 [K] of one token, a double-buffered y chunk,
// its fp32 copy, the fp32 accumulator and the act output chunk.
EPLB_HD inline constexpr int64_t combine_ub_bytes(int64_t top_k, int64_t row_chunk,
                                                  int64_t elem_bytes) {
    return 2 * align_up(top_k * 4, kUbBlockBytes) +
           3 * align_up(row_chunk * elem_bytes, kUbBlockBytes) + 2 * row_chunk * 4;
}

}  // namespace eplb_native::shared
