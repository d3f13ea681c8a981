// moe_gemm1 (AIC, multi-core): GEMM1 of fused_moe_decode on the cube unit. For every workspace
// row r of expert e: h1[r, :] = x_rows[r, :] @ w1[e] ([H, 2I], gate columns then up columns),
// fp32 accumulators for bf16/fp16 weights, int32 for int8 weights (W8A8, x_rows holding the
// per-row int8 codes). w1[e] is found through the device pointer table w1_table (uint64 [E])
// built from the tensor list. moe_swiglu turns h1 into the SwiGLU output.

#include "cube_grouped_gemm.h"

extern "C" __global__ __aicore__ void moe_gemm1(GM_ADDR w1_table, GM_ADDR workspace,
                                                GM_ADDR tiling) {
    KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIC_ONLY);
    eplb_native::kernels::FusedMoeTilingData t;
    eplb_native::kernels::load_tiling(tiling, t);
    const eplb_native::kernels::Workspace ws = eplb_native::kernels::carve_workspace(workspace, t);
    eplb_native::kernels::run_cube_gemm(w1_table, ws.x_rows, ws.h1, ws.offsets, t, t.hidden,
                                        eplb_native::shared::w1_cols(t.intermediate),
                                        t.h1_stride);
}
