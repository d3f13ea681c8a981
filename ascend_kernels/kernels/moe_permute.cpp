// moe_permute (AIV, multi-core): gathers the activation rows into expert order,
// x_perm[r, :] = x[row_token[r], :] for r < R (design §7.2 step 3). Block b copies the rows
// [R*b/B, R*(b+1)/B); each row moves GM -> UB -> GM in chunks of row_chunk elements through a
// double-buffered VECIN/VECOUT queue, so the load of one chunk overlaps the store of the last.

#include "moe_kernel_common.h"

namespace eplb_native::kernels {

template <typename T>
class MoePermute {
public:
    __aicore__ inline void Init(GM_ADDR x, GM_ADDR workspace, const FusedMoeTilingData& t) {
        t_ = t;
        ws_ = carve_workspace(workspace, t);
        const int64_t pairs = t.num_tokens * t.top_k;
        x_gm_.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(x), t.num_tokens * t.hidden);
        x_perm_gm_.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(ws_.x_perm), pairs * t.hidden);
        row_token_gm_.SetGlobalBuffer(ws_.row_token, pairs);
        pipe_.InitBuffer(offsets_buf_, shared::offsets_ub_bytes(t.num_experts));
        pipe_.InitBuffer(row_token_buf_, shared::align_up(pairs * 4, shared::kUbBlockBytes));
        pipe_.InitBuffer(queue_, 2,
                         shared::align_up(t.row_chunk * static_cast<int64_t>(sizeof(T)),
                                          shared::kUbBlockBytes));
    }

    __aicore__ inline void Process() {
        AscendC::LocalTensor<int32_t> offsets = offsets_buf_.Get<int32_t>();
        const int64_t rows = load_offsets(offsets, ws_.offsets, t_.num_experts);
        const int64_t blocks = AscendC::GetBlockNum();
        const int64_t block = AscendC::GetBlockIdx();
        const int64_t begin = shared::block_begin(rows, blocks, block);
        const int64_t end = shared::block_begin(rows, blocks, block + 1);
        if (begin >= end) {
            return;
        }
        AscendC::LocalTensor<int32_t> row_token = row_token_buf_.Get<int32_t>();
        copy_rows_in(row_token, row_token_gm_[begin], 1, end - begin, end - begin,
                     shared::align_up((end - begin) * 4, 32) / 4);
        wait_pipe<AscendC::HardEvent::MTE2_S>();
        const int64_t hidden = t_.hidden;
        for (int64_t row = begin; row < end; ++row) {
            const int64_t token = row_token.GetValue(row - begin);
            for (int64_t col = 0; col < hidden; col += t_.row_chunk) {
                const int64_t cols = hidden - col < t_.row_chunk ? hidden - col : t_.row_chunk;
                AscendC::LocalTensor<T> chunk = queue_.template AllocTensor<T>();
                copy_rows_in(chunk, x_gm_[token * hidden + col], 1, cols, cols, t_.row_chunk);
                queue_.EnQue(chunk);
                chunk = queue_.template DeQue<T>();
                copy_rows_out(x_perm_gm_[row * hidden + col], chunk, 1, cols, cols, t_.row_chunk);
                queue_.FreeTensor(chunk);
            }
        }
    }

private:
    AscendC::TPipe pipe_;
    AscendC::TBuf<AscendC::TPosition::VECCALC> offsets_buf_, row_token_buf_;
    AscendC::TQueBind<AscendC::TPosition::VECIN, AscendC::TPosition::VECOUT, 2> queue_;
    AscendC::GlobalTensor<T> x_gm_, x_perm_gm_;
    AscendC::GlobalTensor<int32_t> row_token_gm_;
    FusedMoeTilingData t_;
    Workspace ws_;
};

}  // namespace eplb_native::kernels

extern "C" __global__ __aicore__ void moe_permute(GM_ADDR x, GM_ADDR workspace, GM_ADDR tiling) {
    KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);
    eplb_native::kernels::FusedMoeTilingData t;
    eplb_native::kernels::load_tiling(tiling, t);
    if (t.act_dtype == static_cast<int32_t>(eplb_native::shared::DType::kBFloat16)) {
        eplb_native::kernels::MoePermute<bfloat16_t> op;
        op.Init(x, workspace, t);
        op.Process();
    } else {
        eplb_native::kernels::MoePermute<half> op;
        op.Init(x, workspace, t);
        op.Process();
    }
}
