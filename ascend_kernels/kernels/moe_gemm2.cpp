// moe_gemm2 (AIC, multi-core): GEMM2 of fused_moe_decode on the cube unit. For every workspace
// row r of expert e: h2[r, :] = act[r, :] @ w2[e] ([I, H]), fp32 accumulators for bf16/fp16
// weights, int32 for int8 weights (W8A8, act holding the per-row int8 codes of the SwiGLU
// output). w2[e] comes from the device pointer table w2_table (uint64 [E]). moe_combine rounds
// (and under W8A8 dequantises) h2 while it sums the top-k rows of each token.

#include "cube_grouped_gemm.h"

extern "C" __global__ __aicore__ void moe_gemm2(GM_ADDR w2_table, GM_ADDR workspace,
                                                GM_ADDR tiling) {
    KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIC_ONLY);
    eplb_native::kernels::FusedMoeTilingData t;
    eplb_native::kernels::load_tiling(tiling, t);
    const eplb_native::kernels::Workspace ws = eplb_native::kernels::carve_workspace(workspace, t);
    eplb_native::kernels::run_cube_gemm(w2_table, ws.act, ws.h2, ws.offsets, t, t.intermediate,
                                        t.hidden, t.h2_stride);
}
