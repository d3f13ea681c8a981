// moe_gemm1_swiglu (AIV, multi-core): GEMM1 + SwiGLU of fused_moe_decode (design §7.2 steps 4-5).
// For every workspace row r of expert e: h1 = x_perm[r, :] @ w1[e] (fp32, ascending d), then
// a[r, j] = round(silu(h1[r, j]) * h1[r, I + j]) into the workspace. w1[e] is found through the
// device pointer table w1_table (uint64 [E]) built from the tensor list. Tiling key 0 selects
// the vector-core GEMM; key 1 is reserved for the cube path.

#include "vector_grouped_gemm.h"

namespace {

template <typename T>
__aicore__ inline void run_gemm1(GM_ADDR w1_table, GM_ADDR workspace,
                                 const eplb_native::kernels::FusedMoeTilingData& t) {
    const eplb_native::kernels::Workspace ws = eplb_native::kernels::carve_workspace(workspace, t);
    eplb_native::kernels::VectorGroupedGemm<T, 2> gemm;
    gemm.Init(w1_table, ws.x_perm, ws.act, ws.offsets, t, t.hidden, t.intermediate,
              t.gemm1_reduce_chunk);
    gemm.Process();
}

}  // namespace

extern "C" __global__ __aicore__ void moe_gemm1_swiglu(GM_ADDR w1_table, GM_ADDR workspace,
                                                       GM_ADDR tiling) {
    KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);
    eplb_native::kernels::FusedMoeTilingData t;
    eplb_native::kernels::load_tiling(tiling, t);
    if (t.tiling_key != static_cast<int32_t>(eplb_native::shared::TilingKey::kVectorGemm)) {
        return;  // the host only emits kVectorGemm until the cube path lands
    }
    if (t.act_dtype == static_cast<int32_t>(eplb_native::shared::DType::kBFloat16)) {
        run_gemm1<bfloat16_t>(w1_table, workspace, t);
    } else {
        run_gemm1<half>(w1_table, workspace, t);
    }
}
