#pragma once
// Device-side helpers shared by the fused decode MoE kernels (dav-2201): reading the tiling
// block, pipe synchronisation, data-cache maintenance for scalar GM access, the workspace
// carving, and (vector cores) the padded row-block copies, the per-row int8 quantisation and the
// W8A8 scale loads. Included only by ascend_kernels/kernels/*.cpp and ascend_kernels/include.

#include "kernel_operator.h"

#include "eplb_native/operator/shared/fused_moe_params.h"
#include "eplb_native/operator/shared/fused_moe_tiling_data.h"

namespace eplb_native::kernels {

using shared::FusedMoeTilingData;

// Bytes of one data-cache line of the scalar unit.
constexpr int64_t kCacheLineBytes = 64;

// Writes back and invalidates the scalar data-cache lines covering [gm, gm + bytes), so scalar
// reads see what DMA or the host wrote and scalar writes reach GM before other cores or the
// next kernel read them.
template <typename T>
__aicore__ inline void flush_gm_lines(const AscendC::GlobalTensor<T>& gm, int64_t bytes) {
    const int64_t step = kCacheLineBytes / static_cast<int64_t>(sizeof(T));
    const int64_t count = bytes / static_cast<int64_t>(sizeof(T));
    for (int64_t i = 0; i < count; i += step) {
        AscendC::DataCacheCleanAndInvalid<T, AscendC::CacheLine::SINGLE_CACHE_LINE,
                                          AscendC::DcciDst::CACHELINE_OUT>(gm[i]);
    }
}

// Copies the tiling block (written by the host with a DMA) into a local struct.
__aicore__ inline void load_tiling(GM_ADDR tiling, FusedMoeTilingData& out) {
    constexpr int64_t kWords = sizeof(FusedMoeTilingData) / sizeof(uint64_t);
    AscendC::GlobalTensor<uint64_t> src;
    src.SetGlobalBuffer(reinterpret_cast<__gm__ uint64_t*>(tiling), kWords);
    flush_gm_lines(src, sizeof(FusedMoeTilingData));
    uint64_t* dst = reinterpret_cast<uint64_t*>(&out);
    for (int64_t i = 0; i < kWords; ++i) {
        dst[i] = src.GetValue(i);
    }
}

// Orders two pipes of this core once (producer pipe -> consumer pipe).
template <AscendC::HardEvent kEvent>
__aicore__ inline void wait_pipe() {
    const int32_t event = static_cast<int32_t>(GetTPipePtr()->FetchEventID(kEvent));
    AscendC::SetFlag<kEvent>(event);
    AscendC::WaitFlag<kEvent>(event);
}

// GM -> UB copy of `rows` rows of `cols` elements; GM rows are `gm_stride` elements apart, UB
// rows `ub_stride` elements apart (ub_stride * sizeof(T) a multiple of 32 bytes). Tails that
// are not whole 32-byte blocks are fine (DataCopyPad).
template <typename T>
__aicore__ inline void copy_rows_in(const AscendC::LocalTensor<T>& dst,
                                    const AscendC::GlobalTensor<T>& src, int64_t rows,
                                    int64_t cols, int64_t gm_stride, int64_t ub_stride) {
    const int64_t row_bytes = cols * static_cast<int64_t>(sizeof(T));
    AscendC::DataCopyExtParams params;
    params.blockCount = static_cast<uint16_t>(rows);
    params.blockLen = static_cast<uint32_t>(row_bytes);
    params.srcStride = static_cast<uint32_t>((gm_stride - cols) * static_cast<int64_t>(sizeof(T)));
    params.dstStride = static_cast<uint32_t>(
        (ub_stride * static_cast<int64_t>(sizeof(T)) - shared::align_up(row_bytes, 32)) / 32);
    params.rsv = 0;
    AscendC::DataCopyPadExtParams<T> pad{false, 0, 0, 0};
    AscendC::DataCopyPad(dst, src, params, pad);
}

// UB -> GM copy, the mirror of copy_rows_in.
template <typename T>
__aicore__ inline void copy_rows_out(const AscendC::GlobalTensor<T>& dst,
                                     const AscendC::LocalTensor<T>& src, int64_t rows,
                                     int64_t cols, int64_t gm_stride, int64_t ub_stride) {
    const int64_t row_bytes = cols * static_cast<int64_t>(sizeof(T));
    AscendC::DataCopyExtParams params;
    params.blockCount = static_cast<uint16_t>(rows);
    params.blockLen = static_cast<uint32_t>(row_bytes);
    params.srcStride = static_cast<uint32_t>(
        (ub_stride * static_cast<int64_t>(sizeof(T)) - shared::align_up(row_bytes, 32)) / 32);
    params.dstStride = static_cast<uint32_t>((gm_stride - cols) * static_cast<int64_t>(sizeof(T)));
    params.rsv = 0;
    AscendC::DataCopyPad(dst, src, params);
}

// Workspace views of one call (regions carved by the host tiling).
struct Workspace {
    __gm__ int32_t* offsets;    // [E + 1]
    __gm__ int32_t* row_of;     // [BS * K]
    __gm__ int32_t* row_token;  // [BS * K]
    __gm__ uint8_t* x_rows;     // act or int8 [BS * K, H]
    __gm__ float* x_scale;      // [BS * K] (W8A8)
    __gm__ uint8_t* h1;         // fp32 or int32 [BS * K, h1_stride]
    __gm__ uint8_t* act;        // act or int8 [BS * K, I]
    __gm__ float* act_scale;    // [BS * K] (W8A8)
    __gm__ uint8_t* h2;         // fp32 or int32 [BS * K, h2_stride]
};

__aicore__ inline Workspace carve_workspace(GM_ADDR workspace, const FusedMoeTilingData& t) {
    Workspace ws;
    ws.offsets = reinterpret_cast<__gm__ int32_t*>(workspace + t.ws_offsets);
    ws.row_of = reinterpret_cast<__gm__ int32_t*>(workspace + t.ws_row_of);
    ws.row_token = reinterpret_cast<__gm__ int32_t*>(workspace + t.ws_row_token);
    ws.x_rows = workspace + t.ws_x_rows;
    ws.x_scale = reinterpret_cast<__gm__ float*>(workspace + t.ws_x_scale);
    ws.h1 = workspace + t.ws_h1;
    ws.act = workspace + t.ws_act;
    ws.act_scale = reinterpret_cast<__gm__ float*>(workspace + t.ws_act_scale);
    ws.h2 = workspace + t.ws_h2;
    return ws;
}

__aicore__ inline bool is_bf16(int32_t dtype) {
    return dtype == static_cast<int32_t>(shared::DType::kBFloat16);
}

// Loads the offsets [E + 1] written by moe_route_count into UB and makes them readable by the
// scalar unit. Returns R (offsets[E]).
__aicore__ inline int32_t load_offsets(const AscendC::LocalTensor<int32_t>& dst,
                                       __gm__ int32_t* offsets, int64_t num_experts) {
    AscendC::GlobalTensor<int32_t> src;
    src.SetGlobalBuffer(offsets, num_experts + 1);
    copy_rows_in(dst, src, 1, num_experts + 1, num_experts + 1,
                 shared::align_up((num_experts + 1) * 4, 32) / 4);
    wait_pipe<AscendC::HardEvent::MTE2_S>();
    return dst.GetValue(num_experts);
}

// This block's contiguous share [begin, end) of the R workspace rows (rows in expert order).
struct RowShare {
    int64_t begin;
    int64_t end;
};

// Loads the offsets [E + 1] into `offsets` (UB, readable by the scalar unit) and returns this
// block's share of the R = offsets[E] rows.
__aicore__ inline RowShare load_row_share(const AscendC::LocalTensor<int32_t>& offsets,
                                          const Workspace& ws, int64_t num_experts) {
    const int64_t rows = load_offsets(offsets, ws.offsets, num_experts);
    const int64_t blocks = AscendC::GetBlockNum();
    const int64_t block = AscendC::GetBlockIdx();
    return {shared::block_begin(rows, blocks, block), shared::block_begin(rows, blocks, block + 1)};
}

// Scratch of quantize_row_int8 for rows of up to `cols` elements (shared::quantize_ub_bytes).
struct QuantBuffers {
    AscendC::LocalTensor<float> values;  // fp32 [cols]: the row, overwritten
    AscendC::LocalTensor<float> scratch;  // fp32 [cols]
    AscendC::LocalTensor<float> work;     // fp32 [cols]: ReduceMax's shared scratch
    AscendC::LocalTensor<half> codes16;   // fp16 [cols]
    AscendC::LocalTensor<int8_t> codes;   // int8 [cols]: the result
    AscendC::LocalTensor<float> max;      // one 32-byte block
};

template <AscendC::TPosition P>
__aicore__ inline QuantBuffers init_quant_buffers(AscendC::TPipe& pipe, AscendC::TBuf<P>& values,
                                                  AscendC::TBuf<P>& scratch, AscendC::TBuf<P>& work,
                                                  AscendC::TBuf<P>& codes16,
                                                  AscendC::TBuf<P>& codes, AscendC::TBuf<P>& max,
                                                  int64_t cols) {
    const int64_t row32 = shared::align_up(cols * 4, shared::kUbBlockBytes);
    pipe.InitBuffer(values, row32);
    pipe.InitBuffer(scratch, row32);
    pipe.InitBuffer(work, row32);
    pipe.InitBuffer(codes16, shared::align_up(cols * 2, shared::kUbBlockBytes));
    pipe.InitBuffer(codes, shared::align_up(cols, shared::kUbBlockBytes));
    pipe.InitBuffer(max, shared::kUbBlockBytes);
    QuantBuffers q;
    q.values = values.template Get<float>();
    q.scratch = scratch.template Get<float>();
    q.work = work.template Get<float>();
    q.codes16 = codes16.template Get<half>();
    q.codes = codes.template Get<int8_t>();
    q.max = max.template Get<float>();
    return q;
}

// Symmetric per-row int8 quantisation of q.values[0, count) (fp32, written by the vector unit
// and ordered by the caller) into q.codes, in the operator's arithmetic:
//   m = max |v|; if m is 0 or not finite: codes 0, return 0; else s = 127 / m (fp32),
//   code = clamp(rint(v * s), -127, 127) (Muls, Cast CAST_RINT fp32 -> fp32, Mins, Maxs, then
//   the exact casts fp32 -> fp16 -> int8), return 1 / s (the dequantisation scale).
// q.codes is written by the vector unit when this returns (order it before a DMA out).
__aicore__ inline float quantize_row_int8(const QuantBuffers& q, int32_t count) {
    AscendC::Abs(q.scratch, q.values, count);
    AscendC::PipeBarrier<PIPE_V>();
    AscendC::ReduceMax(q.max, q.scratch, q.work, count);
    wait_pipe<AscendC::HardEvent::V_S>();
    const float absmax = q.max.GetValue(0);
    constexpr float kFloatMax = 3.402823466e38F;
    if (!(absmax > 0.0F && absmax <= kFloatMax)) {
        AscendC::Duplicate(q.codes16, half(0.0F), count);
        AscendC::PipeBarrier<PIPE_V>();
        AscendC::Cast(q.codes, q.codes16, AscendC::RoundMode::CAST_RINT, count);
        return 0.0F;
    }
    const float s = shared::kInt8Max / absmax;
    AscendC::Muls(q.values, q.values, s, count);
    AscendC::PipeBarrier<PIPE_V>();
    AscendC::Cast(q.scratch, q.values, AscendC::RoundMode::CAST_RINT, count);
    AscendC::PipeBarrier<PIPE_V>();
    AscendC::Mins(q.scratch, q.scratch, shared::kInt8Max, count);
    AscendC::PipeBarrier<PIPE_V>();
    AscendC::Maxs(q.scratch, q.scratch, -shared::kInt8Max, count);
    AscendC::PipeBarrier<PIPE_V>();
    AscendC::Cast(q.codes16, q.scratch, AscendC::RoundMode::CAST_RINT, count);
    AscendC::PipeBarrier<PIPE_V>();
    AscendC::Cast(q.codes, q.codes16, AscendC::RoundMode::CAST_RINT, count);
    return 1.0F / s;
}

// Loads scale[offset, offset + count) of expert `expert` (address from a device pointer table,
// stored as fp32, fp16 or bf16) into dst as fp32, ready for the vector unit. `raw` holds the
// 16-bit copy. Widening 16-bit scales is exact.
__aicore__ inline void load_scales_f32(const AscendC::LocalTensor<float>& dst,
                                       const AscendC::LocalTensor<half>& raw,
                                       const AscendC::GlobalTensor<uint64_t>& table,
                                       int64_t expert, int64_t offset, int64_t count,
                                       int32_t dtype) {
    const uint64_t address = table.GetValue(expert);
    if (dtype == static_cast<int32_t>(shared::DType::kFloat32)) {
        AscendC::GlobalTensor<float> src;
        src.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(address), offset + count);
        copy_rows_in(dst, src[offset], 1, count, count, shared::ub_row_elems(count, 4));
        wait_pipe<AscendC::HardEvent::MTE2_V>();
        return;
    }
    if (is_bf16(dtype)) {
        AscendC::GlobalTensor<bfloat16_t> src;
        src.SetGlobalBuffer(reinterpret_cast<__gm__ bfloat16_t*>(address), offset + count);
        const AscendC::LocalTensor<bfloat16_t> staged = raw.template ReinterpretCast<bfloat16_t>();
        copy_rows_in(staged, src[offset], 1, count, count, shared::ub_row_elems(count, 2));
        wait_pipe<AscendC::HardEvent::MTE2_V>();
        AscendC::Cast(dst, staged, AscendC::RoundMode::CAST_NONE, static_cast<int32_t>(count));
    } else {
        AscendC::GlobalTensor<half> src;
        src.SetGlobalBuffer(reinterpret_cast<__gm__ half*>(address), offset + count);
        copy_rows_in(raw, src[offset], 1, count, count, shared::ub_row_elems(count, 2));
        wait_pipe<AscendC::HardEvent::MTE2_V>();
        AscendC::Cast(dst, raw, AscendC::RoundMode::CAST_NONE, static_cast<int32_t>(count));
    }
    AscendC::PipeBarrier<PIPE_V>();
}

}  // namespace eplb_native::kernels
