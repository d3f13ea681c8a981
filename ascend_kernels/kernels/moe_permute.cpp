// moe_permute (AIV, multi-core): gathers the activation rows into expert order,
// x_rows[r, :] = x[row_token[r], :] for r < R. Block b handles the rows [R*b/B, R*(b+1)/B).
// bf16/fp16 weights: each row moves GM -> UB -> GM in chunks of row_chunk elements through a
// double-buffered VECIN/VECOUT queue, so the load of one chunk overlaps the store of the last.
// W8A8: each row is widened to fp32 and quantised to int8 (quantize_row_int8); the codes go to
// x_rows and the dequantisation scales of the block's rows to x_scale in one copy at the end.

#include "moe_kernel_common.h"

namespace eplb_native::kernels {

template <typename T>
class MoePermute {
public:
    __aicore__ inline void Init(GM_ADDR x, GM_ADDR workspace, const FusedMoeTilingData& t) {
        t_ = t;
        ws_ = carve_workspace(workspace, t);
        pairs_ = t.num_tokens * t.top_k;
        x_gm_.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(x), t.num_tokens * t.hidden);
        // Exactly the buffers counted by shared::permute_ub_bytes.
        pipe_.InitBuffer(offsets_buf_, shared::offsets_ub_bytes(t.num_experts));
        pipe_.InitBuffer(row_token_buf_, shared::align_up(pairs_ * 4, shared::kUbBlockBytes));
        if (t.w8a8 != 0) {
            codes_gm_.SetGlobalBuffer(reinterpret_cast<__gm__ int8_t*>(ws_.x_rows),
                                      pairs_ * t.hidden);
            scales_gm_.SetGlobalBuffer(ws_.x_scale, pairs_);
            pipe_.InitBuffer(row_buf_, shared::align_up(t.hidden * static_cast<int64_t>(sizeof(T)),
                                                        shared::kUbBlockBytes));
            q_ = init_quant_buffers(pipe_, values_buf_, scratch_buf_, work_buf_, codes16_buf_,
                                    codes_buf_, max_buf_, t.hidden);
        } else {
            x_rows_gm_.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(ws_.x_rows), pairs_ * t.hidden);
            pipe_.InitBuffer(queue_, 2,
                             shared::align_up(t.row_chunk * static_cast<int64_t>(sizeof(T)),
                                              shared::kUbBlockBytes));
        }
    }

    __aicore__ inline void Process() {
        const auto [begin, end] = load_row_share(offsets_buf_.Get<int32_t>(), ws_, t_.num_experts);
        if (begin >= end) {
            return;
        }
        // The source token of each row of the share: row_token[0, end - begin).
        AscendC::GlobalTensor<int32_t> row_token_gm;
        row_token_gm.SetGlobalBuffer(ws_.row_token, pairs_);
        const AscendC::LocalTensor<int32_t> row_token = row_token_buf_.Get<int32_t>();
        copy_rows_in(row_token, row_token_gm[begin], 1, end - begin, end - begin,
                     shared::ub_row_elems(end - begin, 4));
        wait_pipe<AscendC::HardEvent::MTE2_S>();
        if (t_.w8a8 != 0) {
            QuantizeRows(row_token, begin, end);
        } else {
            CopyRows(row_token, begin, end);
        }
    }

private:
    __aicore__ inline void CopyRows(const AscendC::LocalTensor<int32_t>& row_token, int64_t begin,
                                    int64_t end) {
        const int64_t hidden = t_.hidden;
        for (int64_t row = begin; row < end; ++row) {
            const int64_t token = row_token.GetValue(row - begin);
            for (int64_t col = 0; col < hidden; col += t_.row_chunk) {
                const int64_t cols = hidden - col < t_.row_chunk ? hidden - col : t_.row_chunk;
                AscendC::LocalTensor<T> chunk = queue_.template AllocTensor<T>();
                copy_rows_in(chunk, x_gm_[token * hidden + col], 1, cols, cols, t_.row_chunk);
                queue_.EnQue(chunk);
                chunk = queue_.template DeQue<T>();
                copy_rows_out(x_rows_gm_[row * hidden + col], chunk, 1, cols, cols, t_.row_chunk);
                queue_.FreeTensor(chunk);
            }
        }
    }

    __aicore__ inline void QuantizeRows(const AscendC::LocalTensor<int32_t>& row_token,
                                        int64_t begin, int64_t end) {
        const int64_t hidden = t_.hidden;
        const int32_t count = static_cast<int32_t>(hidden);
        const AscendC::LocalTensor<T> row = row_buf_.Get<T>();
        // The share's scales overwrite its tokens in place: entry i is read before it is written.
        const AscendC::LocalTensor<float> scales = row_token.ReinterpretCast<float>();
        for (int64_t r = begin; r < end; ++r) {
            const int64_t token = row_token.GetValue(r - begin);
            if (r > begin) {
                wait_pipe<AscendC::HardEvent::V_MTE2>();  // the last Cast read `row`
                wait_pipe<AscendC::HardEvent::MTE3_V>();  // the last codes left for GM
            }
            copy_rows_in(row, x_gm_[token * hidden], 1, hidden, hidden,
                         shared::ub_row_elems(hidden, sizeof(T)));
            wait_pipe<AscendC::HardEvent::MTE2_V>();
            AscendC::Cast(q_.values, row, AscendC::RoundMode::CAST_NONE, count);
            AscendC::PipeBarrier<PIPE_V>();
            const float scale = quantize_row_int8(q_, count);
            wait_pipe<AscendC::HardEvent::V_MTE3>();
            copy_rows_out(codes_gm_[r * hidden], q_.codes, 1, hidden, hidden,
                          shared::ub_row_elems(hidden, 1));
            scales.SetValue(r - begin, scale);
        }
        wait_pipe<AscendC::HardEvent::S_MTE3>();
        copy_rows_out(scales_gm_[begin], scales, 1, end - begin, end - begin,
                      shared::ub_row_elems(end - begin, 4));
    }

    AscendC::TPipe pipe_;
    AscendC::TBuf<AscendC::TPosition::VECCALC> offsets_buf_, row_token_buf_, row_buf_, values_buf_,
        scratch_buf_, work_buf_, codes16_buf_, codes_buf_, max_buf_;
    AscendC::TQueBind<AscendC::TPosition::VECIN, AscendC::TPosition::VECOUT, 2> queue_;
    AscendC::GlobalTensor<T> x_gm_, x_rows_gm_;
    AscendC::GlobalTensor<int8_t> codes_gm_;
    AscendC::GlobalTensor<float> scales_gm_;
    QuantBuffers q_;
    FusedMoeTilingData t_;
    Workspace ws_;
    int64_t pairs_ = 0;
};

}  // namespace eplb_native::kernels

extern "C" __global__ __aicore__ void moe_permute(GM_ADDR x, GM_ADDR workspace, GM_ADDR tiling) {
    KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);
    eplb_native::kernels::FusedMoeTilingData t;
    eplb_native::kernels::load_tiling(tiling, t);
    if (eplb_native::kernels::is_bf16(t.act_dtype)) {
        eplb_native::kernels::MoePermute<bfloat16_t> op;
        op.Init(x, workspace, t);
        op.Process();
    } else {
        eplb_native::kernels::MoePermute<half> op;
        op.Init(x, workspace, t);
        op.Process();
    }
}
