// Fused decode MoE reference: tiled/threaded phases == a naive per-pair loop, bit for bit.

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <stdexcept>
#include <vector>

#include "eplb_native/operator/reference/fused_moe_decode_ref.h"
#include "eplb_native/operator/shared/float16.h"
#include "eplb_native/operator/shared/fused_moe_params.h"

namespace eplb_native {
namespace {

using reference::FusedMoeInputs;
using reference::FusedMoeOutputs;
using shared::DType;
using shared::FusedMoeParams;
using shared::LoadMode;

// Activation buffers are kept as fp32 values plus their stored form (bits or fp32).
struct Case {
    FusedMoeParams p{};
    std::vector<uint16_t> x16;
    std::vector<float> x32;
    std::vector<int32_t> ids;
    std::vector<float> scales;
    std::vector<std::vector<uint16_t>> w1_16, w2_16;
    std::vector<std::vector<float>> w1_32, w2_32;
    std::vector<uint8_t> mask;
};

float widen(DType dtype, uint16_t bits) {
    return dtype == DType::kBFloat16 ? shared::bf16_to_f32(bits) : shared::f16_to_f32(bits);
}
uint16_t narrow(DType dtype, float value) {
    return dtype == DType::kBFloat16 ? shared::f32_to_bf16_rne(value)
                                     : shared::f32_to_f16_rne(value);
}
float round_act(DType dtype, float value) {
    return dtype == DType::kFloat32 ? value : widen(dtype, narrow(dtype, value));
}

Case make_case(DType dtype, int64_t bs, int64_t h, int64_t inter, int64_t k, int64_t e,
               unsigned seed, bool masked = false) {
    Case c;
    c.p = FusedMoeParams{bs, h, inter, k, e, 0, dtype, LoadMode::kNone, masked ? 1 : 0, 0,
                         DType::kFloat32, DType::kFloat32};
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal(0.0F, 1.0F);
    std::uniform_int_distribution<int32_t> id(-1, static_cast<int32_t>(e));
    std::uniform_real_distribution<float> unit(0.0F, 1.0F);
    auto fill = [&](std::vector<uint16_t>& b16, std::vector<float>& b32, int64_t n, float s) {
        for (int64_t i = 0; i < n; ++i) {
            const float v = normal(rng) * s;
            b32.push_back(round_act(dtype, v));
            b16.push_back(dtype == DType::kFloat32 ? 0 : narrow(dtype, v));
        }
    };
    fill(c.x16, c.x32, bs * h, 1.0F);
    for (int64_t i = 0; i < bs * k; ++i) {
        c.ids.push_back(id(rng));
        c.scales.push_back(unit(rng));
    }
    c.w1_16.resize(static_cast<size_t>(e));
    c.w1_32.resize(static_cast<size_t>(e));
    c.w2_16.resize(static_cast<size_t>(e));
    c.w2_32.resize(static_cast<size_t>(e));
    for (size_t i = 0; i < static_cast<size_t>(e); ++i) {
        fill(c.w1_16[i], c.w1_32[i], h * 2 * inter, 0.3F);
        fill(c.w2_16[i], c.w2_32[i], inter * h, 0.3F);
    }
    for (int64_t t = 0; t < bs; ++t) {
        c.mask.push_back(unit(rng) < 0.7F ? 1 : 0);
    }
    return c;
}

FusedMoeInputs inputs_of(const Case& c) {
    const bool wide = c.p.act_dtype == DType::kFloat32;
    FusedMoeInputs in;
    in.x = wide ? static_cast<const void*>(c.x32.data()) : c.x16.data();
    in.expert_ids = c.ids.data();
    in.expert_scales = c.scales.data();
    for (size_t e = 0; e < c.w1_32.size(); ++e) {
        in.w1.push_back(wide ? static_cast<const void*>(c.w1_32[e].data()) : c.w1_16[e].data());
        in.w2.push_back(wide ? static_cast<const void*>(c.w2_32[e].data()) : c.w2_16[e].data());
    }
    in.x_active_mask = c.p.has_mask != 0 ? c.mask.data() : nullptr;
    return in;
}

// Output as fp32 values (exact widening of the stored form).
std::vector<float> run_reference(const Case& c, int threads, std::vector<int64_t>* counts) {
    const bool wide = c.p.act_dtype == DType::kFloat32;
    std::vector<uint16_t> out16(static_cast<size_t>(c.p.num_tokens * c.p.hidden), 0x7777);
    std::vector<float> out32(out16.size(), 7.0F);
    counts->assign(static_cast<size_t>(c.p.num_experts), -1);
    FusedMoeOutputs o;
    o.out = wide ? static_cast<void*>(out32.data()) : out16.data();
    o.expert_token_nums = counts->data();
    ThreadPool pool(threads);
    reference::fused_moe_decode(c.p, inputs_of(c), o, pool);
    if (!wide) {
        for (size_t i = 0; i < out16.size(); ++i) {
            out32[i] = widen(c.p.act_dtype, out16[i]);
        }
    }
    return out32;
}

// Naive reference: no routing table, no tiles. Walks (t, k) pairs directly and recomputes each
// pair's expert MLP with one accumulator per output element, in the operator's operation order.
std::vector<float> run_naive(const Case& c, std::vector<int64_t>* counts) {
    const auto& p = c.p;
    const DType dt = p.act_dtype;
    const int64_t H = p.hidden;
    const int64_t I = p.intermediate;
    counts->assign(static_cast<size_t>(p.num_experts), 0);
    std::vector<float> out(static_cast<size_t>(p.num_tokens * H), 0.0F);
    for (int64_t t = 0; t < p.num_tokens; ++t) {
        std::vector<float> acc(static_cast<size_t>(H), 0.0F);
        for (int64_t k = 0; k < p.top_k; ++k) {
            const int32_t e = c.ids[static_cast<size_t>(t * p.top_k + k)];
            const bool active = p.has_mask == 0 || c.mask[static_cast<size_t>(t)] != 0;
            if (!active || e < 0 || e >= p.num_experts) {
                continue;
            }
            ++(*counts)[static_cast<size_t>(e)];
            const auto& w1 = c.w1_32[static_cast<size_t>(e)];
            const auto& w2 = c.w2_32[static_cast<size_t>(e)];
            std::vector<float> a(static_cast<size_t>(I));
            for (int64_t j = 0; j < I; ++j) {
                float g = 0.0F;
                float u = 0.0F;
                for (int64_t d = 0; d < H; ++d) {
                    const float xv = c.x32[static_cast<size_t>(t * H + d)];
                    g = g + xv * w1[static_cast<size_t>(d * 2 * I + j)];
                    u = u + xv * w1[static_cast<size_t>(d * 2 * I + I + j)];
                }
                const float e_neg = static_cast<float>(std::exp(-static_cast<double>(g)));
                const float silu = g / (e_neg + 1.0F);
                a[static_cast<size_t>(j)] = round_act(dt, silu * u);
            }
            const float scale = c.scales[static_cast<size_t>(t * p.top_k + k)];
            for (int64_t n = 0; n < H; ++n) {
                float y = 0.0F;
                for (int64_t i = 0; i < I; ++i) {
                    y = y + a[static_cast<size_t>(i)] * w2[static_cast<size_t>(i * H + n)];
                }
                const float product = scale * round_act(dt, y);
                acc[static_cast<size_t>(n)] = acc[static_cast<size_t>(n)] + product;
            }
        }
        for (int64_t n = 0; n < H; ++n) {
            out[static_cast<size_t>(t * H + n)] = round_act(dt, acc[static_cast<size_t>(n)]);
        }
    }
    return out;
}

void expect_bit_equal(const std::vector<float>& a, const std::vector<float>& b) {
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) {
        ASSERT_EQ(shared::f32_bits(a[i]), shared::f32_bits(b[i])) << "element " << i;
    }
}

class ReferenceVsNaive : public ::testing::TestWithParam<DType> {};

TEST_P(ReferenceVsNaive, BitExactWithTailTilesAndMask) {
    // 130 columns and I = 67: tail column tiles; ~30 rows per expert: several row tiles.
    for (bool masked : {false, true}) {
        const Case c = make_case(GetParam(), 24, 130, 67, 4, 3, masked ? 2U : 1U, masked);
        std::vector<int64_t> counts;
        std::vector<int64_t> naive_counts;
        expect_bit_equal(run_reference(c, 2, &counts), run_naive(c, &naive_counts));
        EXPECT_EQ(counts, naive_counts);
    }
}

TEST_P(ReferenceVsNaive, SingleExpertSingleToken) {
    for (const auto& [bs, e] : std::vector<std::pair<int64_t, int64_t>>{{1, 4}, {6, 1}}) {
        const Case c = make_case(GetParam(), bs, 17, 9, 3, e, 3U);
        std::vector<int64_t> counts;
        std::vector<int64_t> naive_counts;
        expect_bit_equal(run_reference(c, 1, &counts), run_naive(c, &naive_counts));
        EXPECT_EQ(counts, naive_counts);
    }
}

INSTANTIATE_TEST_SUITE_P(AllDtypes, ReferenceVsNaive,
                         ::testing::Values(DType::kBFloat16, DType::kFloat16, DType::kFloat32));

TEST(FusedMoeReference, ThreadCountInvariance) {
    const Case c = make_case(DType::kBFloat16, 20, 100, 70, 4, 5, 4U, true);
    std::vector<int64_t> counts1;
    const auto base = run_reference(c, 1, &counts1);
    for (int threads : {2, 3, 5}) {
        std::vector<int64_t> counts;
        expect_bit_equal(run_reference(c, threads, &counts), base);
        EXPECT_EQ(counts, counts1);
    }
}

TEST(FusedMoeReference, NoRowsGivesZerosAndNeverReadsWeights) {
    Case c = make_case(DType::kBFloat16, 4, 8, 4, 2, 3, 5U);
    c.ids.assign(c.ids.size(), -1);
    FusedMoeInputs in = inputs_of(c);
    in.w1.assign(3, nullptr);
    in.w2.assign(3, nullptr);
    std::vector<uint16_t> out(32, 0x1234);
    std::vector<int64_t> counts(3, 9);
    FusedMoeOutputs o;
    o.out = out.data();
    o.expert_token_nums = counts.data();
    ThreadPool pool(2);
    reference::fused_moe_decode(c.p, in, o, pool);
    EXPECT_EQ(out, std::vector<uint16_t>(32, 0));
    EXPECT_EQ(counts, std::vector<int64_t>(3, 0));
}

TEST(FusedMoeReference, MissingWeightOfUsedExpertIsRejected) {
    Case c = make_case(DType::kFloat16, 4, 8, 4, 2, 3, 6U);
    c.ids.assign(c.ids.size(), 1);
    FusedMoeInputs in = inputs_of(c);
    in.w2[1] = nullptr;
    std::vector<uint16_t> out(32);
    std::vector<int64_t> counts(3);
    FusedMoeOutputs o;
    o.out = out.data();
    o.expert_token_nums = counts.data();
    ThreadPool pool(1);
    EXPECT_THROW(reference::fused_moe_decode(c.p, in, o, pool), std::invalid_argument);
}

TEST(FusedMoeReference, RouteOrderIsStableByExpertThenPair) {
    FusedMoeParams p{3, 1, 1, 3, 3, 0, DType::kFloat32, LoadMode::kNone, 1, 0, DType::kFloat32, DType::kFloat32};
    const std::vector<int32_t> ids{2, 0, 2, /**/ 1, 7, 0, /**/ 0, 0, 0};
    const std::vector<uint8_t> mask{1, 1, 0};
    const auto rows = reference::route_tokens(p, ids.data(), mask.data());
    EXPECT_EQ(rows.counts, (std::vector<int64_t>{2, 1, 2}));
    EXPECT_EQ(rows.offsets, (std::vector<int64_t>{0, 2, 3, 5}));
    EXPECT_EQ(rows.row_of, (std::vector<int64_t>{3, 0, 4, 2, -1, 1, -1, -1, -1}));
    EXPECT_EQ(rows.row_token, (std::vector<int64_t>{0, 1, 1, 0, 0}));
}

TEST(FusedMoeReference, MoeLoadTotalAndRing) {
    FusedMoeParams p{2, 1, 1, 2, 3, 0, DType::kFloat32, LoadMode::kTotal, 0, 0, DType::kFloat32, DType::kFloat32};
    const std::vector<int32_t> ids{0, 2, 2, 5};
    const auto rows = reference::route_tokens(p, ids.data(), nullptr);
    std::vector<int64_t> total{10, 20, 30};
    FusedMoeOutputs o;
    o.moe_load_total = total.data();
    reference::update_moe_load(p, rows, o);
    EXPECT_EQ(total, (std::vector<int64_t>{11, 20, 32}));

    p.load_mode = LoadMode::kRing;
    p.load_steps = 2;
    std::vector<int32_t> ring(6, 0);
    int32_t counter = 2147483647;  // wraps to INT32_MIN, as torch's int32 add_
    o.moe_load_ring = ring.data();
    o.load_counter = &counter;
    reference::update_moe_load(p, rows, o);  // slot 2147483647 mod 2 = 1
    EXPECT_EQ(counter, -2147483647 - 1);
    reference::update_moe_load(p, rows, o);  // slot floor-mod(INT32_MIN, 2) = 0
    reference::update_moe_load(p, rows, o);  // slot 1
    EXPECT_EQ(ring, (std::vector<int32_t>{1, 0, 2, 2, 0, 4}));
    EXPECT_EQ(counter, -2147483647 + 1);
}

TEST(FusedMoeParams, LimitsAndIndexMath) {
    static_assert(sizeof(FusedMoeParams) == 72, "POD layout shared with the kernels");
    static_assert(shared::kMaxDecodeRows == 3072);
    static_assert(shared::is_scale_dtype_allowed(DType::kFloat32, DType::kBFloat16));
    static_assert(shared::is_scale_dtype_allowed(DType::kBFloat16, DType::kBFloat16));
    static_assert(!shared::is_scale_dtype_allowed(DType::kFloat16, DType::kBFloat16));
    static_assert(!shared::is_scale_dtype_allowed(DType::kBFloat16, DType::kFloat16));
    static_assert(shared::ring_slot(-1, 4) == 3 && shared::ring_slot(9, 4) == 1);
    static_assert(shared::w1_offset(2, shared::up_col(1, 5), 5) == 2 * 10 + 6);
    static_assert(shared::ceil_div(65, 64) == 2 && shared::ceil_div(64, 64) == 1);
    static_assert(!shared::is_valid_pair(true, 3, 3) && shared::is_valid_pair(true, 2, 3));
    static_assert(!shared::is_valid_pair(false, 0, 3) && !shared::is_valid_pair(true, -1, 3));
    FusedMoeParams p{4, 8, 4, 2, 3, 0, DType::kBFloat16, LoadMode::kNone, 0, 0, DType::kFloat32, DType::kFloat32};
    EXPECT_NO_THROW(reference::validate_params(p));
    auto bad = p;
    bad.top_k = 0;
    EXPECT_THROW(reference::validate_params(bad), std::invalid_argument);
    bad = p;
    bad.act_dtype = DType::kInt8;
    EXPECT_THROW(reference::validate_params(bad), std::invalid_argument);
    bad = p;
    bad.load_mode = LoadMode::kRing;
    EXPECT_THROW(reference::validate_params(bad), std::invalid_argument);
}

// W8A8: thread-count invariance, zero token rows give zero output, unused experts need no
// weights or scales. (Bit-exactness against the numpy golden is tested in test_ops_cpu.py.)
TEST(FusedMoeReference, W8A8ThreadInvarianceAndZeroRows) {
    Case c = make_case(DType::kBFloat16, 12, 70, 33, 3, 3, 7U);
    c.p.w8a8 = 1;
    c.p.w1_scale_dtype = DType::kFloat32;
    c.p.w2_scale_dtype = DType::kBFloat16;
    std::fill(c.x16.begin(), c.x16.begin() + 70, static_cast<uint16_t>(0));  // token 0 is zero
    for (size_t i = 0; i < c.ids.size(); ++i) {
        c.ids[i] = c.ids[i] == 2 ? 1 : c.ids[i];  // expert 2 unused
    }
    std::mt19937 rng(8U);
    std::uniform_int_distribution<int> code(-127, 127);
    std::vector<std::vector<int8_t>> w1(3), w2(3);
    std::vector<std::vector<float>> s1(3);
    std::vector<std::vector<uint16_t>> s2(3);
    FusedMoeInputs in = inputs_of(c);
    for (size_t e = 0; e < 2; ++e) {
        for (int i = 0; i < 70 * 66; ++i) {
            w1[e].push_back(static_cast<int8_t>(code(rng)));
            w2[e].push_back(static_cast<int8_t>(code(rng)));
        }
        s1[e].assign(66, 0.01F);
        s2[e].assign(70, shared::f32_to_bf16_rne(0.02F));
        in.w1[e] = w1[e].data();
        in.w2[e] = w2[e].data();
        in.w1_scale.push_back(s1[e].data());
        in.w2_scale.push_back(s2[e].data());
    }
    in.w1[2] = in.w2[2] = nullptr;
    in.w1_scale.push_back(nullptr);
    in.w2_scale.push_back(nullptr);
    std::vector<std::vector<uint16_t>> outs;
    for (int threads : {1, 2, 3}) {
        std::vector<uint16_t> out(12 * 70, 0x5555);
        std::vector<int64_t> counts(3);
        FusedMoeOutputs o;
        o.out = out.data();
        o.expert_token_nums = counts.data();
        ThreadPool pool(threads);
        reference::fused_moe_decode(c.p, in, o, pool);
        EXPECT_EQ(counts[2], 0);
        outs.push_back(out);
    }
    EXPECT_EQ(outs[0], outs[1]);
    EXPECT_EQ(outs[0], outs[2]);
    EXPECT_EQ(std::vector<uint16_t>(outs[0].begin(), outs[0].begin() + 70),
              std::vector<uint16_t>(70, 0));
    bool any_nonzero = false;
    for (uint16_t v : outs[0]) {
        any_nonzero = any_nonzero || (v & 0x7FFFU) != 0;
    }
    EXPECT_TRUE(any_nonzero);
}

TEST(Float16, Fp16RoundTripsEveryValueAndRoundsTiesToEven) {
    for (uint32_t bits = 0; bits < 0x10000U; ++bits) {
        const auto h = static_cast<uint16_t>(bits);
        const float f = shared::f16_to_f32(h);
        if (std::isnan(f)) {
            EXPECT_TRUE(std::isnan(shared::f16_to_f32(shared::f32_to_f16_rne(f))));
        } else {
            ASSERT_EQ(shared::f32_to_f16_rne(f), h) << bits;
        }
    }
    EXPECT_EQ(shared::f32_to_f16_rne(1.0F + 0x1p-11F), 0x3C00);  // tie -> even (1.0)
    EXPECT_EQ(shared::f32_to_f16_rne(1.0F + 0x3p-11F), 0x3C02);  // tie -> even (up)
    EXPECT_EQ(shared::f32_to_f16_rne(65520.0F), 0x7C00);          // tie at max -> inf
    EXPECT_EQ(shared::f32_to_f16_rne(65519.0F), 0x7BFF);
    EXPECT_EQ(shared::f32_to_f16_rne(0x1p-25F), 0x0000);           // tie -> even (0)
    EXPECT_EQ(shared::f32_to_f16_rne(0x3p-25F), 0x0002);           // tie -> even (2)
    EXPECT_EQ(shared::f32_to_f16_rne(-0x1.8p-25F), 0x8001);
}

TEST(Float16, Bf16RoundTripsEveryValueAndRoundsTiesToEven) {
    for (uint32_t bits = 0; bits < 0x10000U; ++bits) {
        const auto h = static_cast<uint16_t>(bits);
        const float f = shared::bf16_to_f32(h);
        if (std::isnan(f)) {
            EXPECT_TRUE(std::isnan(shared::bf16_to_f32(shared::f32_to_bf16_rne(f))));
        } else {
            ASSERT_EQ(shared::f32_to_bf16_rne(f), h) << bits;
        }
    }
    EXPECT_EQ(shared::f32_to_bf16_rne(1.0F + 0x1p-8F), 0x3F80);
    EXPECT_EQ(shared::f32_to_bf16_rne(1.0F + 0x3p-8F), 0x3F82);
    EXPECT_EQ(shared::f32_to_bf16_rne(shared::f32_from_bits(0x7F7FFFFFU)), 0x7F80);
    EXPECT_TRUE(std::isnan(shared::bf16_to_f32(shared::f32_to_bf16_rne(
        shared::f32_from_bits(0x7F800001U)))));  // a NaN whose payload sits in the low bits
}

}  // namespace
}  // namespace eplb_native
