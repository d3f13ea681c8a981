// Link-time stand-ins for the CANN / torch_npu runtime symbols the binding uses, for the
// compile-check build only (EPLB_NPU_COMPILE_CHECK, no CANN): they let the binding link into a
// module that a CPU-only torch can load, which proves that the C++ signature registered by
// TORCH_LIBRARY_IMPL matches the Python schema of eplb_native::fused_moe_decode (a mismatch
// aborts at load time). None of them is ever called: the check only loads the module.

#include <cstdint>
#include <stdexcept>
#include <string>

#include "acl/acl_base.h"
#include "acl/acl_rt.h"
#include "kernel_launch_protos.h"
#include "torch_npu/csrc/core/npu/NPUStream.h"
#include "torch_npu/csrc/framework/OpCommand.h"

namespace {
[[noreturn]] void not_a_device(const char* what) {
    throw std::runtime_error(std::string(what) + ": compile-check stub, no NPU runtime");
}
}  // namespace

namespace c10_npu {
NPUStream getCurrentNPUStream(c10::DeviceIndex) { not_a_device("getCurrentNPUStream"); }
aclrtStream NPUStream::stream(const bool) const { not_a_device("NPUStream::stream"); }
}  // namespace c10_npu

namespace at_npu::native {
void OpCommand::RunOpApi(const std::string&, PROC_FUNC, bool) { not_a_device("RunOpApi"); }
}  // namespace at_npu::native

extern "C" aclError aclGetDeviceCapability(uint32_t, aclDeviceInfo, int64_t*) { return 1; }

extern "C" uint32_t aclrtlaunch_moe_route_count(uint32_t, aclrtStream, void*, void*, void*, void*,
                                                void*, void*, void*) {
    return 1;
}
extern "C" uint32_t aclrtlaunch_moe_permute(uint32_t, aclrtStream, void*, void*, void*) {
    return 1;
}
extern "C" uint32_t aclrtlaunch_moe_gemm1(uint32_t, aclrtStream, void*, void*, void*) {
    return 1;
}
extern "C" uint32_t aclrtlaunch_moe_swiglu(uint32_t, aclrtStream, void*, void*, void*) {
    return 1;
}
extern "C" uint32_t aclrtlaunch_moe_gemm2(uint32_t, aclrtStream, void*, void*, void*) {
    return 1;
}
extern "C" uint32_t aclrtlaunch_moe_combine(uint32_t, aclrtStream, void*, void*, void*, void*,
                                            void*, void*) {
    return 1;
}
