// moe_combine (AIV, multi-core): weighted top-k reduction of fused_moe_decode (design §7.2
// step 7). For token t and each column:
//     acc = 0; for k ascending with row_of[t, k] >= 0: acc = acc + scale[t, k] * f32(y[row, n])
// as Muls then Add (two roundings, no fused multiply-add), then out[t, n] = round(acc) (RINT).
// Masked tokens and tokens with no routed k keep acc = 0 and get zeros. Block b handles the
// tokens [BS*b/B, BS*(b+1)/B); columns move in chunks of row_chunk elements.

#include "moe_kernel_common.h"

namespace eplb_native::kernels {

template <typename T>
class MoeCombine {
public:
    __aicore__ inline void Init(GM_ADDR expert_scales, GM_ADDR out, GM_ADDR workspace,
                                const FusedMoeTilingData& t) {
        t_ = t;
        const Workspace ws = carve_workspace(workspace, t);
        const int64_t pairs = t.num_tokens * t.top_k;
        scales_gm_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(expert_scales), pairs);
        row_of_gm_.SetGlobalBuffer(ws.row_of, pairs);
        y_gm_.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(ws.y), pairs * t.hidden);
        out_gm_.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(out), t.num_tokens * t.hidden);
        // Exactly the buffers counted by shared::combine_ub_bytes.
        const int64_t k_bytes = shared::align_up(t.top_k * 4, shared::kUbBlockBytes);
        const int64_t chunk_bytes = shared::align_up(
            t.row_chunk * static_cast<int64_t>(sizeof(T)), shared::kUbBlockBytes);
        pipe_.InitBuffer(row_of_buf_, k_bytes);
        pipe_.InitBuffer(scales_buf_, k_bytes);
        pipe_.InitBuffer(y_queue_, 2, chunk_bytes);
        pipe_.InitBuffer(out_queue_, 1, chunk_bytes);
        pipe_.InitBuffer(y_f32_buf_, t.row_chunk * 4);
        pipe_.InitBuffer(acc_buf_, t.row_chunk * 4);
    }

    __aicore__ inline void Process() {
        const int64_t blocks = AscendC::GetBlockNum();
        const int64_t block = AscendC::GetBlockIdx();
        const int64_t begin = shared::block_begin(t_.num_tokens, blocks, block);
        const int64_t end = shared::block_begin(t_.num_tokens, blocks, block + 1);
        for (int64_t token = begin; token < end; ++token) {
            CombineToken(token);
        }
    }

private:
    __aicore__ inline void CombineToken(int64_t token) {
        const int64_t top_k = t_.top_k;
        const int64_t hidden = t_.hidden;
        AscendC::LocalTensor<int32_t> row_of = row_of_buf_.Get<int32_t>();
        AscendC::LocalTensor<float> scales = scales_buf_.Get<float>();
        const int64_t k_stride = shared::align_up(top_k * 4, 32) / 4;
        // The previous token's scalar reads are done (the scalar unit issues in order).
        copy_rows_in(row_of, row_of_gm_[token * top_k], 1, top_k, top_k, k_stride);
        copy_rows_in(scales, scales_gm_[token * top_k], 1, top_k, top_k, k_stride);
        wait_pipe<AscendC::HardEvent::MTE2_S>();

        AscendC::LocalTensor<float> acc = acc_buf_.Get<float>();
        AscendC::LocalTensor<float> y32 = y_f32_buf_.Get<float>();
        for (int64_t col = 0; col < hidden; col += t_.row_chunk) {
            const int64_t cols = hidden - col < t_.row_chunk ? hidden - col : t_.row_chunk;
            const int32_t count = static_cast<int32_t>(cols);
            AscendC::Duplicate(acc, 0.0F, count);
            AscendC::PipeBarrier<PIPE_V>();
            for (int64_t k = 0; k < top_k; ++k) {
                const int32_t row = row_of.GetValue(k);
                if (row < 0) {
                    continue;  // masked token, id outside [0, E): contributes nothing
                }
                const float scale = scales.GetValue(k);
                AscendC::LocalTensor<T> y = y_queue_.template AllocTensor<T>();
                copy_rows_in(y, y_gm_[row * hidden + col], 1, cols, cols, t_.row_chunk);
                y_queue_.EnQue(y);
                y = y_queue_.template DeQue<T>();
                AscendC::Cast(y32, y, AscendC::RoundMode::CAST_NONE, count);
                AscendC::PipeBarrier<PIPE_V>();
                y_queue_.FreeTensor(y);
                AscendC::Muls(y32, y32, scale, count);
                AscendC::PipeBarrier<PIPE_V>();
                AscendC::Add(acc, acc, y32, count);
                AscendC::PipeBarrier<PIPE_V>();
            }
            AscendC::LocalTensor<T> out = out_queue_.template AllocTensor<T>();
            AscendC::Cast(out, acc, AscendC::RoundMode::CAST_RINT, count);
            AscendC::PipeBarrier<PIPE_V>();  // acc is cleared again for the next chunk
            out_queue_.EnQue(out);
            out = out_queue_.template DeQue<T>();
            copy_rows_out(out_gm_[token * hidden + col], out, 1, cols, cols, t_.row_chunk);
            out_queue_.FreeTensor(out);
        }
    }

    AscendC::TPipe pipe_;
    AscendC::TBuf<AscendC::TPosition::VECCALC> row_of_buf_, scales_buf_, y_f32_buf_, acc_buf_;
    AscendC::TQue<AscendC::TPosition::VECIN, 2> y_queue_;
    AscendC::TQue<AscendC::TPosition::VECOUT, 1> out_queue_;
    AscendC::GlobalTensor<float> scales_gm_;
    AscendC::GlobalTensor<int32_t> row_of_gm_;
    AscendC::GlobalTensor<T> y_gm_, out_gm_;
    FusedMoeTilingData t_;
};

}  // namespace eplb_native::kernels

extern "C" __global__ __aicore__ void moe_combine(GM_ADDR expert_scales, GM_ADDR out,
                                                  GM_ADDR workspace, GM_ADDR tiling) {
    KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);
    eplb_native::kernels::FusedMoeTilingData t;
    eplb_native::kernels::load_tiling(tiling, t);
    if (t.act_dtype == static_cast<int32_t>(eplb_native::shared::DType::kBFloat16)) {
        eplb_native::kernels::MoeCombine<bfloat16_t> op;
        op.Init(expert_scales, out, workspace, t);
        op.Process();
    } else {
        eplb_native::kernels::MoeCombine<half> op;
        op.Init(expert_scales, out, workspace, t);
        op.Process();
    }
}
