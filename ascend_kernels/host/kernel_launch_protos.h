#pragma once
// Launchers of the kernels in ascend_kernels/kernels/, as ascendc_library generates them into
// <build>/include/eplb_ascend_kernels/aclrtlaunch_<kernel>.h: one extern "C" function per
// kernel entry, (blockDim, stream, then one void* per GM_ADDR parameter in order), returning 0
// on success. Used instead of the generated headers when the binding is only compile-checked
// (EPLB_NPU_COMPILE_CHECK, no CANN). tests/operator/python/test_kernel_signatures.py checks that
// this file, the kernel entry points and the binding's calls agree.

#include <cstdint>

#include "acl/acl_base.h"

extern "C" uint32_t aclrtlaunch_moe_route_count(uint32_t blockDim, aclrtStream stream,
                                                void* expert_ids, void* x_active_mask,
                                                void* expert_token_nums, void* moe_load,
                                                void* load_counter, void* workspace,
                                                void* tiling);

extern "C" uint32_t aclrtlaunch_moe_permute(uint32_t blockDim, aclrtStream stream, void* x,
                                            void* workspace, void* tiling);

extern "C" uint32_t aclrtlaunch_moe_gemm1(uint32_t blockDim, aclrtStream stream, void* w1_table,
                                          void* workspace, void* tiling);

extern "C" uint32_t aclrtlaunch_moe_swiglu(uint32_t blockDim, aclrtStream stream,
                                           void* w1_scale_table, void* workspace, void* tiling);

extern "C" uint32_t aclrtlaunch_moe_gemm2(uint32_t blockDim, aclrtStream stream, void* w2_table,
                                          void* workspace, void* tiling);

extern "C" uint32_t aclrtlaunch_moe_combine(uint32_t blockDim, aclrtStream stream,
                                            void* expert_ids, void* expert_scales,
                                            void* w2_scale_table, void* out, void* workspace,
                                            void* tiling);
