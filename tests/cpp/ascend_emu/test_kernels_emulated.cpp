// The unchanged Ascend C kernel sources (ascend_kernels/kernels/*.cpp), compiled by g++ against
// the host emulation of the AscendC API in this folder and launched in the binding's order with
// the binding's tiling, workspace and pointer tables, must reproduce the C++ reference bit for
// bit: out, expert_token_nums, moe_load (both modes), load_counter and the row map. The
// emulation's Exp is the reference's exp, so the only device difference the contract allows
// (the vector Exp) is not exercised here; everything else (tile walk, tails, chunked reduction,
// operation order, rounding points, workspace carving, UB sizes, copy strides) is.

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "eplb_native/reference/fused_moe_decode_ref.h"
#include "eplb_native/shared/float16.h"
#include "eplb_native/shared/fused_moe_params.h"
#include "eplb_native/shared/fused_moe_tiling_data.h"
#include "eplb_native/thread_pool.h"
#include "eplb_native/tiling/fused_moe_tiling.h"
#include "kernel_operator.h"

extern "C" {
void moe_route_count(GM_ADDR expert_ids, GM_ADDR x_active_mask, GM_ADDR expert_token_nums,
                     GM_ADDR moe_load, GM_ADDR load_counter, GM_ADDR workspace, GM_ADDR tiling);
void moe_permute(GM_ADDR x, GM_ADDR workspace, GM_ADDR tiling);
void moe_gemm1_swiglu(GM_ADDR w1_table, GM_ADDR workspace, GM_ADDR tiling);
void moe_gemm2(GM_ADDR w2_table, GM_ADDR workspace, GM_ADDR tiling);
void moe_combine(GM_ADDR expert_scales, GM_ADDR out, GM_ADDR workspace, GM_ADDR tiling);
}

namespace {

using eplb_native::shared::DType;
using eplb_native::shared::FusedMoeParams;
using eplb_native::shared::FusedMoeTilingData;
using eplb_native::shared::LoadMode;

template <typename Kernel>
void launch(int32_t blocks, Kernel&& kernel) {
    auto& state = AscendC::emu_state();
    state.block_num = blocks;
    for (int32_t b = 0; b < blocks; ++b) {
        state.block_idx = b;
        kernel();
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
    int64_t empty_expert = -1;        // gets no rows; its weight pointers are null
    int64_t ub_bytes = 0;             // 0: the device's; smaller forces short reduce chunks
    int32_t cores = 48;
    int64_t ring_steps = 3;
    int32_t calls = 1;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

uint16_t to_bits(DType dtype, float value) {
    return dtype == DType::kBFloat16 ? eplb_native::shared::f32_to_bf16_rne(value)
                                     : eplb_native::shared::f32_to_f16_rne(value);
}

class EmulatedKernels : public ::testing::TestWithParam<Case> {};

TEST_P(EmulatedKernels, MatchTheReferenceBitForBit) {
    const Case& c = GetParam();
    std::mt19937 rng(12345);
    std::normal_distribution<float> normal(0.0F, 1.0F);
    std::uniform_real_distribution<float> uniform(0.0F, 1.0F);
    std::uniform_int_distribution<int32_t> pick(0, static_cast<int32_t>(c.experts) - 1);

    const int64_t pairs = c.tokens * c.top_k;
    std::vector<uint16_t> x(static_cast<size_t>(c.tokens * c.hidden));
    for (auto& v : x) v = to_bits(c.dtype, normal(rng) * 0.5F);
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
    std::vector<std::vector<uint16_t>> w1(static_cast<size_t>(c.experts));
    std::vector<std::vector<uint16_t>> w2(static_cast<size_t>(c.experts));
    const float w1_scale = 1.0F / std::sqrt(static_cast<float>(c.hidden));
    const float w2_scale = 1.0F / std::sqrt(static_cast<float>(c.inter));
    for (int64_t e = 0; e < c.experts; ++e) {
        if (e == c.empty_expert) continue;
        auto& a = w1[static_cast<size_t>(e)];
        a.resize(static_cast<size_t>(c.hidden * 2 * c.inter));
        for (auto& v : a) v = to_bits(c.dtype, normal(rng) * w1_scale);
        auto& b = w2[static_cast<size_t>(e)];
        b.resize(static_cast<size_t>(c.inter * c.hidden));
        for (auto& v : b) v = to_bits(c.dtype, normal(rng) * w2_scale);
    }
    std::vector<const void*> w1_ptrs;
    std::vector<const void*> w2_ptrs;
    std::vector<uint64_t> w1_table;
    std::vector<uint64_t> w2_table;
    for (int64_t e = 0; e < c.experts; ++e) {
        const bool empty = e == c.empty_expert;
        const void* p1 = empty ? nullptr : w1[static_cast<size_t>(e)].data();
        const void* p2 = empty ? nullptr : w2[static_cast<size_t>(e)].data();
        w1_ptrs.push_back(p1);
        w2_ptrs.push_back(p2);
        w1_table.push_back(reinterpret_cast<uint64_t>(p1));
        w2_table.push_back(reinterpret_cast<uint64_t>(p2));
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

    eplb_native::tiling::DeviceSpec device;
    device.num_vector_cores = c.cores;
    if (c.ub_bytes > 0) device.ub_bytes = c.ub_bytes;
    const FusedMoeTilingData t = eplb_native::tiling::make_fused_moe_tiling(p, device);
    if (c.ub_bytes > 0) {
        ASSERT_LT(t.gemm1_reduce_chunk, c.hidden) << "the case must split the reduction";
    }

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
    for (int32_t call = 0; call < c.calls; ++call) {
        launch(t.route_blocks, [&] {
            moe_route_count(gm(ids.data()), c.mask ? gm(mask.data()) : nullptr,
                            gm(got_counts.data()),
                            c.load_mode == LoadMode::kNone ? nullptr : gm(load),
                            gm(&got_counter), ws, tiling);
        });
        launch(t.permute_blocks, [&] { moe_permute(gm(x.data()), ws, tiling); });
        launch(t.gemm1_blocks, [&] { moe_gemm1_swiglu(gm(w1_table.data()), ws, tiling); });
        launch(t.gemm2_blocks, [&] { moe_gemm2(gm(w2_table.data()), ws, tiling); });
        launch(t.combine_blocks,
               [&] { moe_combine(gm(scales.data()), gm(got_out.data()), ws, tiling); });
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
    for (size_t i = 0; i < got_out.size(); ++i) {
        ASSERT_EQ(got_out[i], want_out[i]) << "out[" << i / static_cast<size_t>(c.hidden) << ", "
                                           << i % static_cast<size_t>(c.hidden) << "]";
    }
}

std::vector<Case> cases() {
    std::vector<Case> all;
    for (const DType dtype : {DType::kBFloat16, DType::kFloat16}) {
        const std::string tag = dtype == DType::kBFloat16 ? "bf16" : "fp16";
        all.push_back({"decode_" + tag, 16, 256, 128, 8, 4, dtype});
        all.push_back({"tails_" + tag, 5, 200, 100, 3, 2, dtype});
        Case chunks{"short_chunks_" + tag, 6, 200, 72, 3, 3, dtype};
        chunks.ub_bytes = 48 * 1024;  // 16-row reduce chunks: 13 chunks over H, the last 8 rows
        all.push_back(chunks);
    }
    Case masked{"mask_ring_bf16", 9, 96, 40, 4, 3, DType::kBFloat16, LoadMode::kRing, true};
    masked.calls = 4;  // wraps the 3-row ring
    all.push_back(masked);
    Case empty{"empty_expert_no_load", 7, 64, 48, 4, 2, DType::kBFloat16, LoadMode::kNone};
    empty.empty_expert = 1;
    all.push_back(empty);
    Case none{"no_valid_pair", 4, 64, 32, 3, 2, DType::kFloat16};
    none.invalid_fraction = 1.0;
    all.push_back(none);
    all.push_back({"one_token_one_expert", 1, 130, 70, 1, 1, DType::kBFloat16});
    // H above kRowChunk (4096): permute and combine move rows in two chunks, the second a tail.
    all.push_back({"rows_longer_than_a_chunk", 3, 4100, 16, 2, 2, DType::kFloat16});
    Case few{"three_cores", 33, 160, 96, 5, 6, DType::kBFloat16};
    few.cores = 3;
    few.calls = 2;
    all.push_back(few);
    return all;
}

INSTANTIATE_TEST_SUITE_P(AscendKernels, EmulatedKernels, ::testing::ValuesIn(cases()),
                         [](const ::testing::TestParamInfo<Case>& param) { return param.param.name; });

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

}  // namespace
