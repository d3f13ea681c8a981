#pragma once
// Grouped GEMM on the vector cores (tiling key kVectorGemm, design §7.4 v1), shared by GEMM1
// (w1 + SwiGLU) and GEMM2 (w2). Decode puts few rows on each expert, so the product is computed
// GEMV-style: for a tile of tile_rows rows of one expert x tile_cols output columns, walk the
// reduction dimension d in ascending order and, for each row r,
//     acc[r, :] = acc[r, :] + a[r, d] * w[d, :]      (Muls, then Add: no fused multiply-add)
// in fp32. That is the reference's summation order exactly (one fp32 accumulator per output
// element, ascending d); bf16 x bf16 and fp16 x fp16 products are exact in fp32.
//
// Tiles are enumerated expert by expert, column tile by column tile, row tile by row tile (the
// reference's order);
// block b takes tiles g with g mod B == b. Experts with no rows are skipped, so their weight
// pointer is never read (it may belong to a 0-sized tensor; a null address with rows computes
// with zero weights). Per expert, the weight base address
// comes from a device pointer table (uint64 [E], built from the tensor list by the host).
//
// kHalves = 2 (GEMM1): each tile accumulates the gate columns [j0, j0+cols) and the up columns
// [I+j0, I+j0+cols) of w1 = [H, 2I], and the epilogue applies SwiGLU. kHalves = 1 (GEMM2): w2 =
// [I, H], the epilogue only rounds.

#include "moe_kernel_common.h"

namespace eplb_native::kernels {

template <typename T, int32_t kHalves>
class VectorGroupedGemm {
public:
    // rows_in: activation rows [R, reduce]; rows_out: [R, out_cols]; weight e is
    // [reduce, kHalves * out_cols] row-major at weight_table[e].
    __aicore__ inline void Init(GM_ADDR weight_table, __gm__ uint8_t* rows_in,
                                __gm__ uint8_t* rows_out, __gm__ int32_t* offsets,
                                const FusedMoeTilingData& t, int64_t reduce, int64_t out_cols,
                                int64_t reduce_chunk) {
        t_ = t;
        offsets_ = offsets;
        reduce_ = reduce;
        out_cols_ = out_cols;
        chunk_ = reduce_chunk;
        tile_rows_ = t.tile_rows;
        tile_cols_ = t.tile_cols;
        ub_cols_ = shared::ub_row_elems(tile_cols_, sizeof(T));
        const int64_t pairs = t.num_tokens * t.top_k;
        table_gm_.SetGlobalBuffer(reinterpret_cast<__gm__ uint64_t*>(weight_table),
                                  t.num_experts);
        in_gm_.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(rows_in), pairs * reduce);
        out_gm_.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(rows_out), pairs * out_cols);

        // Exactly the buffers counted by shared::gemm_ub_bytes.
        const int64_t elem = sizeof(T);
        pipe_.InitBuffer(offsets_buf_, shared::offsets_ub_bytes(t.num_experts));
        pipe_.InitBuffer(weight_queue_, 2, kHalves * chunk_ * ub_cols_ * elem);
        pipe_.InitBuffer(weight_f32_buf_, kHalves * chunk_ * ub_cols_ * 4);
        pipe_.InitBuffer(rows_queue_, 1, tile_rows_ * chunk_ * elem);
        pipe_.InitBuffer(rows_f32_buf_, tile_rows_ * chunk_ * 4);
        pipe_.InitBuffer(acc_buf_, kHalves * tile_rows_ * tile_cols_ * 4);
        pipe_.InitBuffer(product_buf_, tile_cols_ * 4);
        pipe_.InitBuffer(scratch_buf_, tile_rows_ * tile_cols_ * 4);
        pipe_.InitBuffer(out_queue_, 1, tile_rows_ * ub_cols_ * elem);
    }

    __aicore__ inline void Process() {
        AscendC::LocalTensor<int32_t> offsets = offsets_buf_.Get<int32_t>();
        (void)load_offsets(offsets, offsets_, t_.num_experts);
        const int64_t blocks = AscendC::GetBlockNum();
        const int64_t block = AscendC::GetBlockIdx();
        flush_gm_lines(table_gm_, t_.num_experts * 8);
        int64_t first = 0;  // global index of this expert's first tile
        for (int64_t e = 0; e < t_.num_experts; ++e) {
            const int64_t row0 = offsets.GetValue(e);
            const int64_t rows = offsets.GetValue(e + 1) - row0;
            const int64_t tiles = shared::expert_tiles(rows, out_cols_, tile_rows_, tile_cols_);
            if (tiles == 0) {
                continue;
            }
            // First tile of this expert owned by this block.
            int64_t local = (block - first % blocks + blocks) % blocks;
            if (local < tiles) {
                const uint64_t address = table_gm_.GetValue(e);
                weight_is_null_ = address == 0;
                weight_gm_.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(address),
                                           reduce_ * kHalves * out_cols_);
            }
            const int64_t row_tiles = shared::ceil_div(rows, tile_rows_);
            for (; local < tiles; local += blocks) {
                // Column tile outer, row tile inner: the reference's task order, and
                // consecutive tiles of a block reuse the same weight columns.
                const int64_t col_tile = local / row_tiles;
                const int64_t row_tile = local % row_tiles;
                const int64_t r0 = row_tile * tile_rows_;
                const int64_t c0 = col_tile * tile_cols_;
                ComputeTile(row0 + r0, Min(tile_rows_, rows - r0), c0,
                            Min(tile_cols_, out_cols_ - c0));
            }
            first += tiles;
        }
    }

private:
    __aicore__ static inline int64_t Min(int64_t a, int64_t b) { return a < b ? a : b; }

    __aicore__ inline void ComputeTile(int64_t row0, int64_t rows, int64_t col0, int64_t cols) {
        AscendC::LocalTensor<float> acc = acc_buf_.Get<float>();
        AscendC::Duplicate(acc, 0.0F, static_cast<int32_t>(kHalves * tile_rows_ * tile_cols_));
        AscendC::PipeBarrier<PIPE_V>();
        // An empty weight tensor (address 0) of an expert that still got rows: the host cannot
        // check counts without a device sync, so compute with zero weights instead of faulting.
        for (int64_t d0 = 0; !weight_is_null_ && d0 < reduce_; d0 += chunk_) {
            const int64_t depth = Min(chunk_, reduce_ - d0);
            LoadChunk(row0, rows, col0, cols, d0, depth);
            AccumulateChunk(rows, cols, depth);
        }
        Epilogue(row0, rows, col0, cols);
    }

    // Activation rows [rows, depth] and weight rows [depth, cols] per half, into UB.
    __aicore__ inline void LoadChunk(int64_t row0, int64_t rows, int64_t col0, int64_t cols,
                                     int64_t d0, int64_t depth) {
        AscendC::LocalTensor<T> a = rows_queue_.template AllocTensor<T>();
        copy_rows_in(a, in_gm_[row0 * reduce_ + d0], rows, depth, reduce_, chunk_);
        rows_queue_.EnQue(a);
        AscendC::LocalTensor<T> w = weight_queue_.template AllocTensor<T>();
        const int64_t weight_cols = kHalves * out_cols_;
        for (int32_t half = 0; half < kHalves; ++half) {
            copy_rows_in(w[half * chunk_ * ub_cols_],
                         weight_gm_[d0 * weight_cols + half * out_cols_ + col0], depth, cols,
                         weight_cols, ub_cols_);
        }
        weight_queue_.EnQue(w);
    }

    __aicore__ inline void AccumulateChunk(int64_t rows, int64_t cols, int64_t depth) {
        AscendC::LocalTensor<float> acc = acc_buf_.Get<float>();
        AscendC::LocalTensor<float> a32 = rows_f32_buf_.Get<float>();
        AscendC::LocalTensor<float> w32 = weight_f32_buf_.Get<float>();
        AscendC::LocalTensor<float> product = product_buf_.Get<float>();

        AscendC::LocalTensor<T> a = rows_queue_.template DeQue<T>();
        AscendC::Cast(a32, a, AscendC::RoundMode::CAST_NONE,
                      static_cast<int32_t>(rows * chunk_));
        // Same row stride (ub_cols_) in both copies: one widening Cast for the whole chunk.
        AscendC::LocalTensor<T> w = weight_queue_.template DeQue<T>();
        AscendC::Cast(w32, w, AscendC::RoundMode::CAST_NONE,
                      static_cast<int32_t>(kHalves * chunk_ * ub_cols_));
        AscendC::PipeBarrier<PIPE_V>();
        rows_queue_.FreeTensor(a);
        weight_queue_.FreeTensor(w);
        // The scalar unit reads a32 below.
        wait_pipe<AscendC::HardEvent::V_S>();

        for (int64_t d = 0; d < depth; ++d) {
            for (int64_t r = 0; r < rows; ++r) {
                const float value = a32.GetValue(r * chunk_ + d);
                for (int32_t half = 0; half < kHalves; ++half) {
                    AscendC::LocalTensor<float> row_acc =
                        acc[(half * tile_rows_ + r) * tile_cols_];
                    AscendC::Muls(product, w32[(half * chunk_ + d) * ub_cols_], value,
                                  static_cast<int32_t>(cols));
                    AscendC::PipeBarrier<PIPE_V>();
                    AscendC::Add(row_acc, row_acc, product, static_cast<int32_t>(cols));
                    AscendC::PipeBarrier<PIPE_V>();
                }
            }
        }
        // a32 is rewritten by the next chunk's Cast only after these reads were issued; the
        // next chunk's V_S wait orders the scalar reads against it.
    }

    __aicore__ inline void Epilogue(int64_t row0, int64_t rows, int64_t col0, int64_t cols) {
        AscendC::LocalTensor<float> acc = acc_buf_.Get<float>();
        const int32_t count = static_cast<int32_t>(rows * tile_cols_);
        AscendC::LocalTensor<float> result = acc;
        if constexpr (kHalves == 2) {
            // SwiGLU in fp32 with the reference's operation order (design §7.2 step 5):
            // t0 = -g; t1 = exp(t0); t2 = t1 + 1; s = g / t2; a = s * u.
            AscendC::LocalTensor<float> gate = acc;
            AscendC::LocalTensor<float> up = acc[tile_rows_ * tile_cols_];
            AscendC::LocalTensor<float> s = scratch_buf_.Get<float>();
            AscendC::Muls(s, gate, -1.0F, count);
            AscendC::PipeBarrier<PIPE_V>();
            AscendC::Exp(s, s, count);
            AscendC::PipeBarrier<PIPE_V>();
            AscendC::Adds(s, s, 1.0F, count);
            AscendC::PipeBarrier<PIPE_V>();
            AscendC::Div(s, gate, s, count);
            AscendC::PipeBarrier<PIPE_V>();
            AscendC::Mul(s, s, up, count);
            AscendC::PipeBarrier<PIPE_V>();
            result = s;
        }
        // Round to the activation dtype: nearest, ties to even.
        AscendC::LocalTensor<T> out = out_queue_.template AllocTensor<T>();
        for (int64_t r = 0; r < rows; ++r) {
            AscendC::Cast(out[r * ub_cols_], result[r * tile_cols_], AscendC::RoundMode::CAST_RINT,
                          static_cast<int32_t>(cols));
        }
        out_queue_.EnQue(out);
        out = out_queue_.template DeQue<T>();
        copy_rows_out(out_gm_[row0 * out_cols_ + col0], out, rows, cols, out_cols_, ub_cols_);
        out_queue_.FreeTensor(out);
    }

    AscendC::TPipe pipe_;
    AscendC::TBuf<AscendC::TPosition::VECCALC> offsets_buf_, weight_f32_buf_, rows_f32_buf_,
        acc_buf_, product_buf_, scratch_buf_;
    AscendC::TQue<AscendC::TPosition::VECIN, 2> weight_queue_;
    AscendC::TQue<AscendC::TPosition::VECIN, 1> rows_queue_;
    AscendC::TQue<AscendC::TPosition::VECOUT, 1> out_queue_;
    AscendC::GlobalTensor<uint64_t> table_gm_;
    AscendC::GlobalTensor<T> in_gm_, out_gm_, weight_gm_;
    __gm__ int32_t* offsets_ = nullptr;
    bool weight_is_null_ = false;
    FusedMoeTilingData t_;
    int64_t reduce_ = 0, out_cols_ = 0, chunk_ = 0, tile_rows_ = 0, tile_cols_ = 0, ub_cols_ = 0;
};

}  // namespace eplb_native::kernels
