// Host tiling of the fused decode MoE kernels, the shared POD layout and the pointer-table cache.
#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <numeric>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "eplb_native/shared/fused_moe_params.h"
#include "eplb_native/shared/fused_moe_tiling_data.h"
#include "eplb_native/tiling/fused_moe_tiling.h"
#include "eplb_native/tiling/pointer_table_cache.h"

namespace {

using eplb_native::shared::DType;
using eplb_native::shared::FusedMoeParams;
using eplb_native::shared::FusedMoeTilingData;
using eplb_native::shared::LoadMode;
using eplb_native::tiling::DeviceSpec;
using eplb_native::tiling::make_fused_moe_tiling;
namespace shared = eplb_native::shared;

// The block is copied byte for byte to the device and read by the Ascend compiler's layout of
// the same header: fixed size, no padding, 8-byte fields on 8-byte offsets.
static_assert(std::is_trivially_copyable_v<FusedMoeTilingData>);
static_assert(std::is_standard_layout_v<FusedMoeTilingData>);
static_assert(sizeof(FusedMoeTilingData) == 18 * 8 + 10 * 4);
static_assert(sizeof(FusedMoeTilingData) % 8 == 0);
static_assert(offsetof(FusedMoeTilingData, act_dtype) == 48);
static_assert(offsetof(FusedMoeTilingData, route_blocks) == 64);
static_assert(offsetof(FusedMoeTilingData, tile_rows) == 88);
static_assert(offsetof(FusedMoeTilingData, ws_offsets) == 128);
static_assert(offsetof(FusedMoeTilingData, ws_bytes) == 176);
static_assert(shared::align_up(1, 512) == 512 && shared::align_up(512, 512) == 512);
static_assert(shared::ub_row_elems(10, 2) == 16 && shared::ub_row_elems(64, 2) == 64);
static_assert(shared::block_begin(10, 3, 0) == 0 && shared::block_begin(10, 3, 3) == 10);

FusedMoeParams decode_params(int64_t bs, int64_t hidden, int64_t inter, int64_t top_k,
                             int64_t experts) {
    FusedMoeParams p{};
    p.num_tokens = bs;
    p.hidden = hidden;
    p.intermediate = inter;
    p.top_k = top_k;
    p.num_experts = experts;
    p.load_steps = 0;
    p.act_dtype = DType::kBFloat16;
    p.load_mode = LoadMode::kTotal;
    p.has_mask = 0;
    return p;
}

std::vector<std::pair<int64_t, int64_t>> regions(const FusedMoeTilingData& t) {
    const int64_t pairs = t.num_tokens * t.top_k;
    return {{t.ws_offsets, (t.num_experts + 1) * 4},
            {t.ws_row_of, pairs * 4},
            {t.ws_row_token, pairs * 4},
            {t.ws_x_perm, pairs * t.hidden * 2},
            {t.ws_act, pairs * t.intermediate * 2},
            {t.ws_y, pairs * t.hidden * 2}};
}

TEST(FusedMoeTiling, WorkspaceRegionsAreAlignedDisjointAndInOrder) {
    for (const auto& p : {decode_params(1, 7, 3, 1, 1), decode_params(256, 7168, 3072, 12, 1024),
                          decode_params(37, 2048, 768, 8, 128)}) {
        const FusedMoeTilingData t = make_fused_moe_tiling(p);
        int64_t end = 0;
        for (const auto& [offset, bytes] : regions(t)) {
            EXPECT_EQ(offset % shared::kWorkspaceAlign, 0) << offset;
            EXPECT_GE(offset, end);
            end = offset + bytes;
        }
        EXPECT_GE(t.ws_bytes, end);
        EXPECT_LT(t.ws_bytes - end, shared::kWorkspaceAlign);
        EXPECT_EQ(t.ws_bytes % shared::kWorkspaceAlign, 0);
    }
}

TEST(FusedMoeTiling, WorkspaceSizeOfAKnownShape) {
    // BS=2, K=2, E=3, H=10, I=6, bf16: offsets 16 B, row maps 16 B each, x_perm 80 B, a 48 B,
    // y 80 B, each region rounded up to 512 B.
    const FusedMoeTilingData t = make_fused_moe_tiling(decode_params(2, 10, 6, 2, 3));
    EXPECT_EQ(t.ws_offsets, 0);
    EXPECT_EQ(t.ws_row_of, 512);
    EXPECT_EQ(t.ws_row_token, 1024);
    EXPECT_EQ(t.ws_x_perm, 1536);
    EXPECT_EQ(t.ws_act, 2048);
    EXPECT_EQ(t.ws_y, 2560);
    EXPECT_EQ(t.ws_bytes, 3072);
}

TEST(FusedMoeTiling, EveryKernelFitsTheUnifiedBuffer) {
    for (const DType dtype : {DType::kBFloat16, DType::kFloat16}) {
        for (const auto& p :
             {decode_params(256, 7168, 3072, 12, 1024), decode_params(1, 1, 1, 1, 1),
              decode_params(64, 4096, 1536, 8, 256)}) {
            FusedMoeParams q = p;
            q.act_dtype = dtype;
            const FusedMoeTilingData t = make_fused_moe_tiling(q);
            const int64_t pairs = t.num_tokens * t.top_k;
            EXPECT_LE(shared::gemm_ub_bytes(t.num_experts, 2, t.tile_rows, t.tile_cols,
                                            t.gemm1_reduce_chunk, 2),
                      shared::kUbUsableBytes);
            EXPECT_LE(shared::gemm_ub_bytes(t.num_experts, 1, t.tile_rows, t.tile_cols,
                                            t.gemm2_reduce_chunk, 2),
                      shared::kUbUsableBytes);
            EXPECT_LE(shared::route_ub_bytes(pairs, t.num_tokens, t.num_experts),
                      shared::kUbUsableBytes);
            EXPECT_LE(shared::permute_ub_bytes(pairs, t.num_experts, t.row_chunk, 2),
                      shared::kUbUsableBytes);
            EXPECT_LE(shared::combine_ub_bytes(t.top_k, t.row_chunk, 2), shared::kUbUsableBytes);
            EXPECT_EQ(t.gemm1_reduce_chunk % shared::kMinReduceChunk, 0);
        }
    }
}

TEST(FusedMoeTiling, ReduceChunkShrinksWithTheBudgetAndNeverExceedsTheReduction) {
    const FusedMoeParams p = decode_params(16, 4096, 1024, 8, 64);
    const int64_t roomy = make_fused_moe_tiling(p).gemm1_reduce_chunk;
    DeviceSpec small;
    small.ub_bytes = 80 * 1024;
    const int64_t tight = make_fused_moe_tiling(p, small).gemm1_reduce_chunk;
    EXPECT_LT(tight, roomy);
    EXPECT_LE(shared::gemm_ub_bytes(64, 2, shared::kTileRows, shared::kTileCols, tight, 2),
              small.ub_bytes);
    // H = 20: one chunk of 32 rows covers the reduction (no 256-row buffers for 20 rows).
    EXPECT_EQ(make_fused_moe_tiling(decode_params(4, 20, 8, 2, 2)).gemm1_reduce_chunk, 32);
    DeviceSpec tiny;
    tiny.ub_bytes = 4096;
    EXPECT_THROW((void)make_fused_moe_tiling(p, tiny), std::invalid_argument);
}

TEST(FusedMoeTiling, TailTilesAreCountedAndCovered) {
    // H = 100 columns in tiles of 64: two column tiles, the second 36 wide.
    EXPECT_EQ(shared::expert_tiles(17, 100, 16, 64), 2 * 2);
    EXPECT_EQ(shared::expert_tiles(16, 128, 16, 64), 1 * 2);
    EXPECT_EQ(shared::expert_tiles(0, 128, 16, 64), 0);
    // The block split covers [0, total) exactly once, in order, for any block count.
    for (int64_t total : {0, 1, 7, 3072}) {
        for (int64_t blocks : {1, 2, 5, 48}) {
            int64_t covered = 0;
            for (int64_t b = 0; b < blocks; ++b) {
                const int64_t begin = shared::block_begin(total, blocks, b);
                const int64_t end = shared::block_begin(total, blocks, b + 1);
                EXPECT_EQ(begin, covered);
                EXPECT_LE(end - begin, total / blocks + 1);
                covered = end;
            }
            EXPECT_EQ(covered, total);
        }
    }
}

TEST(FusedMoeTiling, GemmTileBoundHoldsForEverySplitOfTheRows) {
    // Exhaustive over splits of R rows among E experts (compositions with zeros), tile 4 rows.
    const int64_t tile_rows = 4;
    for (int64_t rows = 0; rows <= 9; ++rows) {
        for (int64_t experts = 1; experts <= 4; ++experts) {
            int64_t worst = 0;
            std::vector<int64_t> split(static_cast<size_t>(experts), 0);
            // Enumerate all vectors with sum == rows by counting in base rows+1.
            int64_t combos = 1;
            for (int64_t e = 0; e < experts; ++e) combos *= rows + 1;
            for (int64_t code = 0; code < combos; ++code) {
                int64_t rest = code;
                int64_t sum = 0;
                int64_t tiles = 0;
                for (int64_t e = 0; e < experts; ++e) {
                    const int64_t c = rest % (rows + 1);
                    rest /= rows + 1;
                    sum += c;
                    tiles += shared::ceil_div(c, tile_rows);
                }
                if (sum == rows && tiles > worst) worst = tiles;
            }
            EXPECT_LE(worst, eplb_native::tiling::max_gemm_tiles(rows, experts, 1, tile_rows, 1))
                << rows << " rows, " << experts << " experts";
        }
    }
}

TEST(FusedMoeTiling, BlockDimsFollowTheWorkAndTheCores) {
    DeviceSpec device;
    device.num_vector_cores = 40;  // A2 Ascend910B1-like
    const FusedMoeTilingData small = make_fused_moe_tiling(decode_params(1, 64, 64, 1, 4), device);
    EXPECT_EQ(small.route_blocks, 1);
    EXPECT_EQ(small.permute_blocks, 1);
    EXPECT_EQ(small.combine_blocks, 1);
    EXPECT_EQ(small.gemm1_blocks, 1);  // one row, I = 64: one tile
    EXPECT_EQ(small.gemm2_blocks, 1);
    const FusedMoeTilingData big =
        make_fused_moe_tiling(decode_params(256, 7168, 3072, 8, 128), device);
    EXPECT_EQ(big.permute_blocks, 40);
    EXPECT_EQ(big.gemm1_blocks, 40);
    EXPECT_EQ(big.combine_blocks, 40);
    EXPECT_EQ(big.tiling_key, static_cast<int32_t>(shared::TilingKey::kVectorGemm));
}

struct BadCase {
    const char* field;
    FusedMoeParams params;
};

TEST(FusedMoeTiling, LimitsNameTheField) {
    const FusedMoeParams ok = decode_params(8, 512, 256, 2, 8);
    std::vector<BadCase> cases;
    auto with = [&](const char* field, auto mutate) {
        FusedMoeParams p = ok;
        mutate(p);
        cases.push_back({field, p});
    };
    with("num_tokens", [](FusedMoeParams& p) { p.num_tokens = 0; });
    with("num_tokens", [](FusedMoeParams& p) { p.num_tokens = 257; });
    with("top_k", [](FusedMoeParams& p) { p.top_k = 13; });
    with("num_experts", [](FusedMoeParams& p) { p.num_experts = 1025; });
    with("hidden", [](FusedMoeParams& p) { p.hidden = 7169; });
    with("intermediate", [](FusedMoeParams& p) { p.intermediate = 3073; });
    with("act_dtype", [](FusedMoeParams& p) { p.act_dtype = DType::kFloat32; });
    with("load_steps", [](FusedMoeParams& p) { p.load_steps = 4; });
    with("load_steps", [](FusedMoeParams& p) {
        p.load_mode = LoadMode::kRing;
        p.load_steps = 0;
    });
    with("has_mask", [](FusedMoeParams& p) { p.has_mask = 2; });
    with("w8a8", [](FusedMoeParams& p) { p.w8a8 = 1; });
    EXPECT_NO_THROW((void)make_fused_moe_tiling(ok));
    for (const BadCase& bad : cases) {
        try {
            (void)make_fused_moe_tiling(bad.params);
            ADD_FAILURE() << "no error for " << bad.field;
        } catch (const std::invalid_argument& error) {
            EXPECT_EQ(std::string(error.what()).rfind(std::string(bad.field) + ":", 0), 0)
                << error.what();
        }
    }
    DeviceSpec no_cores;
    no_cores.num_vector_cores = 0;
    EXPECT_THROW((void)make_fused_moe_tiling(ok, no_cores), std::invalid_argument);
}

TEST(PointerTableCache, RebuildsOnlyWhenAWeightPointerChanges) {
    eplb_native::tiling::PointerTableCache<int> cache(4);
    int uploads = 0;
    const auto upload = [&uploads](const std::vector<uint64_t>& words) {
        ++uploads;
        return static_cast<int>(std::accumulate(words.begin(), words.end(), uint64_t{0}));
    };
    const std::vector<uint64_t> layer0 = {0x1000, 0x2000, 0x3000};
    EXPECT_EQ(cache.get(0, layer0, upload), 0x6000);
    EXPECT_EQ(cache.get(0, layer0, upload), 0x6000);
    EXPECT_EQ(uploads, 1);
    // EPLB swapped expert 1 into a new buffer: new table.
    std::vector<uint64_t> swapped = layer0;
    swapped[1] = 0x9000;
    EXPECT_EQ(cache.get(0, swapped, upload), 0xD000);
    EXPECT_EQ(uploads, 2);
    // Same pointers on another device are another table.
    (void)cache.get(1, layer0, upload);
    EXPECT_EQ(uploads, 3);
    EXPECT_EQ(cache.hits(), 1);
    EXPECT_EQ(cache.builds(), 3);
}

TEST(PointerTableCache, EvictsTheLeastRecentlyUsedTable) {
    eplb_native::tiling::PointerTableCache<int> cache(2);
    int uploads = 0;
    const auto upload = [&uploads](const std::vector<uint64_t>&) { return ++uploads; };
    (void)cache.get(0, {1}, upload);  // a
    (void)cache.get(0, {2}, upload);  // b
    (void)cache.get(0, {1}, upload);  // a is now most recent
    (void)cache.get(0, {3}, upload);  // evicts b
    EXPECT_EQ(cache.size(), 2U);
    EXPECT_EQ(uploads, 3);
    (void)cache.get(0, {1}, upload);  // still cached
    EXPECT_EQ(uploads, 3);
    (void)cache.get(0, {2}, upload);  // rebuilt
    EXPECT_EQ(uploads, 4);
    EXPECT_THROW(eplb_native::tiling::PointerTableCache<int>(0), std::invalid_argument);
}

TEST(PointerTableCache, PodWordsRoundTripTheTilingBlock) {
    const FusedMoeTilingData t = make_fused_moe_tiling(decode_params(3, 70, 40, 2, 5));
    const std::vector<uint64_t> words = eplb_native::tiling::pod_words(t);
    ASSERT_EQ(words.size() * 8, sizeof(t));
    EXPECT_EQ(static_cast<int64_t>(words[0]), t.num_tokens);
    EXPECT_EQ(static_cast<int64_t>(words.back()), t.ws_bytes);
}

}  // namespace
