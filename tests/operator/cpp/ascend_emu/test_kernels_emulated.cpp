// The unchanged Ascend C kernel sources (ascend_kernels/kernels/*.cpp), compiled by g++ against
// the host emulation of the AscendC API in this folder and launched in the binding's order with
// the binding's tiling, workspace and pointer tables, must reproduce the C++ reference bit for
// bit: out, expert_token_nums, moe_load (both modes), load_counter and the row map, for
// bf16/fp16 weights (cube GEMMs accumulating in fp32) and W8A8 (int8 cube GEMMs accumulating in
// int32, every published scale-dtype pairing). The emulation's Exp is the reference's exp and its
// Mmad accumulates in ascending k, so the device differences the contract allows (the vector Exp,
// the cube's order inside one Mmad) are not exercised; everything else (tile walk, tails, chunked
// reductions, fractal layouts, operation order, rounding points, workspace carving, buffer sizes,
// copy strides, pipe hand-overs) is. Each vector kernel's UB use must equal the host budget.

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <ostream>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "eplb_native/operator/reference/fused_moe_decode_ref.h"
#include "eplb_native/operator/shared/float16.h"
#include "eplb_native/operator/shared/fused_moe_params.h"
#include "eplb_native/operator/shared/fused_moe_tiling_data.h"
#include "eplb_native/operator/tiling/fused_moe_tiling.h"
#include "eplb_native/thread_pool.h"
#include "kernel_operator.h"

extern "C" {
void moe_route_count(GM_ADDR expert_ids, GM_ADDR x_active_mask, GM_ADDR expert_token_nums,
                     GM_ADDR moe_load, GM_ADDR load_counter, GM_ADDR workspace, GM_ADDR tiling);
void moe_permute(GM_ADDR x, GM_ADDR workspace, GM_ADDR tiling);
void moe_gemm1(GM_ADDR w1_table, GM_ADDR workspace, GM_ADDR tiling);
void moe_swiglu(GM_ADDR w1_scale_table, GM_ADDR workspace, GM_ADDR tiling);
void moe_gemm2(GM_ADDR w2_table, GM_ADDR workspace, GM_ADDR tiling);
void moe_combine(GM_ADDR expert_ids, GM_ADDR expert_scales, GM_ADDR w2_scale_table, GM_ADDR out,
                 GM_ADDR workspace, GM_ADDR tiling);
}

namespace {

using AscendC::Memory;
using eplb_native::shared::DType;
using eplb_native::shared::FusedMoeParams;
using eplb_native::shared::FusedMoeTilingData;
using eplb_native::shared::LoadMode;
namespace shared = eplb_native::shared;

int64_t& peak(Memory m) { return AscendC::emu_state().peak[static_cast<int>(m)]; }

// Runs `blocks` blocks of a kernel one after another; returns the largest UB use of one block.
template <typename Kernel>
void launch(int32_t blocks, Kernel&& kernel) {
    auto& state = AscendC::emu_state();
    state.block_num = blocks;
    for (auto& p : state.peak) p = 0;
    for (int32_t b = 0; b < blocks; ++b) {
        state.block_idx = b;
        kernel();
        AscendC::emu_finish_block();
    }
    state.block_idx = 0;
    state.block_num = 1;
}

GM_ADDR gm(const void* p) { return static_cast<GM_ADDR>(const_cast<void*>(p)); }

struct Case {
    std::string name;
    int64_t tokens, hidden, inter, experts, top_k;
    DType dtype;
    LoadMode load_mode = LoadMode::kTotal;
    bool mask = false;
    double invalid_fraction = 0.1;
    int64_t empty_expert = -1;   // gets no rows; its weight (and scale) pointers are null
    int64_t null_weight_expert = -1;  // gets rows but null weights: zero accumulators
    bool w8a8 = false;
    DType w1_scale_dtype = DType::kFloat32;
    DType w2_scale_dtype = DType::kFloat32;
    int32_t vector_cores = 48;
    int32_t cube_cores = 24;
    int64_t ring_steps = 3;
    int32_t calls = 1;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

uint16_t to_bits(DType dtype, float value) {
    return dtype == DType::kBFloat16 ? shared::f32_to_bf16_rne(value)
                                     : shared::f32_to_f16_rne(value);
}

// A W8A8 scale list entry: n values in `dtype` (fp32 as raw floats, 16-bit as raw bits).
std::vector<uint8_t> make_scales(std::mt19937& rng, int64_t n, DType dtype) {
    std::uniform_real_distribution<float> uniform(0.001F, 0.02F);
    const int64_t bytes = dtype == DType::kFloat32 ? 4 : 2;
    std::vector<uint8_t> out(static_cast<size_t>(n * bytes));
    for (int64_t i = 0; i < n; ++i) {
        const float v = uniform(rng);
        if (dtype == DType::kFloat32) {
            std::memcpy(out.data() + i * 4, &v, 4);
        } else {
            const uint16_t b = to_bits(dtype, v);
            std::memcpy(out.data() + i * 2, &b, 2);
        }
    }
    return out;
}

class EmulatedKernels : public ::testing::TestWithParam<Case> {};

TEST_P(EmulatedKernels, MatchTheReferenceBitForBit) {
    const Case& c = GetParam();
    std::mt19937 rng(12345);
    std::normal_distribution<float> normal(0.0F, 1.0F);
    std::uniform_real_distribution<float> uniform(0.0F, 1.0F);
    std::uniform_int_distribution<int32_t> pick(0, static_cast<int32_t>(c.experts) - 1);
    std::uniform_int_distribution<int32_t> int8_value(-127, 127);

    const int64_t pairs = c.tokens * c.top_k;
    std::vector<uint16_t> x(static_cast<size_t>(c.tokens * c.hidden));
    for (auto& v : x) v = to_bits(c.dtype, normal(rng) * 0.5F);
    if (c.w8a8 && c.tokens > 3) {
        std::fill(x.begin() + 3 * c.hidden, x.begin() + 4 * c.hidden, uint16_t{0});  // scale 0
    }
    std::vector<int32_t> ids(static_cast<size_t>(pairs));
    for (auto& id : ids) {
        id = pick(rng);
        if (uniform(rng) < c.invalid_fraction) {
            id = uniform(rng) < 0.5F ? -1 : static_cast<int32_t>(c.experts);
        }
        if (id == c.empty_expert) id = -1;
    }
    std::vector<float> scales(static_cast<size_t>(pairs));
    for (auto& s : scales) s = uniform(rng);
    std::vector<uint8_t> mask(static_cast<size_t>(c.tokens));
    for (size_t t = 0; t < mask.size(); ++t) mask[t] = (t % 4 == 2) ? 0 : 1;

    // Weights: raw bits of the act dtype, or int8 codes under W8A8.
    const size_t wbytes = c.w8a8 ? 1 : 2;
    std::vector<std::vector<uint8_t>> w1(static_cast<size_t>(c.experts));
    std::vector<std::vector<uint8_t>> w2(static_cast<size_t>(c.experts));
    std::vector<std::vector<uint8_t>> w1_scale(static_cast<size_t>(c.experts));
    std::vector<std::vector<uint8_t>> w2_scale(static_cast<size_t>(c.experts));
    const auto fill = [&](std::vector<uint8_t>& w, int64_t n, float stddev) {
        w.resize(static_cast<size_t>(n) * wbytes);
        for (int64_t i = 0; i < n; ++i) {
            if (c.w8a8) {
                const auto code = static_cast<int8_t>(int8_value(rng));
                w[static_cast<size_t>(i)] = static_cast<uint8_t>(code);
            } else {
                const uint16_t b = to_bits(c.dtype, normal(rng) * stddev);
                std::memcpy(w.data() + i * 2, &b, 2);
            }
        }
    };
    for (int64_t e = 0; e < c.experts; ++e) {
        if (e == c.empty_expert) continue;
        fill(w1[static_cast<size_t>(e)], c.hidden * 2 * c.inter,
             1.0F / std::sqrt(static_cast<float>(c.hidden)));
        fill(w2[static_cast<size_t>(e)], c.inter * c.hidden,
             1.0F / std::sqrt(static_cast<float>(c.inter)));
        if (c.w8a8) {
            w1_scale[static_cast<size_t>(e)] = make_scales(rng, 2 * c.inter, c.w1_scale_dtype);
            w2_scale[static_cast<size_t>(e)] = make_scales(rng, c.hidden, c.w2_scale_dtype);
        }
    }
    // The reference sees zero weights where the kernels see a null address.
    if (c.null_weight_expert >= 0) {
        auto& a = w1[static_cast<size_t>(c.null_weight_expert)];
        auto& b = w2[static_cast<size_t>(c.null_weight_expert)];
        std::fill(a.begin(), a.end(), uint8_t{0});
        std::fill(b.begin(), b.end(), uint8_t{0});
    }
    const auto pointer = [](const std::vector<uint8_t>& v) -> const void* {
        return v.empty() ? nullptr : v.data();
    };
    std::vector<const void*> w1_ptrs, w2_ptrs, s1_ptrs, s2_ptrs;
    std::vector<uint64_t> w1_table, w2_table, s1_table, s2_table;
    for (int64_t e = 0; e < c.experts; ++e) {
        const auto i = static_cast<size_t>(e);
        w1_ptrs.push_back(pointer(w1[i]));
        w2_ptrs.push_back(pointer(w2[i]));
        s1_ptrs.push_back(pointer(w1_scale[i]));
        s2_ptrs.push_back(pointer(w2_scale[i]));
        const bool null = e == c.null_weight_expert;
        w1_table.push_back(null ? 0 : reinterpret_cast<uint64_t>(w1_ptrs.back()));
        w2_table.push_back(null ? 0 : reinterpret_cast<uint64_t>(w2_ptrs.back()));
        s1_table.push_back(reinterpret_cast<uint64_t>(s1_ptrs.back()));
        s2_table.push_back(reinterpret_cast<uint64_t>(s2_ptrs.back()));
    }

    FusedMoeParams p{};
    p.num_tokens = c.tokens;
    p.hidden = c.hidden;
    p.intermediate = c.inter;
    p.top_k = c.top_k;
    p.num_experts = c.experts;
    p.act_dtype = c.dtype;
    p.load_mode = c.load_mode;
    p.load_steps = c.load_mode == LoadMode::kRing ? c.ring_steps : 0;
    p.has_mask = c.mask ? 1 : 0;
    p.w8a8 = c.w8a8 ? 1 : 0;
    p.w1_scale_dtype = c.w1_scale_dtype;
    p.w2_scale_dtype = c.w2_scale_dtype;

    eplb_native::tiling::DeviceSpec device;
    device.num_vector_cores = c.vector_cores;
    device.num_cube_cores = c.cube_cores;
    const FusedMoeTilingData t = eplb_native::tiling::make_fused_moe_tiling(p, device);

    // Reference.
    std::vector<uint16_t> want_out(x.size());
    std::vector<int64_t> want_counts(static_cast<size_t>(c.experts));
    std::vector<int64_t> want_total(static_cast<size_t>(c.experts), 7);
    std::vector<int32_t> want_ring(static_cast<size_t>(c.ring_steps * c.experts), 1);
    int32_t want_counter = -2;
    eplb_native::reference::FusedMoeInputs in;
    in.x = x.data();
    in.expert_ids = ids.data();
    in.expert_scales = scales.data();
    in.w1 = w1_ptrs;
    in.w2 = w2_ptrs;
    if (c.w8a8) {
        in.w1_scale = s1_ptrs;
        in.w2_scale = s2_ptrs;
    }
    in.x_active_mask = c.mask ? mask.data() : nullptr;
    eplb_native::reference::FusedMoeOutputs ref_out;
    ref_out.out = want_out.data();
    ref_out.expert_token_nums = want_counts.data();
    ref_out.moe_load_total = want_total.data();
    ref_out.moe_load_ring = want_ring.data();
    ref_out.load_counter = &want_counter;
    eplb_native::ThreadPool pool(1);
    for (int32_t call = 0; call < c.calls; ++call) {
        eplb_native::reference::fused_moe_decode(p, in, ref_out, pool);
    }
    const auto rows = eplb_native::reference::route_tokens(p, ids.data(), in.x_active_mask);
    if (c.null_weight_expert >= 0) {
        ASSERT_GT(rows.counts[static_cast<size_t>(c.null_weight_expert)], 0);
    }

    // Kernels, launched as the binding launches them.
    std::vector<uint16_t> got_out(x.size(), 0xFFFF);
    std::vector<int64_t> got_counts(static_cast<size_t>(c.experts), -1);
    std::vector<int64_t> got_total(static_cast<size_t>(c.experts), 7);
    std::vector<int32_t> got_ring(want_ring.size(), 1);
    int32_t got_counter = -2;
    std::vector<uint64_t> tiling_words(sizeof(FusedMoeTilingData) / 8);
    std::memcpy(tiling_words.data(), &t, sizeof(t));
    std::vector<uint8_t> workspace(static_cast<size_t>(t.ws_bytes), 0xCD);
    GM_ADDR ws = workspace.data();
    GM_ADDR tiling = gm(tiling_words.data());
    void* load = c.load_mode == LoadMode::kRing ? static_cast<void*>(got_ring.data())
                                                : static_cast<void*>(got_total.data());
    GM_ADDR s1 = c.w8a8 ? gm(s1_table.data()) : nullptr;
    GM_ADDR s2 = c.w8a8 ? gm(s2_table.data()) : nullptr;
    const int64_t elem = 2;
    const int32_t w8a8 = p.w8a8;
    for (int32_t call = 0; call < c.calls; ++call) {
        launch(t.route_blocks, [&] {
            moe_route_count(gm(ids.data()), c.mask ? gm(mask.data()) : nullptr,
                            gm(got_counts.data()),
                            c.load_mode == LoadMode::kNone ? nullptr : gm(load),
                            gm(&got_counter), ws, tiling);
        });
        EXPECT_EQ(peak(Memory::kUb), shared::route_ub_bytes(pairs, c.tokens, c.experts));
        launch(t.permute_blocks, [&] { moe_permute(gm(x.data()), ws, tiling); });
        EXPECT_EQ(peak(Memory::kUb), shared::permute_ub_bytes(pairs, c.experts, c.hidden,
                                                              t.row_chunk, elem, w8a8));
        launch(t.gemm1_blocks, [&] { moe_gemm1(gm(w1_table.data()), ws, tiling); });
        EXPECT_EQ(peak(Memory::kUb), 0);
        EXPECT_LE(peak(Memory::kL1), shared::kL1UsableBytes);
        launch(t.swiglu_blocks, [&] { moe_swiglu(s1, ws, tiling); });
        EXPECT_EQ(peak(Memory::kUb),
                  shared::swiglu_ub_bytes(pairs, c.experts, c.inter, elem, w8a8));
        launch(t.gemm2_blocks, [&] { moe_gemm2(gm(w2_table.data()), ws, tiling); });
        launch(t.combine_blocks, [&] {
            moe_combine(gm(ids.data()), gm(scales.data()), s2, gm(got_out.data()), ws, tiling);
        });
        EXPECT_EQ(peak(Memory::kUb),
                  shared::combine_ub_bytes(pairs, c.top_k, t.row_chunk, elem, w8a8));
    }

    EXPECT_EQ(got_counts, want_counts);
    if (c.load_mode == LoadMode::kTotal) {
        EXPECT_EQ(got_total, want_total);
    }
    if (c.load_mode == LoadMode::kRing) {
        EXPECT_EQ(got_ring, want_ring);
        EXPECT_EQ(got_counter, want_counter);
    }
    // Row map in the workspace.
    const auto* offsets = reinterpret_cast<const int32_t*>(workspace.data() + t.ws_offsets);
    const auto* row_of = reinterpret_cast<const int32_t*>(workspace.data() + t.ws_row_of);
    const auto* row_token = reinterpret_cast<const int32_t*>(workspace.data() + t.ws_row_token);
    for (int64_t e = 0; e <= c.experts; ++e) {
        ASSERT_EQ(offsets[e], rows.offsets[static_cast<size_t>(e)]) << "offsets " << e;
    }
    for (int64_t i = 0; i < pairs; ++i) {
        ASSERT_EQ(row_of[i], rows.row_of[static_cast<size_t>(i)]) << "row_of " << i;
    }
    for (int64_t r = 0; r < rows.num_rows(); ++r) {
        ASSERT_EQ(row_token[r], rows.row_token[static_cast<size_t>(r)]) << "row_token " << r;
    }
    int64_t nonzero = 0;
    for (size_t i = 0; i < got_out.size(); ++i) {
        ASSERT_EQ(got_out[i], want_out[i]) << "out[" << i / static_cast<size_t>(c.hidden) << ", "
                                           << i % static_cast<size_t>(c.hidden) << "]";
        nonzero += (want_out[i] & 0x7FFF) != 0 ? 1 : 0;
    }
    if (c.invalid_fraction < 1.0) {
        EXPECT_GT(nonzero, 0) << "the case must produce some output";
    }
}

std::vector<Case> cases() {
    std::vector<Case> all;
    for (const DType dtype : {DType::kBFloat16, DType::kFloat16}) {
        const std::string tag = dtype == DType::kBFloat16 ? "bf16" : "fp16";
        all.push_back({"decode_" + tag, 16, 256, 128, 8, 4, dtype});
        // H = 200, 2I = 200: reduction and column tails inside one L1 chunk and one cube tile.
        all.push_back({"tails_" + tag, 5, 200, 100, 3, 2, dtype});
        // H = 700, I = 300: three L1 chunks of 256 reduction rows for GEMM1 (the last 188),
        // two for GEMM2 (the last 44, not a multiple of 16); 2I = 600: five column tiles.
        all.push_back({"long_reduction_" + tag, 6, 700, 300, 3, 3, dtype});
        // ~170 rows on each of 2 experts: two cube row tiles per expert, the second partial.
        Case many{"rows_beyond_one_cube_tile_" + tag, 85, 96, 40, 2, 4, dtype};
        many.invalid_fraction = 0.0;
        all.push_back(many);
    }
    // W8A8 with every published scale pairing: fp32 or the activation dtype, per list.
    for (const DType dtype : {DType::kBFloat16, DType::kFloat16}) {
        const std::string tag = dtype == DType::kBFloat16 ? "bf16" : "fp16";
        const std::string half_tag = dtype == DType::kBFloat16 ? "bf16" : "fp16";
        for (const DType s1 : {DType::kFloat32, dtype}) {
            for (const DType s2 : {DType::kFloat32, dtype}) {
                const std::string name = "w8a8_" + tag + "_w1s_" +
                                         (s1 == DType::kFloat32 ? "fp32" : half_tag) + "_w2s_" +
                                         (s2 == DType::kFloat32 ? "fp32" : half_tag);
                Case w{name, 9, 200, 100, 4, 3, dtype};
                w.w8a8 = true;
                w.w1_scale_dtype = s1;
                w.w2_scale_dtype = s2;
                all.push_back(w);
            }
        }
    }
    // W8A8: two 512-row int8 chunks for GEMM1 (H = 1100), an I not a multiple of 32, empty
    // expert, few cores of both kinds.
    Case w8{"w8a8_long_reduction_few_cores_bf16", 13, 1100, 70, 5, 4, DType::kBFloat16};
    w8.w8a8 = true;
    w8.w1_scale_dtype = DType::kBFloat16;
    w8.empty_expert = 2;
    w8.vector_cores = 3;
    w8.cube_cores = 2;
    all.push_back(w8);
    Case w8_many{"w8a8_rows_beyond_one_cube_tile_fp16", 70, 64, 48, 2, 4, DType::kFloat16};
    w8_many.w8a8 = true;
    w8_many.w2_scale_dtype = DType::kFloat16;
    w8_many.invalid_fraction = 0.0;
    all.push_back(w8_many);
    Case masked{"mask_ring_bf16", 9, 96, 40, 4, 3, DType::kBFloat16, LoadMode::kRing, true};
    masked.calls = 4;  // wraps the 3-row ring
    all.push_back(masked);
    Case empty{"empty_expert_no_load", 7, 64, 48, 4, 2, DType::kBFloat16, LoadMode::kNone};
    empty.empty_expert = 1;
    all.push_back(empty);
    Case null_weight{"null_weight_with_rows_gives_zeros", 8, 64, 48, 3, 2, DType::kFloat16};
    null_weight.null_weight_expert = 1;
    null_weight.invalid_fraction = 0.0;
    all.push_back(null_weight);
    Case none{"no_valid_pair", 4, 64, 32, 3, 2, DType::kFloat16};
    none.invalid_fraction = 1.0;
    all.push_back(none);
    Case one{"one_token_one_expert", 1, 130, 70, 1, 1, DType::kBFloat16};
    one.invalid_fraction = 0.0;
    all.push_back(one);
    // H above kRowChunk (4096): permute and combine move rows in two chunks, the second a tail;
    // GEMM1 walks 17 L1 chunks.
    all.push_back({"rows_longer_than_a_chunk", 3, 4100, 16, 2, 2, DType::kFloat16});
    Case few{"three_vector_two_cube_cores", 33, 160, 96, 5, 6, DType::kBFloat16};
    few.vector_cores = 3;
    few.cube_cores = 2;
    few.calls = 2;
    all.push_back(few);
    return all;
}

INSTANTIATE_TEST_SUITE_P(AscendKernels, EmulatedKernels, ::testing::ValuesIn(cases()),
                         [](const ::testing::TestParamInfo<Case>& param) { return param.param.name; });

// ---- the emulation's own checks -------------------------------------------------------------------

TEST(AscendEmulation, RejectsAUnifiedBufferOverflow) {
    AscendC::TPipe pipe;
    AscendC::TBuf<AscendC::TPosition::VECCALC> a;
    AscendC::TBuf<AscendC::TPosition::VECCALC> b;
    pipe.InitBuffer(a, 180 * 1024);
    EXPECT_THROW(pipe.InitBuffer(b, 8 * 1024), std::logic_error);
}

TEST(AscendEmulation, RejectsACopyPastTheGlobalTensor) {
    AscendC::TPipe pipe;
    AscendC::TBuf<AscendC::TPosition::VECCALC> buf;
    pipe.InitBuffer(buf, 1024);
    std::vector<int32_t> data(10);
    AscendC::GlobalTensor<int32_t> g;
    g.SetGlobalBuffer(data.data(), data.size());
    AscendC::DataCopyExtParams params;
    params.blockCount = 2;
    params.blockLen = 24;   // 6 ints
    params.srcStride = 0;   // second block reads ints 6..11: two past the end
    EXPECT_THROW(AscendC::DataCopyPad(buf.Get<int32_t>(), g, params,
                                      AscendC::DataCopyPadExtParams<int32_t>{false, 0, 0, 0}),
                 std::logic_error);
}

TEST(AscendEmulation, ReportsAScalarReadOfADmaWithoutTheMte2ToScalarWait) {
    AscendC::TPipe pipe;
    AscendC::TBuf<AscendC::TPosition::VECCALC> buf;
    pipe.InitBuffer(buf, 64);
    std::vector<int32_t> data(8, 5);
    AscendC::GlobalTensor<int32_t> g;
    g.SetGlobalBuffer(data.data(), data.size());
    AscendC::DataCopyExtParams params;
    params.blockCount = 1;
    params.blockLen = 32;
    const AscendC::LocalTensor<int32_t> local = buf.Get<int32_t>();
    AscendC::DataCopyPad(local, g, params, AscendC::DataCopyPadExtParams<int32_t>{false, 0, 0, 0});
    EXPECT_THROW((void)local.GetValue(0), std::logic_error);
    AscendC::SetFlag<AscendC::HardEvent::MTE2_S>(0);
    AscendC::WaitFlag<AscendC::HardEvent::MTE2_S>(0);
    EXPECT_EQ(local.GetValue(0), 5);
}

TEST(AscendEmulation, ReportsDependentVectorOpsWithoutABarrier) {
    AscendC::TPipe pipe;
    AscendC::TBuf<AscendC::TPosition::VECCALC> buf;
    pipe.InitBuffer(buf, 256);
    const AscendC::LocalTensor<float> a = buf.Get<float>();
    const AscendC::LocalTensor<float> b = a[32];
    AscendC::Duplicate(a, 1.0F, 32);
    EXPECT_THROW(AscendC::Adds(b, a, 1.0F, 32), std::logic_error);
    AscendC::PipeBarrier<PIPE_V>();
    AscendC::Adds(b, a, 1.0F, 32);
    AscendC::PipeBarrier<PIPE_V>();
    EXPECT_THROW((void)b.GetValue(0), std::logic_error);  // V -> S needs V_S
}

TEST(AscendEmulation, RejectsCastsOutsideTheDav2201Table) {
    AscendC::TPipe pipe;
    AscendC::TBuf<AscendC::TPosition::VECCALC> buf;
    pipe.InitBuffer(buf, 1024);
    const AscendC::LocalTensor<float> f = buf.Get<float>();
    const AscendC::LocalTensor<half> h = f[128].ReinterpretCast<half>();
    AscendC::Duplicate(f, 2.5F, 16);
    AscendC::PipeBarrier<PIPE_V>();
    // fp32 -> fp16 needs a rounding mode; fp32 -> int8 directly is not in the table.
    EXPECT_THROW(AscendC::Cast(h, f, AscendC::RoundMode::CAST_NONE, 16), std::logic_error);
    const AscendC::LocalTensor<int8_t> i8 = f[64].ReinterpretCast<int8_t>();
    EXPECT_THROW(AscendC::Cast(i8, f, AscendC::RoundMode::CAST_RINT, 16), std::logic_error);
}

// A cube-core fixture: one 16 x 16 x 16 bf16 GEMM through L1, L0A/L0B, L0C and Fixpipe, with
// switches that drop one hand-over or break one rule.
struct CubeRun {
    bool zero_pad = true;          // zero L1 A before use (rows past m are read)
    bool mte2_mte1 = true;         // L1 written by MTE2, read by MTE1
    bool mte1_m = true;            // L0A/L0B written by MTE1, read by M
    bool m_fix = true;             // L0C written by M, read by FIX
    bool barrier_m = true;         // two small Mmads into one L0C
    bool m_mte1 = true;            // L0A read by M, then rewritten by MTE1
    uint16_t m = 16;
    uint16_t fix_n = 16;
    int64_t l0a_offset = 0;        // elements
    int64_t l0a_bytes = 64 * 1024;
};

void run_cube(const CubeRun& run, std::vector<float>& out) {
    std::vector<bfloat16_t> a(16 * 16, bfloat16_t(1.0F));
    std::vector<bfloat16_t> b(16 * 16, bfloat16_t(2.0F));
    AscendC::GlobalTensor<bfloat16_t> a_gm, b_gm;
    a_gm.SetGlobalBuffer(a.data(), a.size());
    b_gm.SetGlobalBuffer(b.data(), b.size());
    AscendC::GlobalTensor<float> c_gm;
    c_gm.SetGlobalBuffer(out.data(), out.size());
    KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIC_ONLY);
    AscendC::TPipe pipe;
    AscendC::TBuf<AscendC::TPosition::A1> l1a;
    AscendC::TBuf<AscendC::TPosition::B1> l1b;
    AscendC::TBuf<AscendC::TPosition::A2> l0a;
    AscendC::TBuf<AscendC::TPosition::B2> l0b;
    AscendC::TBuf<AscendC::TPosition::CO1> l0c;
    pipe.InitBuffer(l1a, 1024);
    pipe.InitBuffer(l1b, 1024);
    pipe.InitBuffer(l0a, run.l0a_bytes);
    pipe.InitBuffer(l0b, 512);
    pipe.InitBuffer(l0c, 1024);
    const auto a1 = l1a.Get<bfloat16_t>();
    const auto b1 = l1b.Get<bfloat16_t>();
    const auto a0 = l0a.Get<bfloat16_t>()[run.l0a_offset];
    const auto b0 = l0b.Get<bfloat16_t>();
    const auto c0 = l0c.Get<float>();
    if (run.zero_pad) {
        AscendC::InitConstValue(l1a.Get<int16_t>(),
                                AscendC::InitConstValueParams<int16_t>(1, 32, 0, 0));
    }
    AscendC::Nd2NzParams nd;
    nd.ndNum = 1;
    nd.nValue = 4;  // 4 rows of A; Mmad reads 16
    nd.dValue = 16;
    nd.srcDValue = 16;
    nd.dstNzC0Stride = 16;
    nd.dstNzNStride = 1;
    AscendC::DataCopy(a1, a_gm, nd);
    nd.nValue = 16;
    AscendC::DataCopy(b1, b_gm, nd);
    if (run.mte2_mte1) {
        AscendC::SetFlag<AscendC::HardEvent::MTE2_MTE1>(0);
        AscendC::WaitFlag<AscendC::HardEvent::MTE2_MTE1>(0);
    }
    AscendC::LoadData2DParams load;
    load.repeatTimes = 1;
    load.srcStride = 1;
    AscendC::LoadData(a0, a1, load);
    load.ifTranspose = true;
    AscendC::LoadData(b0, b1, load);
    if (run.mte1_m) {
        AscendC::SetFlag<AscendC::HardEvent::MTE1_M>(0);
        AscendC::WaitFlag<AscendC::HardEvent::MTE1_M>(0);
    }
    AscendC::MmadParams mm;
    mm.m = run.m;
    mm.n = 16;
    mm.k = 16;
    AscendC::Mmad(c0, a0, b0, mm);
    if (run.barrier_m) {
        AscendC::PipeBarrier<PIPE_M>();
    }
    mm.cmatrixInitVal = false;
    AscendC::Mmad(c0, a0, b0, mm);  // accumulate: C = 2 A B
    if (run.m_mte1) {
        AscendC::SetFlag<AscendC::HardEvent::M_MTE1>(0);
        AscendC::WaitFlag<AscendC::HardEvent::M_MTE1>(0);
    }
    load.ifTranspose = false;
    AscendC::LoadData(a0, a1, load);  // rewrite L0A after the Mmads read it
    if (run.m_fix) {
        AscendC::SetFlag<AscendC::HardEvent::M_FIX>(0);
        AscendC::WaitFlag<AscendC::HardEvent::M_FIX>(0);
    }
    AscendC::FixpipeParamsV220 fix;
    fix.nSize = run.fix_n;
    fix.mSize = 4;
    fix.srcStride = 16;
    fix.dstStride = 16;
    AscendC::Fixpipe(c_gm, c0, fix);
}

// Runs `body` and requires an emulation error whose message contains `expected`.
template <typename Body>
void expect_emulation_error(Body&& body, const std::string& expected) {
    try {
        body();
        ADD_FAILURE() << "no error; expected: " << expected;
    } catch (const std::logic_error& error) {
        EXPECT_NE(std::string(error.what()).find(expected), std::string::npos) << error.what();
    }
    AscendC::emu_state().events.clear();
}

struct CubeFixture : ::testing::Test {
    void TearDown() override {
        AscendC::emu_state().events.clear();
        AscendC::emu_finish_block();
    }
    std::vector<float> out = std::vector<float>(16 * 16, -1.0F);
};

TEST_F(CubeFixture, AWellSynchronisedTileComputesTheProduct) {
    run_cube({}, out);
    for (int64_t r = 0; r < 4; ++r) {
        for (int64_t n = 0; n < 16; ++n) {
            ASSERT_EQ(out[static_cast<size_t>(r * 16 + n)], 2.0F * 16.0F * 2.0F) << r << "," << n;
        }
    }
    EXPECT_EQ(out[4 * 16], -1.0F);  // rows past mSize untouched
}

TEST_F(CubeFixture, ReportsEachMissingHandOver) {
    const std::pair<bool CubeRun::*, const char*> cases[] = {
        {&CubeRun::mte2_mte1, "LoadData on pipe MTE1 reads bytes written by pipe MTE2"},
        {&CubeRun::mte1_m, "Mmad (L0A) on pipe M reads bytes written by pipe MTE1"},
        {&CubeRun::m_fix, "Fixpipe on pipe FIX reads bytes written by pipe M"},
        {&CubeRun::barrier_m, "Mmad accumulate (L0C) on pipe M reads bytes written by pipe M"},
        {&CubeRun::m_mte1, "LoadData on pipe MTE1 overwrites bytes pipe M read"},
    };
    for (const auto& [flag, message] : cases) {
        CubeRun run;
        run.*flag = false;
        expect_emulation_error([&] { run_cube(run, out); }, message);
    }
}

TEST_F(CubeFixture, ReportsUninitialisedRowsGemvModeAndCubeLimits) {
    CubeRun unpadded;
    unpadded.zero_pad = false;  // Mmad reads L1 rows 4..15 that nothing wrote
    expect_emulation_error([&] { run_cube(unpadded, out); }, "Mmad reads L0A data nothing wrote");
    CubeRun gemv;
    gemv.m = 1;
    expect_emulation_error([&] { run_cube(gemv, out); }, "m = 1 selects GEMV mode");
    CubeRun partial_block;
    partial_block.fix_n = 8;  // Fixpipe V220 writes whole 16-column blocks
    expect_emulation_error([&] { run_cube(partial_block, out); }, "nSize must be a multiple of 16");
    CubeRun misaligned;
    misaligned.l0a_offset = 16;  // 32 bytes into L0A: not a 512-byte fractal boundary
    expect_emulation_error([&] { run_cube(misaligned, out); }, "not 512-byte aligned");
    CubeRun too_big;
    too_big.l0a_bytes = 64 * 1024 + 512;  // more than L0A holds
    expect_emulation_error([&] { run_cube(too_big, out); }, "L0A exhausted");
}

TEST(AscendEmulation, SeparatesVectorAndCubeCores) {
    {
        KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);
        AscendC::TPipe pipe;
        AscendC::TBuf<AscendC::TPosition::A1> l1;
        EXPECT_THROW(pipe.InitBuffer(l1, 1024), std::logic_error);
    }
    {
        KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIC_ONLY);
        AscendC::TPipe pipe;
        AscendC::TBuf<AscendC::TPosition::VECCALC> ub;
        EXPECT_THROW(pipe.InitBuffer(ub, 1024), std::logic_error);
    }
    AscendC::emu_finish_block();
}

TEST(AscendEmulation, ReportsAFlagSetTwiceOrWaitedWithoutASet) {
    EXPECT_THROW(AscendC::WaitFlag<AscendC::HardEvent::MTE2_MTE1>(3), std::logic_error);
    AscendC::SetFlag<AscendC::HardEvent::MTE2_MTE1>(3);
    EXPECT_THROW(AscendC::SetFlag<AscendC::HardEvent::MTE2_MTE1>(3), std::logic_error);
    EXPECT_THROW(AscendC::emu_finish_block(), std::logic_error);  // left set
}

}  // namespace
