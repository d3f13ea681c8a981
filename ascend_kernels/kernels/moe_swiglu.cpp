// moe_swiglu (AIV, multi-core): the SwiGLU epilogue of GEMM1, one workspace row at a time.
// Block b handles the rows [R*b/B, R*(b+1)/B). For row r (of expert e) with gate g = h1[r, j] and
// up u = h1[r, I + j] (fp32 accumulators of moe_gemm1):
//   bf16/fp16: a[r, j] = round(s * u), s = g / (1 + exp(-g)) as Muls(-1) -> Exp -> Adds(1) ->
//              Div -> Mul in fp32, round = Cast CAST_RINT to the activation dtype;
//   W8A8:      g and u are int32 and are dequantised first, (f32(g) * w1_scale[e][j]) *
//              x_scale[r] (f32(u) with w1_scale[e][I + j]), f32 = Cast CAST_RINT; the fp32 SwiGLU
//              row is quantised to int8 (quantize_row_int8) for GEMM2, its dequantisation scale
//              going to act_scale[r].
// The gate and up halves are loaded as two rows so that both start 32-byte aligned in UB.

#include "moe_kernel_common.h"

namespace eplb_native::kernels {

template <typename T>
class MoeSwiglu {
public:
    __aicore__ inline void Init(GM_ADDR w1_scale_table, GM_ADDR workspace,
                                const FusedMoeTilingData& t) {
        t_ = t;
        ws_ = carve_workspace(workspace, t);
        const int64_t pairs = t.num_tokens * t.top_k;
        const int64_t inter = t.intermediate;
        // Exactly the buffers counted by shared::swiglu_ub_bytes.
        const int64_t row32 = shared::align_up(inter * 4, shared::kUbBlockBytes);
        pipe_.InitBuffer(offsets_buf_, shared::offsets_ub_bytes(t.num_experts));
        pipe_.InitBuffer(gate_buf_, row32);
        pipe_.InitBuffer(up_buf_, row32);
        if (t.w8a8 != 0) {
            scale_table_gm_.SetGlobalBuffer(reinterpret_cast<__gm__ uint64_t*>(w1_scale_table),
                                            t.num_experts);
            codes_gm_.SetGlobalBuffer(reinterpret_cast<__gm__ int8_t*>(ws_.act), pairs * inter);
            x_scale_gm_.SetGlobalBuffer(ws_.x_scale, pairs);
            act_scale_gm_.SetGlobalBuffer(ws_.act_scale, pairs);
            pipe_.InitBuffer(gate_scale_buf_, row32);
            pipe_.InitBuffer(up_scale_buf_, row32);
            pipe_.InitBuffer(raw_scale_buf_, shared::align_up(inter * 2, shared::kUbBlockBytes));
            pipe_.InitBuffer(row_scale_buf_, shared::align_up(pairs * 4, shared::kUbBlockBytes));
            q_ = init_quant_buffers(pipe_, values_buf_, scratch_buf_, work_buf_, codes16_buf_,
                                    codes_buf_, max_buf_, inter);
        } else {
            act_gm_.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(ws_.act), pairs * inter);
            pipe_.InitBuffer(silu_buf_, row32);
            pipe_.InitBuffer(out_buf_, shared::align_up(inter * static_cast<int64_t>(sizeof(T)),
                                                        shared::kUbBlockBytes));
        }
    }

    __aicore__ inline void Process() {
        const AscendC::LocalTensor<int32_t> offsets = offsets_buf_.Get<int32_t>();
        const auto [begin, end] = load_row_share(offsets, ws_, t_.num_experts);
        if (begin >= end) {
            return;
        }
        if (t_.w8a8 != 0) {
            ProcessQuantized(offsets, begin, end);
        } else {
            ProcessFloat(begin, end);
        }
    }

private:
    // Loads h1[r, 0:I] and h1[r, I:2I] (4-byte elements) into the gate and up buffers.
    template <typename U>
    __aicore__ inline void LoadHalves(int64_t r, const AscendC::LocalTensor<U>& gate,
                                      const AscendC::LocalTensor<U>& up) {
        AscendC::GlobalTensor<U> h1;
        h1.SetGlobalBuffer(reinterpret_cast<__gm__ U*>(ws_.h1),
                           t_.num_tokens * t_.top_k * t_.h1_stride);
        const int64_t inter = t_.intermediate;
        const int64_t stride = shared::ub_row_elems(inter, 4);
        copy_rows_in(gate, h1[r * t_.h1_stride + shared::gate_col(0)], 1, inter, inter, stride);
        copy_rows_in(up, h1[r * t_.h1_stride + shared::up_col(0, inter)], 1, inter, inter, stride);
        wait_pipe<AscendC::HardEvent::MTE2_V>();
    }

    // dst = silu(gate) * up in fp32: t0 = -g; t1 = exp(t0); t2 = t1 + 1; s = g / t2; s * u.
    __aicore__ inline void Swiglu(const AscendC::LocalTensor<float>& dst,
                                  const AscendC::LocalTensor<float>& gate,
                                  const AscendC::LocalTensor<float>& up, int32_t count) {
        AscendC::Muls(dst, gate, -1.0F, count);
        AscendC::PipeBarrier<PIPE_V>();
        AscendC::Exp(dst, dst, count);
        AscendC::PipeBarrier<PIPE_V>();
        AscendC::Adds(dst, dst, 1.0F, count);
        AscendC::PipeBarrier<PIPE_V>();
        AscendC::Div(dst, gate, dst, count);
        AscendC::PipeBarrier<PIPE_V>();
        AscendC::Mul(dst, dst, up, count);
        AscendC::PipeBarrier<PIPE_V>();
    }

    __aicore__ inline void ProcessFloat(int64_t begin, int64_t end) {
        const int64_t inter = t_.intermediate;
        const int32_t count = static_cast<int32_t>(inter);
        const AscendC::LocalTensor<float> gate = gate_buf_.Get<float>();
        const AscendC::LocalTensor<float> up = up_buf_.Get<float>();
        const AscendC::LocalTensor<float> silu = silu_buf_.Get<float>();
        const AscendC::LocalTensor<T> out = out_buf_.Get<T>();
        for (int64_t r = begin; r < end; ++r) {
            if (r > begin) {
                wait_pipe<AscendC::HardEvent::V_MTE2>();  // the last row's vector reads are done
            }
            LoadHalves(r, gate, up);
            Swiglu(silu, gate, up, count);
            if (r > begin) {
                wait_pipe<AscendC::HardEvent::MTE3_V>();  // the last output row left for GM
            }
            AscendC::Cast(out, silu, AscendC::RoundMode::CAST_RINT, count);
            wait_pipe<AscendC::HardEvent::V_MTE3>();
            copy_rows_out(act_gm_[r * inter], out, 1, inter, inter,
                          shared::ub_row_elems(inter, sizeof(T)));
        }
    }

    __aicore__ inline void ProcessQuantized(const AscendC::LocalTensor<int32_t>& offsets,
                                            int64_t begin, int64_t end) {
        const int64_t inter = t_.intermediate;
        const int32_t count = static_cast<int32_t>(inter);
        const AscendC::LocalTensor<int32_t> gate = gate_buf_.Get<int32_t>();
        const AscendC::LocalTensor<int32_t> up = up_buf_.Get<int32_t>();
        const AscendC::LocalTensor<float> gate_scale = gate_scale_buf_.Get<float>();
        const AscendC::LocalTensor<float> up_scale = up_scale_buf_.Get<float>();
        const AscendC::LocalTensor<half> raw = raw_scale_buf_.Get<half>();
        // x_scale of the share, overwritten in place by act_scale (entry i read, then written).
        const AscendC::LocalTensor<float> row_scale = row_scale_buf_.Get<float>();
        const int64_t share = end - begin;
        copy_rows_in(row_scale, x_scale_gm_[begin], 1, share, share,
                     shared::ub_row_elems(share, 4));
        wait_pipe<AscendC::HardEvent::MTE2_S>();
        flush_gm_lines(scale_table_gm_, t_.num_experts * 8);
        int64_t expert = 0;
        int64_t loaded = -1;  // expert whose w1_scale is in UB
        for (int64_t r = begin; r < end; ++r) {
            while (offsets.GetValue(expert + 1) <= r) {
                ++expert;
            }
            if (r > begin) {
                wait_pipe<AscendC::HardEvent::V_MTE2>();  // the last row's vector reads are done
            }
            if (expert != loaded) {
                load_scales_f32(gate_scale, raw, scale_table_gm_, expert, shared::gate_col(0),
                                inter, t_.w1_scale_dtype);
                wait_pipe<AscendC::HardEvent::V_MTE2>();  // the widening Cast read `raw`
                load_scales_f32(up_scale, raw, scale_table_gm_, expert, shared::up_col(0, inter),
                                inter, t_.w1_scale_dtype);
                loaded = expert;
            }
            LoadHalves(r, gate, up);
            const float x_scale = row_scale.GetValue(r - begin);
            Dequantize(q_.scratch, gate, gate_scale, x_scale, count);
            Dequantize(q_.work, up, up_scale, x_scale, count);
            if (r > begin) {
                wait_pipe<AscendC::HardEvent::MTE3_V>();  // the last codes left for GM
            }
            Swiglu(q_.values, q_.scratch, q_.work, count);
            const float act_scale = quantize_row_int8(q_, count);
            wait_pipe<AscendC::HardEvent::V_MTE3>();
            copy_rows_out(codes_gm_[r * inter], q_.codes, 1, inter, inter,
                          shared::ub_row_elems(inter, 1));
            row_scale.SetValue(r - begin, act_scale);
        }
        wait_pipe<AscendC::HardEvent::S_MTE3>();
        copy_rows_out(act_scale_gm_[begin], row_scale, 1, share, share,
                      shared::ub_row_elems(share, 4));
    }

    // dst = (f32(acc) * scale) * row_scale, f32 rounding to nearest even.
    __aicore__ inline void Dequantize(const AscendC::LocalTensor<float>& dst,
                                      const AscendC::LocalTensor<int32_t>& acc,
                                      const AscendC::LocalTensor<float>& scale, float row_scale,
                                      int32_t count) {
        AscendC::Cast(dst, acc, AscendC::RoundMode::CAST_RINT, count);
        AscendC::PipeBarrier<PIPE_V>();
        AscendC::Mul(dst, dst, scale, count);
        AscendC::PipeBarrier<PIPE_V>();
        AscendC::Muls(dst, dst, row_scale, count);
        AscendC::PipeBarrier<PIPE_V>();
    }

    AscendC::TPipe pipe_;
    AscendC::TBuf<AscendC::TPosition::VECCALC> offsets_buf_, gate_buf_, up_buf_, silu_buf_,
        out_buf_, gate_scale_buf_, up_scale_buf_, raw_scale_buf_, row_scale_buf_, values_buf_,
        scratch_buf_, work_buf_, codes16_buf_, codes_buf_, max_buf_;
    AscendC::GlobalTensor<float> x_scale_gm_, act_scale_gm_;
    AscendC::GlobalTensor<T> act_gm_;
    AscendC::GlobalTensor<int8_t> codes_gm_;
    AscendC::GlobalTensor<uint64_t> scale_table_gm_;
    QuantBuffers q_;
    FusedMoeTilingData t_;
    Workspace ws_;
};

}  // namespace eplb_native::kernels

extern "C" __global__ __aicore__ void moe_swiglu(GM_ADDR w1_scale_table, GM_ADDR workspace,
                                                 GM_ADDR tiling) {
    KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);
    eplb_native::kernels::FusedMoeTilingData t;
    eplb_native::kernels::load_tiling(tiling, t);
    if (eplb_native::kernels::is_bf16(t.act_dtype)) {
        eplb_native::kernels::MoeSwiglu<bfloat16_t> op;
        op.Init(w1_scale_table, workspace, t);
        op.Process();
    } else {
        eplb_native::kernels::MoeSwiglu<half> op;
        op.Init(w1_scale_table, workspace, t);
        op.Process();
    }
}
