#pragma once
// Device-side helpers shared by the fused decode MoE kernels (AIV, dav-2201): reading the tiling
// block, pipe synchronisation, data-cache maintenance for scalar GM access, and the padded
// row-block copies every kernel uses. Included only by ascend_kernels/kernels/*.cpp.

#include "kernel_operator.h"

#include "eplb_native/shared/fused_moe_params.h"
#include "eplb_native/shared/fused_moe_tiling_data.h"

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
    __gm__ uint8_t* x_perm;     // act [BS * K, H]
    __gm__ uint8_t* act;        // act [BS * K, I]
    __gm__ uint8_t* y;          // act [BS * K, H]
};

__aicore__ inline Workspace carve_workspace(GM_ADDR workspace, const FusedMoeTilingData& t) {
    Workspace ws;
    ws.offsets = reinterpret_cast<__gm__ int32_t*>(workspace + t.ws_offsets);
    ws.row_of = reinterpret_cast<__gm__ int32_t*>(workspace + t.ws_row_of);
    ws.row_token = reinterpret_cast<__gm__ int32_t*>(workspace + t.ws_row_token);
    ws.x_perm = workspace + t.ws_x_perm;
    ws.act = workspace + t.ws_act;
    ws.y = workspace + t.ws_y;
    return ws;
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

}  // namespace eplb_native::kernels
