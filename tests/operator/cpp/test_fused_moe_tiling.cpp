// Host tiling of the fused decode MoE kernels, the shared POD layout and the pointer-table cache.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "eplb_native/operator/shared/fused_moe_params.h"
#include "eplb_native/operator/shared/fused_moe_tiling_data.h"
#include "eplb_native/operator/tiling/fused_moe_tiling.h"
#include "eplb_native/operator/tiling/pointer_table_cache.h"

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
static_assert(sizeof(FusedMoeTilingData) == 19 * 8 + 12 * 4);
static_assert(sizeof(FusedMoeTilingData) % 8 == 0);
static_assert(offsetof(FusedMoeTilingData, act_dtype) == 48);
static_assert(offsetof(FusedMoeTilingData, route_blocks) == 72);
static_assert(offsetof(FusedMoeTilingData, row_chunk) == 96);
static_assert(offsetof(FusedMoeTilingData, ws_offsets) == 120);
static_assert(offsetof(FusedMoeTilingData, ws_bytes) == 192);
static_assert(shared::align_up(1, 512) == 512 && shared::align_up(512, 512) == 512);
static_assert(shared::ub_row_elems(10, 2) == 16 && shared::ub_row_elems(64, 2) == 64);
static_assert(shared::block_begin(10, 3, 0) == 0 && shared::block_begin(10, 3, 3) == 10);
static_assert(shared::gemm_in_bytes(static_cast<int32_t>(DType::kBFloat16), 1) == 1);
static_assert(shared::gemm_in_bytes(static_cast<int32_t>(DType::kFloat16), 0) == 2);

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
    p.w8a8 = 0;
    p.w1_scale_dtype = DType::kFloat32;
    p.w2_scale_dtype = DType::kFloat32;
    return p;
}

FusedMoeParams w8a8(FusedMoeParams p, DType w1_scale = DType::kFloat32,
                    DType w2_scale = DType::kFloat32) {
    p.w8a8 = 1;
    p.w1_scale_dtype = w1_scale;
    p.w2_scale_dtype = w2_scale;
    return p;
}

std::vector<std::pair<int64_t, int64_t>> regions(const FusedMoeTilingData& t) {
    const int64_t pairs = t.num_tokens * t.top_k;
    const int64_t in = shared::gemm_in_bytes(t.act_dtype, t.w8a8);
    const int64_t scales = t.w8a8 != 0 ? pairs * 4 : 0;
    return {{t.ws_offsets, (t.num_experts + 1) * 4},
            {t.ws_row_of, pairs * 4},
            {t.ws_row_token, pairs * 4},
            {t.ws_x_rows, pairs * t.hidden * in},
            {t.ws_x_scale, scales},
            {t.ws_h1, pairs * t.h1_stride * 4},
            {t.ws_act, pairs * t.intermediate * in},
            {t.ws_act_scale, scales},
            {t.ws_h2, pairs * t.h2_stride * 4}};
}

TEST(FusedMoeTiling, WorkspaceRegionsAreAlignedDisjointAndInOrder) {
    for (const auto& p : {decode_params(1, 7, 3, 1, 1), decode_params(256, 7168, 3072, 12, 1024),
                          decode_params(37, 2048, 768, 8, 128),
                          w8a8(decode_params(37, 2048, 768, 8, 128))}) {
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
        // GEMM output rows hold whole 16-column blocks: a Fixpipe never reaches the next row.
        EXPECT_EQ(t.h1_stride % 16, 0);
        EXPECT_GE(t.h1_stride, 2 * t.intermediate);
        EXPECT_EQ(t.h2_stride % 16, 0);
        EXPECT_GE(t.h2_stride, t.hidden);
    }
}

// The workspace offsets in layout order, then the total: ws_offsets .. ws_h2, ws_bytes.
std::vector<int64_t> workspace_layout(const FusedMoeTilingData& t) {
    return {t.ws_offsets, t.ws_row_of, t.ws_row_token, t.ws_x_rows, t.ws_x_scale,
            t.ws_h1,      t.ws_act,    t.ws_act_scale, t.ws_h2,     t.ws_bytes};
}

TEST(FusedMoeTiling, WorkspaceSizeOfAKnownShape) {
    // BS=2, K=2, E=3, H=10, I=6, bf16: offsets 16 B, row maps 16 B each, x rows 80 B, no scales,
    // h1 4 x 16 fp32 = 256 B, act 48 B, h2 4 x 16 fp32 = 256 B, each rounded up to 512 B.
    const FusedMoeParams p = decode_params(2, 10, 6, 2, 3);
    EXPECT_EQ(workspace_layout(make_fused_moe_tiling(p)),
              (std::vector<int64_t>{0, 512, 1024, 1536, 2048, 2048, 2560, 3072, 3072, 3584}));
    // W8A8: int8 rows (40 B, 24 B) and fp32 scales of the 4 rows (16 B each).
    EXPECT_EQ(workspace_layout(make_fused_moe_tiling(w8a8(p))),
              (std::vector<int64_t>{0, 512, 1024, 1536, 2048, 2560, 3072, 3584, 4096, 4608}));
}

TEST(FusedMoeTiling, EveryVectorKernelFitsTheUnifiedBufferAtTheLimits) {
    for (const DType dtype : {DType::kBFloat16, DType::kFloat16}) {
        for (const int32_t quant : {0, 1}) {
            for (const auto& p :
                 {decode_params(256, 7168, 3072, 12, 1024),
                  decode_params(3072, 7168, 3072, 1, 1024), decode_params(1, 1, 1, 1, 1),
                  decode_params(64, 4096, 1536, 8, 256)}) {
                FusedMoeParams q = p;
                q.act_dtype = dtype;
                q.w8a8 = quant;
                const FusedMoeTilingData t = make_fused_moe_tiling(q);
                const int64_t pairs = t.num_tokens * t.top_k;
                EXPECT_LE(shared::route_ub_bytes(pairs, t.num_tokens, t.num_experts),
                          shared::kUbUsableBytes);
                EXPECT_LE(shared::permute_ub_bytes(pairs, t.num_experts, t.hidden, t.row_chunk, 2,
                                                   quant),
                          shared::kUbUsableBytes);
                EXPECT_LE(shared::swiglu_ub_bytes(pairs, t.num_experts, t.intermediate, 2, quant),
                          shared::kUbUsableBytes);
                EXPECT_LE(shared::combine_ub_bytes(pairs, t.top_k, t.row_chunk, 2, quant),
                          shared::kUbUsableBytes);
            }
        }
    }
    DeviceSpec tiny;
    tiny.ub_bytes = 4096;
    try {
        (void)make_fused_moe_tiling(decode_params(16, 4096, 1024, 8, 64), tiny);
        ADD_FAILURE() << "no error for a 4 KiB unified buffer";
    } catch (const std::invalid_argument& error) {
        EXPECT_NE(std::string(error.what()).find("device.ub_bytes: moe_"), std::string::npos)
            << error.what();
    }
}

TEST(FusedMoeTiling, TailTilesAreCountedAndCovered) {
    // 300 rows and 200 columns in 128 x 128 cube tiles: 3 row tiles x 2 column tiles.
    EXPECT_EQ(shared::expert_tiles(300, 200), 3 * 2);
    EXPECT_EQ(shared::expert_tiles(128, 128), 1);
    EXPECT_EQ(shared::expert_tiles(0, 128), 0);
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
    // Every split of R rows among up to three experts (the third takes the rest).
    for (int64_t rows : {0, 1, 127, 128, 129, 255, 256, 257, 300, 385}) {
        for (int64_t experts = 1; experts <= 3; ++experts) {
            int64_t worst = 0;
            for (int64_t a = 0; a <= rows; ++a) {
                for (int64_t b = 0; a + b <= rows; ++b) {
                    const int64_t c = rows - a - b;
                    if ((experts == 1 && a != rows) || (experts == 2 && c != 0)) {
                        continue;
                    }
                    const int64_t tiles = shared::expert_tiles(a, 1) + shared::expert_tiles(b, 1) +
                                          shared::expert_tiles(c, 1);
                    worst = std::max(worst, tiles);
                }
            }
            EXPECT_LE(worst, eplb_native::tiling::max_gemm_tiles(rows, experts, 1))
                << rows << " rows, " << experts << " experts";
        }
    }
}

TEST(FusedMoeTiling, BlockDimsFollowTheWorkAndTheCores) {
    DeviceSpec device;
    device.num_vector_cores = 40;  // A2 Ascend910B1-like
    device.num_cube_cores = 20;
    const FusedMoeTilingData small = make_fused_moe_tiling(decode_params(1, 64, 64, 1, 4), device);
    EXPECT_EQ(small.route_blocks, 1);
    EXPECT_EQ(small.permute_blocks, 1);
    EXPECT_EQ(small.swiglu_blocks, 1);
    EXPECT_EQ(small.combine_blocks, 1);
    EXPECT_EQ(small.gemm1_blocks, 1);  // one row, 2I = 128: one cube tile
    EXPECT_EQ(small.gemm2_blocks, 1);
    const FusedMoeTilingData big =
        make_fused_moe_tiling(decode_params(256, 7168, 3072, 8, 128), device);
    EXPECT_EQ(big.permute_blocks, 40);
    EXPECT_EQ(big.swiglu_blocks, 40);
    EXPECT_EQ(big.gemm1_blocks, 20);
    EXPECT_EQ(big.gemm2_blocks, 20);
    EXPECT_EQ(big.combine_blocks, 40);
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
    with("num_tokens", [](FusedMoeParams& p) { p.num_tokens = 3073; });
    with("num_tokens", [](FusedMoeParams& p) {
        p.num_tokens = 257;
        p.top_k = 12;  // 3084 pairs
    });
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
    with("w8a8", [](FusedMoeParams& p) { p.w8a8 = 2; });
    // Published scale dtypes: fp32 or the activation dtype (here bf16), per list.
    with("w1_scale", [](FusedMoeParams& p) { p = w8a8(p, DType::kFloat16); });
    with("w2_scale", [](FusedMoeParams& p) { p = w8a8(p, DType::kBFloat16, DType::kFloat16); });
    EXPECT_NO_THROW((void)make_fused_moe_tiling(ok));
    FusedMoeParams received = ok;  // the pairs a rank received after a dispatch, one row each
    received.num_tokens = 3072;
    received.top_k = 1;
    EXPECT_NO_THROW((void)make_fused_moe_tiling(received));
    for (const DType s1 : {DType::kFloat32, DType::kBFloat16}) {
        for (const DType s2 : {DType::kFloat32, DType::kBFloat16}) {
            EXPECT_NO_THROW((void)make_fused_moe_tiling(w8a8(ok, s1, s2)));
        }
    }
    FusedMoeParams fp16 = w8a8(ok, DType::kFloat16, DType::kFloat32);
    fp16.act_dtype = DType::kFloat16;
    EXPECT_NO_THROW((void)make_fused_moe_tiling(fp16));
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
    no_cores.num_vector_cores = 1;
    no_cores.num_cube_cores = 0;
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
