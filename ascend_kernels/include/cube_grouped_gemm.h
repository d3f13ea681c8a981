#pragma once
// Grouped GEMM on the cube cores (AIC), shared by moe_gemm1 (rows x w1 -> h1) and moe_gemm2
// (rows x w2 -> h2): for every expert e with rows, h[r, :] = rows[r, :] @ w[e] with fp32
// accumulation (bf16/fp16 inputs) or int32 accumulation (int8 inputs) in L0C; the accumulators go
// to the workspace unrounded and the vector kernels after it dequantise / round them.
//
// Data flow per tile (up to kCubeTileM rows of one expert x kCubeTileN output columns):
//   GM -> L1   DataCopy with ND -> Nz, per reduction chunk of kCubeChunkKBytes per row
//              (activations [rows, chunk] and weights [chunk, cols]; the last 32-byte column
//              block is zero-padded by the copy);
//   L1 -> L0A  LoadData 2D, Nz -> Zz (16 x 32-byte fractals), per step of kCubeStepKBytes;
//   L1 -> L0B  Nz -> Zn: LoadData 2D with per-fractal transposition (bf16/fp16) or
//              LoadDataWithTranspose of 32 x 32 squares (int8);
//   Mmad       m = rows rounded up to 16 (m = 1 would select GEMV mode), n = cols rounded up to
//              16 (32 for int8, the transposed square), k = the step's rows; first step of the
//              tile starts from zero (cmatrixInitVal), later steps accumulate in ascending k;
//   L0C -> GM  Fixpipe NZ2ND of the tile's rows and cols rounded up to 16 (h rows are padded to
//              whole 16-column blocks by the host tiling, so no write reaches the next row).
// L1, L0A/L0B and L0C are double-buffered; the pipes hand buffers over with the documented
// events (MTE2 -> MTE1 -> M -> FIX forward, MTE1 -> MTE2, M -> MTE1, FIX -> M back), which start
// set so that the first use of each buffer does not wait, and are drained at the end.
// The activation rows of L1 past a tile's row count up to the next 16 are read by Mmad (m is
// rounded up), so both L1 activation buffers are zero-filled once at the start: what a tile
// leaves there is finite data of earlier tiles, never uninitialised memory.
//
// Tiles are enumerated expert by expert, column tile by column tile, row tile by row tile, and
// dealt round-robin to blocks. Experts without rows are skipped, so their weight pointer is never
// read (it may belong to a 0-sized tensor). An expert with rows but a null weight address (an
// empty tensor the host could not check without a device sync) gets zero accumulators.

#include "moe_kernel_common.h"

namespace eplb_native::kernels {

template <typename T, typename Acc>
class CubeGroupedGemm {
public:
    static constexpr int64_t kElem = sizeof(T);
    static constexpr int64_t kC0 = shared::kFractalRowBytes / kElem;  // elements per fractal row
    static constexpr int64_t kChunkK = shared::kCubeChunkKBytes / kElem;
    static constexpr int64_t kStepK = shared::kCubeStepKBytes / kElem;
    static constexpr int64_t kNAlign = kElem == 1 ? 32 : 16;  // Mmad n granularity
    static constexpr int64_t kKAlign = kElem == 1 ? 32 : 16;  // rows of an L1 weight column block
    static constexpr int64_t kL1AElems = shared::kCubeL1ABytes / kElem;
    static constexpr int64_t kL1BElems = shared::kCubeL1BBytes / kElem;
    static constexpr int64_t kL0AElems = shared::kCubeL0ABytes / kElem;
    static constexpr int64_t kL0BElems = shared::kCubeL0BBytes / kElem;
    static constexpr int64_t kL0CElems = shared::kCubeL0CBytes / 4;

    // rows_in: [R, reduce] of T; out: [R, out_stride] of Acc; weight e is [reduce, out_cols] of T,
    // row-major, at weight_table[e].
    __aicore__ inline void Init(GM_ADDR weight_table, __gm__ uint8_t* rows_in,
                                __gm__ uint8_t* out, __gm__ int32_t* offsets,
                                const FusedMoeTilingData& t, int64_t reduce, int64_t out_cols,
                                int64_t out_stride) {
        num_experts_ = t.num_experts;
        reduce_ = reduce;
        out_cols_ = out_cols;
        out_stride_ = out_stride;
        const int64_t pairs = t.num_tokens * t.top_k;
        table_gm_.SetGlobalBuffer(reinterpret_cast<__gm__ uint64_t*>(weight_table), t.num_experts);
        offsets_gm_.SetGlobalBuffer(offsets, t.num_experts + 1);
        in_gm_.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(rows_in), pairs * reduce);
        out_gm_.SetGlobalBuffer(reinterpret_cast<__gm__ Acc*>(out), pairs * out_stride);
        pipe_.InitBuffer(l1a_buf_, 2 * shared::kCubeL1ABytes);
        pipe_.InitBuffer(l1b_buf_, 2 * shared::kCubeL1BBytes);
        pipe_.InitBuffer(l0a_buf_, 2 * shared::kCubeL0ABytes);
        pipe_.InitBuffer(l0b_buf_, 2 * shared::kCubeL0BBytes);
        pipe_.InitBuffer(l0c_buf_, 2 * shared::kCubeL0CBytes);
    }

    __aicore__ inline void Process() {
        flush_gm_lines(offsets_gm_, (num_experts_ + 1) * 4);
        flush_gm_lines(table_gm_, num_experts_ * 8);
        ZeroActivationBuffers();
        for (int32_t i = 0; i < 2; ++i) {
            AscendC::SetFlag<AscendC::HardEvent::MTE1_MTE2>(i);
            AscendC::SetFlag<AscendC::HardEvent::M_MTE1>(i);
            AscendC::SetFlag<AscendC::HardEvent::FIX_M>(i);
        }
        const int64_t blocks = AscendC::GetBlockNum();
        const int64_t block = AscendC::GetBlockIdx();
        int64_t first = 0;  // global index of this expert's first tile
        for (int64_t e = 0; e < num_experts_; ++e) {
            const int64_t row0 = offsets_gm_.GetValue(e);
            const int64_t rows = offsets_gm_.GetValue(e + 1) - row0;
            const int64_t tiles = shared::expert_tiles(rows, out_cols_);
            if (tiles == 0) {
                continue;
            }
            int64_t local = (block - first % blocks + blocks) % blocks;  // first tile of this block
            if (local < tiles) {
                const uint64_t address = table_gm_.GetValue(e);
                weight_is_null_ = address == 0;
                weight_gm_.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(address),
                                           reduce_ * out_cols_);
            }
            const int64_t row_tiles = shared::ceil_div(rows, shared::kCubeTileM);
            for (; local < tiles; local += blocks) {
                const int64_t r0 = (local % row_tiles) * shared::kCubeTileM;
                const int64_t c0 = (local / row_tiles) * shared::kCubeTileN;
                ComputeTile(row0 + r0, Min(shared::kCubeTileM, rows - r0), c0,
                            Min(shared::kCubeTileN, out_cols_ - c0));
            }
            first += tiles;
        }
        for (int32_t i = 0; i < 2; ++i) {
            AscendC::WaitFlag<AscendC::HardEvent::MTE1_MTE2>(i);
            AscendC::WaitFlag<AscendC::HardEvent::M_MTE1>(i);
            AscendC::WaitFlag<AscendC::HardEvent::FIX_M>(i);
        }
    }

private:
    __aicore__ static inline int64_t Min(int64_t a, int64_t b) { return a < b ? a : b; }

    __aicore__ inline void ZeroActivationBuffers() {
        const AscendC::LocalTensor<int16_t> l1a = l1a_buf_.template Get<int16_t>();
        AscendC::InitConstValue(
            l1a, AscendC::InitConstValueParams<int16_t>(
                     1, static_cast<uint16_t>(2 * shared::kCubeL1ABytes / shared::kUbBlockBytes),
                     0, 0));
    }

    __aicore__ inline void ComputeTile(int64_t row0, int64_t rows, int64_t col0, int64_t cols) {
        const int64_t rows_pad = shared::align_up(rows, shared::kFractalRows);
        const int64_t n_mmad = shared::align_up(cols, kNAlign);
        const int32_t c_buf = static_cast<int32_t>(tile_count_ % 2);
        const AscendC::LocalTensor<Acc> l0c = l0c_buf_.template Get<Acc>()[c_buf * kL0CElems];
        AscendC::WaitFlag<AscendC::HardEvent::FIX_M>(c_buf);
        if (weight_is_null_) {
            ZeroAccumulators(l0c, rows_pad, n_mmad);
        }
        bool first = true;
        for (int64_t k0 = 0; !weight_is_null_ && k0 < reduce_; k0 += kChunkK) {
            const int64_t depth = Min(kChunkK, reduce_ - k0);
            const int32_t l1 = static_cast<int32_t>(chunk_count_ % 2);
            const AscendC::LocalTensor<T> a1 = l1a_buf_.template Get<T>()[l1 * kL1AElems];
            const AscendC::LocalTensor<T> b1 = l1b_buf_.template Get<T>()[l1 * kL1BElems];
            AscendC::WaitFlag<AscendC::HardEvent::MTE1_MTE2>(l1);
            CopyChunkIn(a1, b1, row0, rows, rows_pad, col0, cols, k0, depth);
            AscendC::SetFlag<AscendC::HardEvent::MTE2_MTE1>(l1);
            AscendC::WaitFlag<AscendC::HardEvent::MTE2_MTE1>(l1);
            const int64_t depth_pad = shared::align_up(depth, kKAlign);
            for (int64_t ks = 0; ks < depth; ks += kStepK) {
                const int64_t kv = Min(kStepK, depth - ks);
                const int32_t l0 = static_cast<int32_t>(step_count_ % 2);
                const AscendC::LocalTensor<T> a0 = l0a_buf_.template Get<T>()[l0 * kL0AElems];
                const AscendC::LocalTensor<T> b0 = l0b_buf_.template Get<T>()[l0 * kL0BElems];
                AscendC::WaitFlag<AscendC::HardEvent::M_MTE1>(l0);
                LoadStep(a0, b0, a1, b1, rows_pad, depth_pad, n_mmad, ks, kv);
                AscendC::SetFlag<AscendC::HardEvent::MTE1_M>(l0);
                AscendC::WaitFlag<AscendC::HardEvent::MTE1_M>(l0);
                Multiply(l0c, a0, b0, rows_pad, n_mmad, kv, first);
                AscendC::SetFlag<AscendC::HardEvent::M_MTE1>(l0);
                first = false;
                ++step_count_;
            }
            AscendC::SetFlag<AscendC::HardEvent::MTE1_MTE2>(l1);
            ++chunk_count_;
        }
        AscendC::SetFlag<AscendC::HardEvent::M_FIX>(c_buf);
        AscendC::WaitFlag<AscendC::HardEvent::M_FIX>(c_buf);
        AscendC::FixpipeParamsV220 fix;
        fix.nSize = static_cast<uint16_t>(shared::align_up(cols, shared::kFractalRows));
        fix.mSize = static_cast<uint16_t>(rows);
        fix.srcStride = static_cast<uint16_t>(rows_pad);
        fix.dstStride = static_cast<uint32_t>(out_stride_);
        fix.ndNum = 1;
        AscendC::Fixpipe(out_gm_[row0 * out_stride_ + col0], l0c, fix);
        AscendC::SetFlag<AscendC::HardEvent::FIX_M>(c_buf);
        ++tile_count_;
    }

    // GM -> L1: activations [rows, depth] and weights [depth, cols], both ND -> Nz.
    __aicore__ inline void CopyChunkIn(const AscendC::LocalTensor<T>& a1,
                                       const AscendC::LocalTensor<T>& b1, int64_t row0,
                                       int64_t rows, int64_t rows_pad, int64_t col0, int64_t cols,
                                       int64_t k0, int64_t depth) {
        AscendC::Nd2NzParams a;
        a.ndNum = 1;
        a.nValue = static_cast<uint16_t>(rows);
        a.dValue = static_cast<uint16_t>(depth);
        a.srcDValue = static_cast<uint16_t>(reduce_);
        a.dstNzC0Stride = static_cast<uint16_t>(rows_pad);
        a.dstNzNStride = 1;
        AscendC::DataCopy(a1, in_gm_[row0 * reduce_ + k0], a);
        AscendC::Nd2NzParams b;
        b.ndNum = 1;
        b.nValue = static_cast<uint16_t>(depth);
        b.dValue = static_cast<uint16_t>(cols);
        b.srcDValue = static_cast<uint16_t>(out_cols_);
        b.dstNzC0Stride = static_cast<uint16_t>(shared::align_up(depth, kKAlign));
        b.dstNzNStride = 1;
        AscendC::DataCopy(b1, weight_gm_[k0 * out_cols_ + col0], b);
    }

    // L1 -> L0A (Zz) and L0B (Zn) for the step's rows [ks, ks + kv) of the chunk.
    __aicore__ inline void LoadStep(const AscendC::LocalTensor<T>& a0,
                                    const AscendC::LocalTensor<T>& b0,
                                    const AscendC::LocalTensor<T>& a1,
                                    const AscendC::LocalTensor<T>& b1, int64_t rows_pad,
                                    int64_t depth_pad, int64_t n_mmad, int64_t ks, int64_t kv) {
        const int64_t m_fractals = rows_pad / shared::kFractalRows;
        const int64_t k_fractals = shared::ceil_div(kv, kC0);
        const int64_t fractal = shared::kFractalRows * kC0;  // elements of one 512-byte fractal
        AscendC::LoadData2DParams a;
        a.repeatTimes = static_cast<uint8_t>(k_fractals);
        a.srcStride = static_cast<uint16_t>(m_fractals);
        for (int64_t m1 = 0; m1 < m_fractals; ++m1) {
            AscendC::LoadData(a0[m1 * k_fractals * fractal],
                              a1[((ks / kC0) * m_fractals + m1) * fractal], a);
        }
        const int64_t n_fractals = n_mmad / shared::kFractalRows;
        if constexpr (kElem == 1) {
            // 32 x 32 int8 squares: square (k2, n2) of the Nz chunk is 1024 bytes at
            // (n2 * depth_pad / 32 + k2); its transpose is the Zn fractals (k2, 2 n2) and
            // (k2, 2 n2 + 1).
            AscendC::LoadData2dTransposeParams b;
            b.repeatTimes = static_cast<uint8_t>(n_mmad / 32);
            b.srcStride = static_cast<uint16_t>(depth_pad / 32);
            b.dstGap = 1;
            b.dstFracGap = 0;
            for (int64_t k2 = 0; k2 < shared::ceil_div(kv, 32); ++k2) {
                AscendC::LoadDataWithTranspose(b0[k2 * n_fractals * fractal],
                                               b1[(ks / 32 + k2) * 1024], b);
            }
        } else {
            // 16 x 16 fractal (k1, n1) of the Nz chunk is at (n1 * depth_pad / 16 + k1).
            AscendC::LoadData2DParams b;
            b.repeatTimes = static_cast<uint8_t>(n_fractals);
            b.srcStride = static_cast<uint16_t>(depth_pad / shared::kFractalRows);
            b.ifTranspose = true;
            for (int64_t k1 = 0; k1 < k_fractals; ++k1) {
                AscendC::LoadData(b0[k1 * n_fractals * fractal], b1[(ks / kC0 + k1) * fractal], b);
            }
        }
    }

    __aicore__ inline void Multiply(const AscendC::LocalTensor<Acc>& l0c,
                                    const AscendC::LocalTensor<T>& a0,
                                    const AscendC::LocalTensor<T>& b0, int64_t m, int64_t n,
                                    int64_t k, bool first) {
        AscendC::MmadParams p;
        p.m = static_cast<uint16_t>(m);
        p.n = static_cast<uint16_t>(n);
        p.k = static_cast<uint16_t>(k);
        p.cmatrixInitVal = first;
        p.cmatrixSource = false;
        AscendC::Mmad(l0c, a0, b0, p);
        // Consecutive Mmads into one L0C need a barrier below the documented size threshold.
        if ((m / 16) * (n / 16) < 10) {
            AscendC::PipeBarrier<PIPE_M>();
        }
    }

    // Null weight with rows: one Mmad of zero operands gives zero accumulators.
    __aicore__ inline void ZeroAccumulators(const AscendC::LocalTensor<Acc>& l0c, int64_t rows_pad,
                                            int64_t n_mmad) {
        const int32_t l0 = static_cast<int32_t>(step_count_ % 2);
        const AscendC::LocalTensor<T> a0 = l0a_buf_.template Get<T>()[l0 * kL0AElems];
        const AscendC::LocalTensor<T> b0 = l0b_buf_.template Get<T>()[l0 * kL0BElems];
        AscendC::WaitFlag<AscendC::HardEvent::M_MTE1>(l0);
        const auto fractals = [](int64_t bytes) {
            return static_cast<uint16_t>(bytes / shared::kFractalBytes);
        };
        AscendC::InitConstValue(a0.template ReinterpretCast<int16_t>(),
                                AscendC::InitConstValueParams<int16_t>(
                                    1, fractals(rows_pad * shared::kCubeStepKBytes), 0, 0));
        AscendC::InitConstValue(b0.template ReinterpretCast<int16_t>(),
                                AscendC::InitConstValueParams<int16_t>(
                                    1, fractals(n_mmad * shared::kCubeStepKBytes), 0, 0));
        AscendC::SetFlag<AscendC::HardEvent::MTE1_M>(l0);
        AscendC::WaitFlag<AscendC::HardEvent::MTE1_M>(l0);
        Multiply(l0c, a0, b0, rows_pad, n_mmad, kStepK, true);
        AscendC::SetFlag<AscendC::HardEvent::M_MTE1>(l0);
        ++step_count_;
    }

    AscendC::TPipe pipe_;
    AscendC::TBuf<AscendC::TPosition::A1> l1a_buf_;
    AscendC::TBuf<AscendC::TPosition::B1> l1b_buf_;
    AscendC::TBuf<AscendC::TPosition::A2> l0a_buf_;
    AscendC::TBuf<AscendC::TPosition::B2> l0b_buf_;
    AscendC::TBuf<AscendC::TPosition::CO1> l0c_buf_;
    AscendC::GlobalTensor<uint64_t> table_gm_;
    AscendC::GlobalTensor<int32_t> offsets_gm_;
    AscendC::GlobalTensor<T> in_gm_, weight_gm_;
    AscendC::GlobalTensor<Acc> out_gm_;
    bool weight_is_null_ = false;
    int64_t num_experts_ = 0, reduce_ = 0, out_cols_ = 0, out_stride_ = 0;
    int64_t tile_count_ = 0, chunk_count_ = 0, step_count_ = 0;
};

// One grouped GEMM of the call: int8 inputs with int32 accumulators under W8A8, else bf16 or
// fp16 inputs with fp32 accumulators (arguments as CubeGroupedGemm::Init).
__aicore__ inline void run_cube_gemm(GM_ADDR weight_table, __gm__ uint8_t* rows_in,
                                     __gm__ uint8_t* out, __gm__ int32_t* offsets,
                                     const FusedMoeTilingData& t, int64_t reduce,
                                     int64_t out_cols, int64_t out_stride) {
    if (t.w8a8 != 0) {
        CubeGroupedGemm<int8_t, int32_t> gemm;
        gemm.Init(weight_table, rows_in, out, offsets, t, reduce, out_cols, out_stride);
        gemm.Process();
    } else if (is_bf16(t.act_dtype)) {
        CubeGroupedGemm<bfloat16_t, float> gemm;
        gemm.Init(weight_table, rows_in, out, offsets, t, reduce, out_cols, out_stride);
        gemm.Process();
    } else {
        CubeGroupedGemm<half, float> gemm;
        gemm.Init(weight_table, rows_in, out, offsets, t, reduce, out_cols, out_stride);
        gemm.Process();
    }
}

}  // namespace eplb_native::kernels
