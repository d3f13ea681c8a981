// moe_route_count (AIV, one block): phase 1 of fused_moe_decode, routing and counting.
// Counts the valid (token, k) pairs per local expert, writes the exclusive prefix sums, the row
// map (pair -> workspace row, row -> source token; stable in (t, k) order), expert_token_nums
// (int64, non-cumulative), and adds the counts into moe_load once.
// A single core walks the BS*K <= 3072 pairs in a scalar loop over UB copies: deterministic and
// free of atomics for the row assignment. moe_load int64 [E] is updated by scalar
// read-modify-write with data-cache flushes (dav-2201 has no int64 atomics); the int32 ring
// [T, E] takes one atomic-add DMA of the int32 counts into row load_counter mod T.

#include "moe_kernel_common.h"

namespace eplb_native::kernels {

class MoeRouteCount {
public:
    __aicore__ inline void Init(GM_ADDR expert_ids, GM_ADDR x_active_mask,
                                GM_ADDR expert_token_nums, GM_ADDR moe_load, GM_ADDR load_counter,
                                GM_ADDR workspace, const FusedMoeTilingData& t) {
        t_ = t;
        pairs_ = t.num_tokens * t.top_k;
        ws_ = carve_workspace(workspace, t);
        ids_gm_.SetGlobalBuffer(reinterpret_cast<__gm__ int32_t*>(expert_ids), pairs_);
        mask_gm_.SetGlobalBuffer(reinterpret_cast<__gm__ uint8_t*>(x_active_mask), t.num_tokens);
        // int64 expert_token_nums written as little-endian (low, high) int32 pairs.
        token_nums_gm_.SetGlobalBuffer(reinterpret_cast<__gm__ int32_t*>(expert_token_nums),
                                       2 * t.num_experts);
        moe_load_ = moe_load;
        load_counter_ = load_counter;

        const int64_t pair_bytes = shared::align_up(pairs_ * 4, shared::kUbBlockBytes);
        const int64_t expert_bytes = shared::align_up((t.num_experts + 1) * 4,
                                                      shared::kUbBlockBytes);
        pipe_.InitBuffer(ids_buf_, pair_bytes);
        pipe_.InitBuffer(row_of_buf_, pair_bytes);
        pipe_.InitBuffer(row_token_buf_, pair_bytes);
        pipe_.InitBuffer(mask_buf_, shared::align_up(t.num_tokens, shared::kUbBlockBytes));
        pipe_.InitBuffer(counts_buf_, expert_bytes);
        pipe_.InitBuffer(offsets_buf_, expert_bytes);
        pipe_.InitBuffer(cursor_buf_, expert_bytes);
        pipe_.InitBuffer(token_nums_buf_,
                         shared::align_up(t.num_experts * 8, shared::kUbBlockBytes));
    }

    __aicore__ inline void Process() {
        AscendC::LocalTensor<int32_t> ids = ids_buf_.Get<int32_t>();
        AscendC::LocalTensor<uint8_t> mask = mask_buf_.Get<uint8_t>();
        copy_rows_in(ids, ids_gm_, 1, pairs_, pairs_, shared::align_up(pairs_ * 4, 32) / 4);
        if (t_.has_mask != 0) {
            copy_rows_in(mask, mask_gm_, 1, t_.num_tokens, t_.num_tokens,
                         shared::align_up(t_.num_tokens, 32));
        }
        wait_pipe<AscendC::HardEvent::MTE2_S>();

        CountAndPrefix(ids, mask);
        AssignRows(ids, mask);

        // Scalar UB writes above -> DMA out.
        wait_pipe<AscendC::HardEvent::S_MTE3>();
        const int64_t experts = t_.num_experts;
        AscendC::GlobalTensor<int32_t> offsets_gm;
        offsets_gm.SetGlobalBuffer(ws_.offsets, experts + 1);
        AscendC::GlobalTensor<int32_t> row_of_gm;
        row_of_gm.SetGlobalBuffer(ws_.row_of, pairs_);
        AscendC::GlobalTensor<int32_t> row_token_gm;
        row_token_gm.SetGlobalBuffer(ws_.row_token, pairs_);
        const int64_t pair_stride = shared::align_up(pairs_ * 4, 32) / 4;
        copy_rows_out(offsets_gm, offsets_buf_.Get<int32_t>(), 1, experts + 1, experts + 1,
                      shared::align_up((experts + 1) * 4, 32) / 4);
        copy_rows_out(row_of_gm, row_of_buf_.Get<int32_t>(), 1, pairs_, pairs_, pair_stride);
        copy_rows_out(row_token_gm, row_token_buf_.Get<int32_t>(), 1, pairs_, pairs_,
                      pair_stride);
        copy_rows_out(token_nums_gm_, token_nums_buf_.Get<int32_t>(), 1, 2 * experts,
                      2 * experts, shared::align_up(experts * 8, 32) / 4);

        UpdateMoeLoad();
    }

private:
    __aicore__ inline bool Valid(const AscendC::LocalTensor<int32_t>& ids,
                                 const AscendC::LocalTensor<uint8_t>& mask, int64_t pair) {
        const int64_t token = pair / t_.top_k;
        const bool active = t_.has_mask == 0 || mask.GetValue(token) != 0;
        return shared::is_valid_pair(active, ids.GetValue(pair), t_.num_experts);
    }

    // counts[e] = c[e]; offsets[e] = sum of c[e'] for e' < e, offsets[E] = R; expert_token_nums.
    __aicore__ inline void CountAndPrefix(const AscendC::LocalTensor<int32_t>& ids,
                                          const AscendC::LocalTensor<uint8_t>& mask) {
        AscendC::LocalTensor<int32_t> counts = counts_buf_.Get<int32_t>();
        AscendC::LocalTensor<int32_t> offsets = offsets_buf_.Get<int32_t>();
        AscendC::LocalTensor<int32_t> cursor = cursor_buf_.Get<int32_t>();
        AscendC::LocalTensor<int32_t> token_nums = token_nums_buf_.Get<int32_t>();
        const int64_t experts = t_.num_experts;
        for (int64_t e = 0; e <= experts; ++e) {
            counts.SetValue(e, 0);
        }
        for (int64_t pair = 0; pair < pairs_; ++pair) {
            if (Valid(ids, mask, pair)) {
                const int32_t e = ids.GetValue(pair);
                counts.SetValue(e, counts.GetValue(e) + 1);
            }
        }
        int32_t running = 0;
        for (int64_t e = 0; e < experts; ++e) {
            const int32_t count = counts.GetValue(e);
            offsets.SetValue(e, running);
            cursor.SetValue(e, running);
            token_nums.SetValue(2 * e, count);
            token_nums.SetValue(2 * e + 1, 0);
            running += count;
        }
        offsets.SetValue(experts, running);
    }

    // Row of pair (t, k) = offsets[e] + rank of the pair among expert e's pairs in (t, k) order.
    __aicore__ inline void AssignRows(const AscendC::LocalTensor<int32_t>& ids,
                                      const AscendC::LocalTensor<uint8_t>& mask) {
        AscendC::LocalTensor<int32_t> cursor = cursor_buf_.Get<int32_t>();
        AscendC::LocalTensor<int32_t> row_of = row_of_buf_.Get<int32_t>();
        AscendC::LocalTensor<int32_t> row_token = row_token_buf_.Get<int32_t>();
        for (int64_t pair = 0; pair < pairs_; ++pair) {
            if (!Valid(ids, mask, pair)) {
                row_of.SetValue(pair, -1);
                continue;
            }
            const int32_t e = ids.GetValue(pair);
            const int32_t row = cursor.GetValue(e);
            cursor.SetValue(e, row + 1);
            row_of.SetValue(pair, row);
            row_token.SetValue(row, static_cast<int32_t>(pair / t_.top_k));
        }
    }

    // moe_load accumulation, once per call after the counts are final.
    __aicore__ inline void UpdateMoeLoad() {
        const int64_t experts = t_.num_experts;
        AscendC::LocalTensor<int32_t> counts = counts_buf_.Get<int32_t>();
        if (t_.load_mode == static_cast<int32_t>(shared::LoadMode::kTotal)) {
            AscendC::GlobalTensor<int64_t> load;
            load.SetGlobalBuffer(reinterpret_cast<__gm__ int64_t*>(moe_load_), experts);
            flush_gm_lines(load, experts * 8);
            for (int64_t e = 0; e < experts; ++e) {
                const int32_t count = counts.GetValue(e);
                if (count != 0) {
                    load.SetValue(e, load.GetValue(e) + count);
                }
            }
            flush_gm_lines(load, experts * 8);
        } else if (t_.load_mode == static_cast<int32_t>(shared::LoadMode::kRing)) {
            AscendC::GlobalTensor<int32_t> counter;
            counter.SetGlobalBuffer(reinterpret_cast<__gm__ int32_t*>(load_counter_), 1);
            flush_gm_lines(counter, 4);
            const int32_t calls = counter.GetValue(0);
            const int64_t slot = shared::ring_slot(calls, t_.load_steps);
            AscendC::GlobalTensor<int32_t> ring;
            ring.SetGlobalBuffer(reinterpret_cast<__gm__ int32_t*>(moe_load_),
                                 t_.load_steps * experts);
            // counts was written by the scalar unit: order it before the DMA.
            wait_pipe<AscendC::HardEvent::S_MTE3>();
            AscendC::SetAtomicAdd<int32_t>();
            copy_rows_out(ring[slot * experts], counts, 1, experts, experts,
                          shared::align_up((experts + 1) * 4, 32) / 4);
            AscendC::SetAtomicNone();
            counter.SetValue(0, calls + 1);
            flush_gm_lines(counter, 4);
        }
    }

    AscendC::TPipe pipe_;
    AscendC::TBuf<AscendC::TPosition::VECCALC> ids_buf_, mask_buf_, row_of_buf_, row_token_buf_,
        counts_buf_, offsets_buf_, cursor_buf_, token_nums_buf_;
    AscendC::GlobalTensor<int32_t> ids_gm_;
    AscendC::GlobalTensor<uint8_t> mask_gm_;
    AscendC::GlobalTensor<int32_t> token_nums_gm_;
    GM_ADDR moe_load_ = nullptr;
    GM_ADDR load_counter_ = nullptr;
    FusedMoeTilingData t_;
    int64_t pairs_ = 0;
    Workspace ws_;
};

}  // namespace eplb_native::kernels

extern "C" __global__ __aicore__ void moe_route_count(GM_ADDR expert_ids, GM_ADDR x_active_mask,
                                                      GM_ADDR expert_token_nums, GM_ADDR moe_load,
                                                      GM_ADDR load_counter, GM_ADDR workspace,
                                                      GM_ADDR tiling) {
    KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);
    eplb_native::kernels::FusedMoeTilingData t;
    eplb_native::kernels::load_tiling(tiling, t);
    if (AscendC::GetBlockIdx() != 0) {
        return;  // launched with route_blocks = 1; extra blocks have nothing to do
    }
    eplb_native::kernels::MoeRouteCount op;
    op.Init(expert_ids, x_active_mask, expert_token_nums, moe_load, load_counter, workspace, t);
    op.Process();
}
