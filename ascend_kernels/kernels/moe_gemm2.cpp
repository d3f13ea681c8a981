// moe_gemm2 (AIV, multi-core): GEMM2 of fused_moe_decode (design §7.2 step 6).
// For every workspace row r of expert e: y[r, :] = round(a[r, :] @ w2[e]) (fp32 accumulation in
// ascending i, one rounding to the activation dtype), w2[e] found through the device pointer
// table w2_table (uint64 [E]). Same tile walk and tiling key as moe_gemm1_swiglu.

#include "vector_grouped_gemm.h"

namespace {

template <typename T>
__aicore__ inline void run_gemm2(GM_ADDR w2_table, GM_ADDR workspace,
                                 const eplb_native::kernels::FusedMoeTilingData& t) {
    const eplb_native::kernels::Workspace ws = eplb_native::kernels::carve_workspace(workspace, t);
    eplb_native::kernels::VectorGroupedGemm<T, 1> gemm;
    gemm.Init(w2_table, ws.act, ws.y, ws.offsets, t, t.intermediate, t.hidden,
              t.gemm2_reduce_chunk);
    gemm.Process();
}

}  // namespace

extern "C" __global__ __aicore__ void moe_gemm2(GM_ADDR w2_table, GM_ADDR workspace,
                                                GM_ADDR tiling) {
    KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);
    eplb_native::kernels::FusedMoeTilingData t;
    eplb_native::kernels::load_tiling(tiling, t);
    if (t.tiling_key != static_cast<int32_t>(eplb_native::shared::TilingKey::kVectorGemm)) {
        return;
    }
    if (t.act_dtype == static_cast<int32_t>(eplb_native::shared::DType::kBFloat16)) {
        run_gemm2<bfloat16_t>(w2_table, workspace, t);
    } else {
        run_gemm2<half>(w2_table, workspace, t);
    }
}
