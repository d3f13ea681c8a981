// CPU reference of the fused decode MoE operator; see the header for the numerics contract.
// Compiled with -ffp-contract=off: every a * b + c below is a rounded multiply then a rounded add.

#include "eplb_native/operator/reference/fused_moe_decode_ref.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <string>
#include <utility>

#include "eplb_native/error.h"
#include "eplb_native/operator/shared/float16.h"

namespace eplb_native::reference {

using shared::DType;
using shared::FusedMoeParams;
using shared::LoadMode;

namespace {

// Work split of the GEMM phases over the thread pool: tiles of kTileRows rows of one expert x
// kTileCols output columns. Each output element is one accumulator over the whole reduction, so
// the split never changes a result.
constexpr int64_t kTileRows = 16;
constexpr int64_t kTileCols = 64;

// Element traits: storage type, exact widening to fp32 and rounding back.
struct Bf16 {
    using Storage = uint16_t;
    static float load(Storage v) { return shared::bf16_to_f32(v); }
    static Storage store(float v) { return shared::f32_to_bf16_rne(v); }
};
struct Fp16 {
    using Storage = uint16_t;
    static float load(Storage v) { return shared::f16_to_f32(v); }
    static Storage store(float v) { return shared::f32_to_f16_rne(v); }
};
struct Fp32 {
    using Storage = float;
    static float load(Storage v) { return v; }
    static Storage store(float v) { return v; }
};

size_t idx(int64_t i) { return static_cast<size_t>(i); }

// silu(g) * u in the operator's operation order (t0 = -g; t1 = exp(t0); t2 = t1 + 1; g / t2).
float swiglu(float g, float u) {
    const float t0 = -g;
    const float t1 = static_cast<float>(std::exp(static_cast<double>(t0)));
    const float t2 = t1 + 1.0F;
    const float s = g / t2;
    return s * u;
}

// (expert, column tile) work items of a grouped GEMM, experts with rows only.
std::vector<std::pair<int64_t, int64_t>> gemm_tasks(const RowMap& rows, int64_t num_cols) {
    std::vector<std::pair<int64_t, int64_t>> tasks;
    const int64_t num_tiles = shared::ceil_div(num_cols, kTileCols);
    for (size_t e = 0; e < rows.counts.size(); ++e) {
        for (int64_t tile = 0; rows.counts[e] > 0 && tile < num_tiles; ++tile) {
            tasks.emplace_back(static_cast<int64_t>(e), tile);
        }
    }
    return tasks;
}

// Phase 2: gather x rows into expert-contiguous order, x_rows [R, H].
template <typename T>
void permute_rows(const FusedMoeParams& p, const RowMap& rows, const typename T::Storage* x,
                  typename T::Storage* x_rows, ThreadPool& pool) {
    pool.parallel_for(rows.num_rows(), [&](int64_t r) {
        const auto* src = x + shared::row_offset(rows.row_token[idx(r)], p.hidden);
        std::copy(src, src + p.hidden, x_rows + shared::row_offset(r, p.hidden));
    });
}

// Phase 3: h1 = x_rows @ w1[e] per column tile of the gate half and the matching up half,
// then the SwiGLU epilogue rounds a [R, I] to the act dtype.
template <typename T>
void gemm1_swiglu(const FusedMoeParams& p, const RowMap& rows,
                  const typename T::Storage* x_rows, const std::vector<const void*>& w1,
                  typename T::Storage* a, ThreadPool& pool) {
    const int64_t H = p.hidden;
    const int64_t I = p.intermediate;
    const auto tasks = gemm_tasks(rows, I);
    pool.parallel_for(static_cast<int64_t>(tasks.size()), [&](int64_t task) {
        const auto [e, tile] = tasks[idx(task)];
        const auto* w = static_cast<const typename T::Storage*>(w1[idx(e)]);
        const int64_t j0 = tile * kTileCols;
        const int64_t width = std::min(kTileCols, I - j0);
        std::array<float, kTileRows * kTileCols> gate{};
        std::array<float, kTileRows * kTileCols> up{};
        std::array<float, kTileCols> w_gate{};
        std::array<float, kTileCols> w_up{};
        for (int64_t r0 = rows.offsets[idx(e)]; r0 < rows.offsets[idx(e) + 1]; r0 += kTileRows) {
            const int64_t height = std::min(kTileRows, rows.offsets[idx(e) + 1] - r0);
            gate.fill(0.0F);
            up.fill(0.0F);
            for (int64_t d = 0; d < H; ++d) {
                for (int64_t c = 0; c < width; ++c) {
                    w_gate[idx(c)] = T::load(w[shared::w1_offset(d, shared::gate_col(j0 + c), I)]);
                    w_up[idx(c)] = T::load(w[shared::w1_offset(d, shared::up_col(j0 + c, I), I)]);
                }
                for (int64_t rr = 0; rr < height; ++rr) {
                    const float xv = T::load(x_rows[shared::row_offset(r0 + rr, H) + d]);
                    float* g_acc = gate.data() + rr * kTileCols;
                    float* u_acc = up.data() + rr * kTileCols;
                    for (int64_t c = 0; c < width; ++c) {
                        g_acc[c] = g_acc[c] + xv * w_gate[idx(c)];
                        u_acc[c] = u_acc[c] + xv * w_up[idx(c)];
                    }
                }
            }
            for (int64_t rr = 0; rr < height; ++rr) {
                auto* a_row = a + shared::row_offset(r0 + rr, I) + j0;
                for (int64_t c = 0; c < width; ++c) {
                    a_row[c] = T::store(swiglu(gate[idx(rr * kTileCols + c)],
                                               up[idx(rr * kTileCols + c)]));
                }
            }
        }
    });
}

// Phase 4: y = round(a @ w2[e]) per column tile, y [R, H].
template <typename T>
void gemm2(const FusedMoeParams& p, const RowMap& rows, const typename T::Storage* a,
           const std::vector<const void*>& w2, typename T::Storage* y, ThreadPool& pool) {
    const int64_t H = p.hidden;
    const int64_t I = p.intermediate;
    const auto tasks = gemm_tasks(rows, H);
    pool.parallel_for(static_cast<int64_t>(tasks.size()), [&](int64_t task) {
        const auto [e, tile] = tasks[idx(task)];
        const auto* w = static_cast<const typename T::Storage*>(w2[idx(e)]);
        const int64_t n0 = tile * kTileCols;
        const int64_t width = std::min(kTileCols, H - n0);
        std::array<float, kTileRows * kTileCols> acc{};
        std::array<float, kTileCols> w_row{};
        for (int64_t r0 = rows.offsets[idx(e)]; r0 < rows.offsets[idx(e) + 1]; r0 += kTileRows) {
            const int64_t height = std::min(kTileRows, rows.offsets[idx(e) + 1] - r0);
            acc.fill(0.0F);
            for (int64_t i = 0; i < I; ++i) {
                for (int64_t c = 0; c < width; ++c) {
                    w_row[idx(c)] = T::load(w[shared::w2_offset(i, n0 + c, H)]);
                }
                for (int64_t rr = 0; rr < height; ++rr) {
                    const float av = T::load(a[shared::row_offset(r0 + rr, I) + i]);
                    float* acc_row = acc.data() + rr * kTileCols;
                    for (int64_t c = 0; c < width; ++c) {
                        acc_row[c] = acc_row[c] + av * w_row[idx(c)];
                    }
                }
            }
            for (int64_t rr = 0; rr < height; ++rr) {
                auto* y_row = y + shared::row_offset(r0 + rr, H) + n0;
                for (int64_t c = 0; c < width; ++c) {
                    y_row[c] = T::store(acc[idx(rr * kTileCols + c)]);
                }
            }
        }
    });
}

// Phase 5: out[t] = round(sum over valid k ascending of scale[t,k] * y[row(t,k)]); zeros for
// masked tokens and tokens without a valid k.
template <typename T>
void combine(const FusedMoeParams& p, const RowMap& rows, const float* scales,
             const typename T::Storage* y, typename T::Storage* out, ThreadPool& pool) {
    const int64_t H = p.hidden;
    const int64_t K = p.top_k;
    pool.parallel_for(p.num_tokens, [&](int64_t t) {
        std::vector<float> acc(idx(H), 0.0F);
        for (int64_t k = 0; k < K; ++k) {
            const int64_t row = rows.row_of[idx(shared::pair_index(t, k, K))];
            if (row < 0) {
                continue;
            }
            const float scale = scales[shared::pair_index(t, k, K)];
            const auto* y_row = y + shared::row_offset(row, H);
            for (int64_t n = 0; n < H; ++n) {
                const float product = scale * T::load(y_row[n]);
                acc[idx(n)] = acc[idx(n)] + product;
            }
        }
        auto* out_row = out + shared::row_offset(t, H);
        for (int64_t n = 0; n < H; ++n) {
            out_row[n] = T::store(acc[idx(n)]);
        }
    });
}

// ---- W8A8 mode -------------------------------------------------------------------------------

float load_scale(DType dtype, const void* base, int64_t i) {
    switch (dtype) {
        case DType::kBFloat16:
            return shared::bf16_to_f32(static_cast<const uint16_t*>(base)[i]);
        case DType::kFloat16:
            return shared::f16_to_f32(static_cast<const uint16_t*>(base)[i]);
        default:
            return static_cast<const float*>(base)[i];
    }
}

// Dynamic symmetric int8 quantisation of one row; returns the dequantisation scale 1 / s.
float quantize_row(const float* values, int64_t n, int8_t* codes) {
    float absmax = 0.0F;
    for (int64_t i = 0; i < n; ++i) {
        const float magnitude = std::fabs(values[i]);
        absmax = magnitude > absmax ? magnitude : absmax;  // NaN never wins
    }
    if (!(absmax > 0.0F) || !std::isfinite(absmax)) {
        std::fill(codes, codes + n, static_cast<int8_t>(0));
        return 0.0F;
    }
    const float s = shared::kInt8Max / absmax;
    for (int64_t i = 0; i < n; ++i) {
        float code = std::nearbyint(values[i] * s);  // default rounding mode: ties to even
        code = std::isnan(code) ? 0.0F : std::clamp(code, -shared::kInt8Max, shared::kInt8Max);
        codes[i] = static_cast<int8_t>(code);
    }
    return 1.0F / s;
}

// Phase 1b + 2: quantise each routed row's token and gather the codes into x_q [R, H].
template <typename T>
void quantize_permute_rows(const FusedMoeParams& p, const RowMap& rows,
                           const typename T::Storage* x, int8_t* x_q, float* x_scale,
                           ThreadPool& pool) {
    pool.parallel_for(rows.num_rows(), [&](int64_t r) {
        const auto* src = x + shared::row_offset(rows.row_token[idx(r)], p.hidden);
        std::vector<float> values(idx(p.hidden));
        for (int64_t d = 0; d < p.hidden; ++d) {
            values[idx(d)] = T::load(src[d]);
        }
        x_scale[r] = quantize_row(values.data(), p.hidden, x_q + shared::row_offset(r, p.hidden));
    });
}

// acc[rr][c] = sum over d of lhs[r0 + rr][d] * w[d][col(c)], int32, for one tile.
template <typename ColFn>
void int8_tile(const int8_t* lhs, int64_t depth, int64_t r0, int64_t height, const int8_t* w,
               int64_t width, const ColFn& col, int32_t* acc) {
    std::array<int32_t, kTileCols> w_row{};
    std::fill(acc, acc + kTileRows * kTileCols, 0);
    for (int64_t d = 0; d < depth; ++d) {
        for (int64_t c = 0; c < width; ++c) {
            w_row[idx(c)] = w[col(d, c)];
        }
        for (int64_t rr = 0; rr < height; ++rr) {
            const int32_t lv = lhs[shared::row_offset(r0 + rr, depth) + d];
            int32_t* acc_row = acc + rr * kTileCols;
            for (int64_t c = 0; c < width; ++c) {
                acc_row[c] += lv * w_row[idx(c)];
            }
        }
    }
}

// Phase 3 (W8A8): int8 GEMM1, dequantise, SwiGLU into fp32 a [R, I].
void gemm1_swiglu_w8a8(const FusedMoeParams& p, const RowMap& rows, const int8_t* x_q,
                       const float* x_scale, const FusedMoeInputs& in, float* a,
                       ThreadPool& pool) {
    const int64_t H = p.hidden;
    const int64_t I = p.intermediate;
    const auto tasks = gemm_tasks(rows, I);
    pool.parallel_for(static_cast<int64_t>(tasks.size()), [&](int64_t task) {
        const auto [e, tile] = tasks[idx(task)];
        const auto* w = static_cast<const int8_t*>(in.w1[idx(e)]);
        const void* scale = in.w1_scale[idx(e)];
        const int64_t j0 = tile * kTileCols;
        const int64_t width = std::min(kTileCols, I - j0);
        std::array<int32_t, kTileRows * kTileCols> gate{};
        std::array<int32_t, kTileRows * kTileCols> up{};
        auto gate_at = [&](int64_t d, int64_t c) {
            return shared::w1_offset(d, shared::gate_col(j0 + c), I);
        };
        auto up_at = [&](int64_t d, int64_t c) {
            return shared::w1_offset(d, shared::up_col(j0 + c, I), I);
        };
        for (int64_t r0 = rows.offsets[idx(e)]; r0 < rows.offsets[idx(e) + 1]; r0 += kTileRows) {
            const int64_t height = std::min(kTileRows, rows.offsets[idx(e) + 1] - r0);
            int8_tile(x_q, H, r0, height, w, width, gate_at, gate.data());
            int8_tile(x_q, H, r0, height, w, width, up_at, up.data());
            for (int64_t rr = 0; rr < height; ++rr) {
                const float row_scale = x_scale[r0 + rr];
                for (int64_t c = 0; c < width; ++c) {
                    const float gs = load_scale(p.w1_scale_dtype, scale, shared::gate_col(j0 + c));
                    const float us = load_scale(p.w1_scale_dtype, scale, shared::up_col(j0 + c, I));
                    const float g =
                        (static_cast<float>(gate[idx(rr * kTileCols + c)]) * gs) * row_scale;
                    const float u =
                        (static_cast<float>(up[idx(rr * kTileCols + c)]) * us) * row_scale;
                    a[shared::row_offset(r0 + rr, I) + j0 + c] = swiglu(g, u);
                }
            }
        }
    });
}

// Phase 4 (W8A8): re-quantise a per row, int8 GEMM2, dequantise and round y [R, H].
template <typename T>
void gemm2_w8a8(const FusedMoeParams& p, const RowMap& rows, const float* a,
                const FusedMoeInputs& in, typename T::Storage* y, ThreadPool& pool) {
    const int64_t H = p.hidden;
    const int64_t I = p.intermediate;
    const int64_t R = rows.num_rows();
    std::vector<int8_t> a_q(idx(R * I));
    std::vector<float> a_scale(idx(R));
    pool.parallel_for(R, [&](int64_t r) {
        a_scale[idx(r)] = quantize_row(a + shared::row_offset(r, I), I,
                                       a_q.data() + shared::row_offset(r, I));
    });
    const auto tasks = gemm_tasks(rows, H);
    pool.parallel_for(static_cast<int64_t>(tasks.size()), [&](int64_t task) {
        const auto [e, tile] = tasks[idx(task)];
        const auto* w = static_cast<const int8_t*>(in.w2[idx(e)]);
        const void* scale = in.w2_scale[idx(e)];
        const int64_t n0 = tile * kTileCols;
        const int64_t width = std::min(kTileCols, H - n0);
        std::array<int32_t, kTileRows * kTileCols> acc{};
        auto col_at = [&](int64_t i, int64_t c) { return shared::w2_offset(i, n0 + c, H); };
        for (int64_t r0 = rows.offsets[idx(e)]; r0 < rows.offsets[idx(e) + 1]; r0 += kTileRows) {
            const int64_t height = std::min(kTileRows, rows.offsets[idx(e) + 1] - r0);
            int8_tile(a_q.data(), I, r0, height, w, width, col_at, acc.data());
            for (int64_t rr = 0; rr < height; ++rr) {
                const float row_scale = a_scale[idx(r0 + rr)];
                auto* y_row = y + shared::row_offset(r0 + rr, H) + n0;
                for (int64_t c = 0; c < width; ++c) {
                    const float ws = load_scale(p.w2_scale_dtype, scale, n0 + c);
                    y_row[c] = T::store(
                        (static_cast<float>(acc[idx(rr * kTileCols + c)]) * ws) * row_scale);
                }
            }
        }
    });
}

template <typename T>
void run_float_phases(const FusedMoeParams& p, const FusedMoeInputs& in, const RowMap& rows,
                      const FusedMoeOutputs& outputs, ThreadPool& pool) {
    using S = typename T::Storage;
    const int64_t R = rows.num_rows();
    std::vector<S> x_rows(p.w8a8 != 0 ? 0 : idx(R * p.hidden));
    std::vector<S> a(p.w8a8 != 0 ? 0 : idx(R * p.intermediate));
    std::vector<S> y(idx(R * p.hidden));
    if (p.w8a8 != 0) {
        std::vector<int8_t> x_q(idx(R * p.hidden));
        std::vector<float> x_scale(idx(R));
        std::vector<float> a_f32(idx(R * p.intermediate));
        quantize_permute_rows<T>(p, rows, static_cast<const S*>(in.x), x_q.data(), x_scale.data(),
                                 pool);
        gemm1_swiglu_w8a8(p, rows, x_q.data(), x_scale.data(), in, a_f32.data(), pool);
        gemm2_w8a8<T>(p, rows, a_f32.data(), in, y.data(), pool);
    } else {
        permute_rows<T>(p, rows, static_cast<const S*>(in.x), x_rows.data(), pool);
        gemm1_swiglu<T>(p, rows, x_rows.data(), in.w1, a.data(), pool);
        gemm2<T>(p, rows, a.data(), in.w2, y.data(), pool);
    }
    combine<T>(p, rows, in.expert_scales, y.data(), static_cast<S*>(outputs.out), pool);
}

void require_pointer(const void* pointer, const char* field) {
    if (pointer == nullptr) {
        throw_invalid(field, "buffer is missing (null)");
    }
}

// Wrapping int32 addition (torch's int32 add wraps; signed overflow would be UB in C++).
int32_t add_wrap(int32_t a, int64_t b) {
    return static_cast<int32_t>(static_cast<uint32_t>(a) + static_cast<uint32_t>(b));
}

}  // namespace

void validate_params(const FusedMoeParams& p) {
    if (p.num_tokens < 0) {
        throw_invalid("x", "number of tokens must be >= 0, got " + std::to_string(p.num_tokens));
    }
    if (p.hidden < 1) {
        throw_invalid("x", "hidden size must be >= 1, got " + std::to_string(p.hidden));
    }
    if (p.intermediate < 1) {
        throw_invalid("w2", "intermediate size must be >= 1, got " +
                                std::to_string(p.intermediate));
    }
    if (p.top_k < 1) {
        throw_invalid("expert_ids", "top-k must be >= 1, got " + std::to_string(p.top_k));
    }
    if (p.num_experts < 1) {
        throw_invalid("w1", "needs at least one expert, got " + std::to_string(p.num_experts));
    }
    if (p.act_dtype == DType::kInt8) {
        throw_invalid("x", "activations must be bf16, fp16 or fp32 (int8 weights: W8A8 mode)");
    }
    auto is_scale_dtype = [](DType d) {
        return d == DType::kFloat32 || d == DType::kFloat16 || d == DType::kBFloat16;
    };
    if (p.w8a8 != 0 && !is_scale_dtype(p.w1_scale_dtype)) {
        throw_invalid("w1_scale", "scale dtype must be fp32, fp16 or bf16");
    }
    if (p.w8a8 != 0 && !is_scale_dtype(p.w2_scale_dtype)) {
        throw_invalid("w2_scale", "scale dtype must be fp32, fp16 or bf16");
    }
    if (p.act_dtype != DType::kFloat32 && p.act_dtype != DType::kFloat16 &&
        p.act_dtype != DType::kBFloat16) {
        throw_invalid("x", "unknown activation dtype tag");
    }
    if (p.load_mode == LoadMode::kRing && p.load_steps < 1) {
        throw_invalid("moe_load", "ring buffer needs at least one row, got " +
                                      std::to_string(p.load_steps));
    }
}

RowMap route_tokens(const FusedMoeParams& p, const int32_t* expert_ids,
                    const uint8_t* x_active_mask) {
    const int64_t E = p.num_experts;
    const int64_t pairs = p.num_tokens * p.top_k;
    RowMap rows;
    rows.counts.assign(idx(E), 0);
    rows.offsets.assign(idx(E) + 1, 0);
    rows.row_of.assign(idx(pairs), -1);
    auto valid = [&](int64_t t, int64_t k) {
        const bool active = x_active_mask == nullptr || x_active_mask[t] != 0;
        return shared::is_valid_pair(active, expert_ids[shared::pair_index(t, k, p.top_k)], E);
    };
    for (int64_t t = 0; t < p.num_tokens; ++t) {
        for (int64_t k = 0; k < p.top_k; ++k) {
            if (valid(t, k)) {
                ++rows.counts[idx(expert_ids[shared::pair_index(t, k, p.top_k)])];
            }
        }
    }
    for (int64_t e = 0; e < E; ++e) {
        rows.offsets[idx(e) + 1] = rows.offsets[idx(e)] + rows.counts[idx(e)];
    }
    std::vector<int64_t> cursor(rows.offsets.begin(), rows.offsets.end() - 1);
    rows.row_token.assign(idx(rows.num_rows()), 0);
    for (int64_t t = 0; t < p.num_tokens; ++t) {
        for (int64_t k = 0; k < p.top_k; ++k) {
            if (valid(t, k)) {
                const int64_t row = cursor[idx(expert_ids[shared::pair_index(t, k, p.top_k)])]++;
                rows.row_of[idx(shared::pair_index(t, k, p.top_k))] = row;
                rows.row_token[idx(row)] = t;
            }
        }
    }
    return rows;
}

void update_moe_load(const FusedMoeParams& p, const RowMap& rows, const FusedMoeOutputs& o) {
    const int64_t E = p.num_experts;
    if (p.load_mode == LoadMode::kTotal) {
        require_pointer(o.moe_load_total, "moe_load");
        for (int64_t e = 0; e < E; ++e) {
            o.moe_load_total[e] += rows.counts[idx(e)];
        }
    } else if (p.load_mode == LoadMode::kRing) {
        require_pointer(o.moe_load_ring, "moe_load");
        require_pointer(o.load_counter, "load_counter");
        int32_t* row = o.moe_load_ring + shared::ring_slot(*o.load_counter, p.load_steps) * E;
        for (int64_t e = 0; e < E; ++e) {
            row[e] = add_wrap(row[e], rows.counts[idx(e)]);
        }
        *o.load_counter = add_wrap(*o.load_counter, 1);
    }
}

void fused_moe_decode(const FusedMoeParams& p, const FusedMoeInputs& in,
                      const FusedMoeOutputs& outputs, ThreadPool& pool) {
    validate_params(p);
    const int64_t E = p.num_experts;
    if (p.num_tokens > 0) {
        require_pointer(in.x, "x");
        require_pointer(in.expert_ids, "expert_ids");
        require_pointer(in.expert_scales, "expert_scales");
        require_pointer(outputs.out, "out");
    }
    require_pointer(outputs.expert_token_nums, "expert_token_nums");
    if (static_cast<int64_t>(in.w1.size()) != E || static_cast<int64_t>(in.w2.size()) != E) {
        throw_invalid("w1", "w1 and w2 must hold one weight per expert (" + std::to_string(E) +
                                "), got " + std::to_string(in.w1.size()) + " and " +
                                std::to_string(in.w2.size()));
    }
    if (p.has_mask != 0 && p.num_tokens > 0) {
        require_pointer(in.x_active_mask, "x_active_mask");
    }
    const RowMap rows =
        route_tokens(p, in.expert_ids, p.has_mask != 0 ? in.x_active_mask : nullptr);
    if (p.w8a8 != 0 && (static_cast<int64_t>(in.w1_scale.size()) != E ||
                        static_cast<int64_t>(in.w2_scale.size()) != E)) {
        throw_invalid("w1_scale", "W8A8 needs one w1_scale and one w2_scale per expert (" +
                                      std::to_string(E) + ")");
    }
    for (int64_t e = 0; e < E; ++e) {
        if (p.w8a8 != 0 && rows.counts[idx(e)] > 0 &&
            (in.w1_scale[idx(e)] == nullptr || in.w2_scale[idx(e)] == nullptr)) {
            throw_invalid("w1_scale[" + std::to_string(e) + "]",
                          "expert receives tokens but its scales are empty");
        }
        if (rows.counts[idx(e)] > 0 && (in.w1[idx(e)] == nullptr || in.w2[idx(e)] == nullptr)) {
            throw_invalid(in.w1[idx(e)] == nullptr ? "w1[" + std::to_string(e) + "]"
                                                   : "w2[" + std::to_string(e) + "]",
                          "expert receives " + std::to_string(rows.counts[idx(e)]) +
                              " tokens but its weight is empty");
        }
    }
    std::copy(rows.counts.begin(), rows.counts.end(), outputs.expert_token_nums);
    update_moe_load(p, rows, outputs);
    switch (p.act_dtype) {
        case DType::kBFloat16:
            run_float_phases<Bf16>(p, in, rows, outputs, pool);
            break;
        case DType::kFloat16:
            run_float_phases<Fp16>(p, in, rows, outputs, pool);
            break;
        default:
            run_float_phases<Fp32>(p, in, rows, outputs, pool);
            break;
    }
}

}  // namespace eplb_native::reference
