// moe_combine (AIV, multi-core): rounds the GEMM2 accumulators and takes the weighted top-k sum
// of each token. For token t and each column n:
//     acc = 0; for k ascending with row = row_of[t, k] >= 0:
//         y = round(h2[row, n])                                         (bf16/fp16 weights)
//         y = round((f32(h2[row, n]) * w2_scale[e][n]) * act_scale[row])   (W8A8, e = ids[t, k])
//         acc = acc + scale[t, k] * f32(y)          (Muls then Add: two roundings, no FMA)
//     out[t, n] = round(acc)
// round = Cast CAST_RINT to the activation dtype (the reference's y and out rounding points),
// f32 of an int32 = Cast CAST_RINT. Masked tokens and tokens with no routed k keep acc = 0 and
// get zeros. Block b handles the tokens [BS*b/B, BS*(b+1)/B); columns move in chunks of
// row_chunk elements.

#include "moe_kernel_common.h"

namespace eplb_native::kernels {

template <typename T>
class MoeCombine {
public:
    __aicore__ inline void Init(GM_ADDR expert_ids, GM_ADDR expert_scales, GM_ADDR w2_scale_table,
                                GM_ADDR out, GM_ADDR workspace, const FusedMoeTilingData& t) {
        t_ = t;
        const Workspace ws = carve_workspace(workspace, t);
        const int64_t pairs = t.num_tokens * t.top_k;
        ids_gm_.SetGlobalBuffer(reinterpret_cast<__gm__ int32_t*>(expert_ids), pairs);
        scales_gm_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(expert_scales), pairs);
        row_of_gm_.SetGlobalBuffer(ws.row_of, pairs);
        h2_gm_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(ws.h2), pairs * t.h2_stride);
        out_gm_.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(out), t.num_tokens * t.hidden);
        // Exactly the buffers counted by shared::combine_ub_bytes.
        const int64_t k_bytes = shared::align_up(t.top_k * 4, shared::kUbBlockBytes);
        const int64_t chunk32 = shared::align_up(t.row_chunk * 4, shared::kUbBlockBytes);
        const int64_t chunk_t = shared::align_up(t.row_chunk * static_cast<int64_t>(sizeof(T)),
                                                 shared::kUbBlockBytes);
        pipe_.InitBuffer(row_of_buf_, k_bytes);
        pipe_.InitBuffer(scales_buf_, k_bytes);
        pipe_.InitBuffer(ids_buf_, k_bytes);
        pipe_.InitBuffer(h2_queue_, 2, chunk32);
        pipe_.InitBuffer(y32_buf_, chunk32);
        pipe_.InitBuffer(acc_buf_, chunk32);
        pipe_.InitBuffer(rounded_buf_, chunk_t);
        pipe_.InitBuffer(out_queue_, 1, chunk_t);
        if (t.w8a8 != 0) {
            scale_table_gm_.SetGlobalBuffer(reinterpret_cast<__gm__ uint64_t*>(w2_scale_table),
                                            t.num_experts);
            act_scale_gm_.SetGlobalBuffer(ws.act_scale, pairs);
            pipe_.InitBuffer(w2_scale_buf_, chunk32);
            pipe_.InitBuffer(raw_scale_buf_,
                             shared::align_up(t.row_chunk * 2, shared::kUbBlockBytes));
            pipe_.InitBuffer(act_scale_buf_, shared::align_up(pairs * 4, shared::kUbBlockBytes));
        }
    }

    __aicore__ inline void Process() {
        const int64_t blocks = AscendC::GetBlockNum();
        const int64_t block = AscendC::GetBlockIdx();
        const int64_t begin = shared::block_begin(t_.num_tokens, blocks, block);
        const int64_t end = shared::block_begin(t_.num_tokens, blocks, block + 1);
        if (begin >= end) {
            return;
        }
        if (t_.w8a8 != 0) {
            const int64_t pairs = t_.num_tokens * t_.top_k;
            copy_rows_in(act_scale_buf_.Get<float>(), act_scale_gm_, 1, pairs, pairs,
                         shared::ub_row_elems(pairs, 4));
            flush_gm_lines(scale_table_gm_, t_.num_experts * 8);
        }
        for (int64_t token = begin; token < end; ++token) {
            CombineToken(token);
        }
    }

private:
    __aicore__ inline void CombineToken(int64_t token) {
        const int64_t top_k = t_.top_k;
        const int64_t hidden = t_.hidden;
        const AscendC::LocalTensor<int32_t> row_of = row_of_buf_.Get<int32_t>();
        const AscendC::LocalTensor<float> scales = scales_buf_.Get<float>();
        const AscendC::LocalTensor<int32_t> ids = ids_buf_.Get<int32_t>();
        const int64_t k_stride = shared::ub_row_elems(top_k, 4);
        // The previous token's scalar reads are done (the scalar unit issues in order).
        copy_rows_in(row_of, row_of_gm_[token * top_k], 1, top_k, top_k, k_stride);
        copy_rows_in(scales, scales_gm_[token * top_k], 1, top_k, top_k, k_stride);
        if (t_.w8a8 != 0) {
            copy_rows_in(ids, ids_gm_[token * top_k], 1, top_k, top_k, k_stride);
        }
        wait_pipe<AscendC::HardEvent::MTE2_S>();

        const AscendC::LocalTensor<float> acc = acc_buf_.Get<float>();
        const AscendC::LocalTensor<float> y32 = y32_buf_.Get<float>();
        const AscendC::LocalTensor<T> rounded = rounded_buf_.Get<T>();
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
                AscendC::LocalTensor<float> h = h2_queue_.template AllocTensor<float>();
                copy_rows_in(h, h2_gm_[row * t_.h2_stride + col], 1, cols, cols, t_.row_chunk);
                h2_queue_.EnQue(h);
                h = h2_queue_.template DeQue<float>();
                if (t_.w8a8 != 0) {
                    Dequantize(y32, h.ReinterpretCast<int32_t>(), ids.GetValue(k), row, col, count);
                    AscendC::Cast(rounded, y32, AscendC::RoundMode::CAST_RINT, count);
                } else {
                    AscendC::Cast(rounded, h, AscendC::RoundMode::CAST_RINT, count);
                }
                AscendC::PipeBarrier<PIPE_V>();
                h2_queue_.FreeTensor(h);
                AscendC::Cast(y32, rounded, AscendC::RoundMode::CAST_NONE, count);
                AscendC::PipeBarrier<PIPE_V>();
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

    // y32 = (f32(acc) * w2_scale[expert][col, col + count)) * act_scale[row].
    __aicore__ inline void Dequantize(const AscendC::LocalTensor<float>& y32,
                                      const AscendC::LocalTensor<int32_t>& acc, int64_t expert,
                                      int64_t row, int64_t col, int32_t count) {
        const AscendC::LocalTensor<float> w2_scale = w2_scale_buf_.Get<float>();
        wait_pipe<AscendC::HardEvent::V_MTE2>();  // the last Mul read the scale buffers
        load_scales_f32(w2_scale, raw_scale_buf_.Get<half>(), scale_table_gm_, expert, col, count,
                        t_.w2_scale_dtype);
        AscendC::Cast(y32, acc, AscendC::RoundMode::CAST_RINT, count);
        AscendC::PipeBarrier<PIPE_V>();
        AscendC::Mul(y32, y32, w2_scale, count);
        AscendC::PipeBarrier<PIPE_V>();
        // act_scale was copied in before the token's MTE2 -> S hand-over.
        AscendC::Muls(y32, y32, act_scale_buf_.Get<float>().GetValue(row), count);
        AscendC::PipeBarrier<PIPE_V>();
    }

    AscendC::TPipe pipe_;
    AscendC::TBuf<AscendC::TPosition::VECCALC> row_of_buf_, scales_buf_, ids_buf_, y32_buf_,
        acc_buf_, rounded_buf_, w2_scale_buf_, raw_scale_buf_, act_scale_buf_;
    AscendC::TQue<AscendC::TPosition::VECIN, 2> h2_queue_;
    AscendC::TQue<AscendC::TPosition::VECOUT, 1> out_queue_;
    AscendC::GlobalTensor<int32_t> ids_gm_, row_of_gm_;
    AscendC::GlobalTensor<float> scales_gm_, h2_gm_, act_scale_gm_;
    AscendC::GlobalTensor<uint64_t> scale_table_gm_;
    AscendC::GlobalTensor<T> out_gm_;
    FusedMoeTilingData t_;
};

}  // namespace eplb_native::kernels

extern "C" __global__ __aicore__ void moe_combine(GM_ADDR expert_ids, GM_ADDR expert_scales,
                                                  GM_ADDR w2_scale_table, GM_ADDR out,
                                                  GM_ADDR workspace, GM_ADDR tiling) {
    KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);
    eplb_native::kernels::FusedMoeTilingData t;
    eplb_native::kernels::load_tiling(tiling, t);
    if (eplb_native::kernels::is_bf16(t.act_dtype)) {
        eplb_native::kernels::MoeCombine<bfloat16_t> op;
        op.Init(expert_ids, expert_scales, w2_scale_table, out, workspace, t);
        op.Process();
    } else {
        eplb_native::kernels::MoeCombine<half> op;
        op.Init(expert_ids, expert_scales, w2_scale_table, out, workspace, t);
        op.Process();
    }
}
