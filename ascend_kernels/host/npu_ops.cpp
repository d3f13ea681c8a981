// torch_npu binding of eplb_native::fused_moe_decode for the PrivateUse1 (NPU) key.
//
// The schema is defined in Python (eplb_native/ops/schema.py); this library only adds the NPU
// implementation, so it must be loaded after the schema exists. One call validates the tensors
// (W8A8: int8 weights with fp32 or activation-dtype scale lists, the published
// DispatchGmmCombineDecode rule), builds the host tiling (csrc/src/tiling, shared with gtest),
// looks up the cached device copies of the tiling block and of the weight and scale pointer
// tables, allocates the outputs and the workspace, and enqueues the six kernels in order on the
// current NPU stream through torch_npu's task queue (OpCommand::RunOpApi):
//   moe_route_count -> moe_permute -> moe_gemm1 (cube) -> moe_swiglu -> moe_gemm2 (cube)
//   -> moe_combine.

#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "torch_npu/csrc/core/npu/NPUFunctions.h"
#include "torch_npu/csrc/core/npu/NPUStream.h"
#include "torch_npu/csrc/framework/OpCommand.h"

#include "acl/acl_base.h"
#include "acl/acl_rt.h"

#ifdef EPLB_USE_LAUNCH_PROTOS
#include "kernel_launch_protos.h"
#else
#include "aclrtlaunch_moe_combine.h"
#include "aclrtlaunch_moe_gemm1.h"
#include "aclrtlaunch_moe_gemm2.h"
#include "aclrtlaunch_moe_permute.h"
#include "aclrtlaunch_moe_route_count.h"
#include "aclrtlaunch_moe_swiglu.h"
#endif

#include "eplb_native/operator/shared/fused_moe_params.h"
#include "eplb_native/operator/shared/fused_moe_tiling_data.h"
#include "eplb_native/operator/tiling/fused_moe_tiling.h"
#include "eplb_native/operator/tiling/pointer_table_cache.h"

namespace eplb_native::npu {
namespace {

using shared::DType;
using shared::FusedMoeParams;
using shared::FusedMoeTilingData;
using shared::LoadMode;

// Device copies of tiling blocks and weight pointer tables, keyed by their contents. Tables of
// every MoE layer stay resident (two per layer); a weight swapped by EPLB changes the key.
constexpr size_t kTableCacheCapacity = 1024;

struct DeviceTables {
    std::mutex mutex;
    tiling::PointerTableCache<at::Tensor> tilings{kTableCacheCapacity};
    tiling::PointerTableCache<at::Tensor> weights{kTableCacheCapacity};
    std::unordered_map<c10::DeviceIndex, tiling::DeviceSpec> devices;  // core counts, asked once
};

DeviceTables& device_tables() {
    static DeviceTables tables;  // process-wide cache of device buffers, guarded by its mutex
    return tables;
}

// Copies host words to a new int64 tensor on `device` (stream-ordered copy).
at::Tensor upload_words(const std::vector<uint64_t>& words, const c10::Device& device) {
    at::Tensor host = at::empty({static_cast<int64_t>(words.size())},
                                at::TensorOptions().dtype(at::kLong).device(at::kCPU));
    std::memcpy(host.data_ptr(), words.data(), words.size() * sizeof(uint64_t));
    return host.to(device);
}

void check_arg(bool ok, const std::string& field, const std::string& message) {
    TORCH_CHECK_VALUE(ok, field, ": ", message);
}

std::string shape_of(const at::Tensor& t) { return c10::str(t.sizes()); }

void check_npu_contiguous(const at::Tensor& t, const std::string& field,
                          const c10::Device& device) {
    check_arg(t.device() == device, field,
              "expected a tensor on " + device.str() + ", got " + t.device().str());
    check_arg(t.is_contiguous(), field, "expected a contiguous tensor");
}

DType act_dtype_of(const at::Tensor& x) {
    if (x.scalar_type() == at::kBFloat16) {
        return DType::kBFloat16;
    }
    check_arg(x.scalar_type() == at::kHalf, "x",
              std::string("expected bfloat16 or float16, got ") + c10::toString(x.scalar_type()));
    return DType::kFloat16;
}

// Weights (dtype of x, or int8 under W8A8) of shape [rows, cols], or empty (expert unused).
void check_weight_list(at::TensorList weights, const std::string& field, int64_t rows,
                       int64_t cols, at::ScalarType dtype, const at::Tensor& x) {
    for (size_t e = 0; e < weights.size(); ++e) {
        const at::Tensor& w = weights[e];
        const std::string name = field + "[" + std::to_string(e) + "]";
        check_arg(w.scalar_type() == dtype, name,
                  std::string("expected ") + c10::toString(dtype) + ", got " +
                      c10::toString(w.scalar_type()));
        if (w.numel() == 0) {
            continue;  // allowed for an expert that receives no token (table entry 0)
        }
        check_arg(w.dim() == 2 && w.size(0) == rows && w.size(1) == cols, name,
                  "expected shape [" + std::to_string(rows) + ", " + std::to_string(cols) +
                      "], got " + shape_of(w));
        check_npu_contiguous(w, name, x.device());
    }
}

DType scale_dtype_of(at::ScalarType type) {
    switch (type) {
        case at::kFloat:
            return DType::kFloat32;
        case at::kHalf:
            return DType::kFloat16;
        case at::kBFloat16:
            return DType::kBFloat16;
        default:
            return DType::kInt8;  // rejected by the tiling's scale-dtype rule
    }
}

// One W8A8 scale list: E entries [cols] (or empty), one dtype. Returns that dtype.
DType check_scale_list(at::TensorList scales, const std::string& field, int64_t experts,
                       int64_t cols, const at::Tensor& x) {
    check_arg(static_cast<int64_t>(scales.size()) == experts, field,
              "expected " + std::to_string(experts) + " tensors (one per expert), got " +
                  std::to_string(scales.size()));
    for (size_t e = 0; e < scales.size(); ++e) {
        const at::Tensor& s = scales[e];
        const std::string name = field + "[" + std::to_string(e) + "]";
        check_arg(s.scalar_type() == scales[0].scalar_type(), name,
                  "every scale of the list must have the dtype of " + field + "[0]");
        if (s.numel() == 0) {
            continue;
        }
        check_arg(s.dim() == 1 && s.size(0) == cols, name,
                  "expected shape [" + std::to_string(cols) + "], got " + shape_of(s));
        check_npu_contiguous(s, name, x.device());
    }
    return scale_dtype_of(scales[0].scalar_type());
}

// I from the first non-empty weight (w1[e] is [H, 2I], w2[e] is [I, H]).
int64_t intermediate_of(at::TensorList w1, at::TensorList w2) {
    for (size_t e = 0; e < w1.size(); ++e) {
        if (w1[e].numel() != 0) {
            const std::string name = "w1[" + std::to_string(e) + "]";
            check_arg(w1[e].dim() == 2 && w1[e].size(1) % 2 == 0, name,
                      "expected [H, 2I], got " + shape_of(w1[e]));
            return w1[e].size(1) / 2;
        }
    }
    for (const at::Tensor& w : w2) {
        if (w.numel() != 0) {
            check_arg(w.dim() == 2, "w2", "expected [I, H] tensors, got " + shape_of(w));
            return w.size(0);
        }
    }
    check_arg(false, "w1", "every expert weight is empty: I cannot be inferred");
    return 0;
}

// Shapes and modes of the call; every tensor checked against them.
FusedMoeParams validate(const at::Tensor& x, const at::Tensor& expert_ids,
                        const at::Tensor& expert_scales, at::TensorList w1, at::TensorList w2,
                        const std::optional<at::Tensor>& x_active_mask,
                        const std::optional<at::Tensor>& moe_load,
                        const std::optional<at::Tensor>& load_counter,
                        const std::optional<at::TensorList>& w1_scale,
                        const std::optional<at::TensorList>& w2_scale) {
    const c10::Device device = x.device();
    check_arg(x.dim() == 2, "x", "expected [BS, H], got " + shape_of(x));
    check_npu_contiguous(x, "x", device);
    FusedMoeParams p{};
    p.act_dtype = act_dtype_of(x);
    p.num_tokens = x.size(0);
    p.hidden = x.size(1);
    check_arg(expert_ids.dim() == 2 && expert_ids.size(0) == p.num_tokens, "expert_ids",
              "expected [BS, K] with BS = x.shape[0], got " + shape_of(expert_ids));
    check_arg(expert_ids.scalar_type() == at::kInt, "expert_ids", "expected int32");
    check_npu_contiguous(expert_ids, "expert_ids", device);
    p.top_k = expert_ids.size(1);
    check_arg(expert_scales.sizes() == expert_ids.sizes(), "expert_scales",
              "expected the shape of expert_ids, got " + shape_of(expert_scales));
    check_arg(expert_scales.scalar_type() == at::kFloat, "expert_scales", "expected float32");
    check_npu_contiguous(expert_scales, "expert_scales", device);

    p.num_experts = static_cast<int64_t>(w1.size());
    check_arg(p.num_experts >= 1, "w1", "expected one weight per local expert, got none");
    check_arg(w2.size() == w1.size(), "w2",
              "expected " + std::to_string(w1.size()) + " tensors (one per w1 tensor), got " +
                  std::to_string(w2.size()));
    p.intermediate = intermediate_of(w1, w2);
    // W8A8 when scales are given or the weights are int8; then both scale lists are required.
    const bool int8 = std::any_of(w1.begin(), w1.end(),
                                  [](const at::Tensor& w) { return w.scalar_type() == at::kChar; });
    p.w8a8 = int8 || w1_scale.has_value() || w2_scale.has_value() ? 1 : 0;
    const at::ScalarType weight_type = p.w8a8 != 0 ? at::kChar : x.scalar_type();
    check_weight_list(w1, "w1", p.hidden, 2 * p.intermediate, weight_type, x);
    check_weight_list(w2, "w2", p.intermediate, p.hidden, weight_type, x);
    p.w1_scale_dtype = DType::kFloat32;
    p.w2_scale_dtype = DType::kFloat32;
    if (p.w8a8 != 0) {
        check_arg(w1_scale.has_value() && w2_scale.has_value(),
                  w1_scale.has_value() ? "w2_scale" : "w1_scale",
                  "int8 weights (W8A8) need both scale lists");
        p.w1_scale_dtype = check_scale_list(*w1_scale, "w1_scale", p.num_experts,
                                            2 * p.intermediate, x);
        p.w2_scale_dtype = check_scale_list(*w2_scale, "w2_scale", p.num_experts, p.hidden, x);
    }

    p.has_mask = x_active_mask.has_value() ? 1 : 0;
    if (x_active_mask) {
        check_arg(x_active_mask->dim() == 1 && x_active_mask->size(0) == p.num_tokens,
                  "x_active_mask", "expected [BS], got " + shape_of(*x_active_mask));
        check_arg(x_active_mask->scalar_type() == at::kBool, "x_active_mask", "expected bool");
        check_npu_contiguous(*x_active_mask, "x_active_mask", device);
    }

    p.load_mode = LoadMode::kNone;
    p.load_steps = 0;
    if (moe_load) {
        check_npu_contiguous(*moe_load, "moe_load", device);
        if (moe_load->dim() == 1) {
            check_arg(moe_load->scalar_type() == at::kLong && moe_load->size(0) == p.num_experts,
                      "moe_load", "expected int64 [E] or int32 [T, E], got " +
                                      shape_of(*moe_load));
            check_arg(!load_counter.has_value(), "load_counter",
                      "only used with a 2-D int32 moe_load ring");
            p.load_mode = LoadMode::kTotal;
        } else {
            check_arg(moe_load->dim() == 2 && moe_load->scalar_type() == at::kInt &&
                          moe_load->size(1) == p.num_experts,
                      "moe_load", "expected int64 [E] or int32 [T, E], got " +
                                      shape_of(*moe_load));
            check_arg(load_counter.has_value(), "load_counter",
                      "required when moe_load is a 2-D ring");
            check_arg(load_counter->numel() == 1 && load_counter->scalar_type() == at::kInt,
                      "load_counter", "expected an int32 scalar tensor");
            check_npu_contiguous(*load_counter, "load_counter", device);
            p.load_mode = LoadMode::kRing;
            p.load_steps = moe_load->size(0);
        }
    } else {
        check_arg(!load_counter.has_value(), "load_counter", "given without moe_load");
    }
    return p;
}

int32_t core_count(c10::DeviceIndex device, aclDeviceInfo info, const char* what) {
    int64_t cores = 0;
    const aclError status = aclGetDeviceCapability(static_cast<uint32_t>(device), info, &cores);
    TORCH_CHECK(status == ACL_SUCCESS && cores > 0, "fused_moe_decode: aclGetDeviceCapability(",
                what, ") failed with ", status);
    return static_cast<int32_t>(cores);
}

tiling::DeviceSpec device_spec(c10::DeviceIndex device) {
    tiling::DeviceSpec spec;
    spec.num_vector_cores = core_count(device, ACL_DEVICE_INFO_VECTOR_CORE_NUM, "VECTOR_CORE_NUM");
    spec.num_cube_cores = core_count(device, ACL_DEVICE_INFO_AI_CORE_NUM, "AI_CORE_NUM");
    return spec;
}

std::vector<uint64_t> pointer_words(at::TensorList weights) {
    std::vector<uint64_t> words;
    words.reserve(weights.size());
    for (const at::Tensor& w : weights) {
        // 0 for an empty tensor: the kernels never dereference it for an expert without rows.
        words.push_back(w.numel() == 0 ? 0 : reinterpret_cast<uint64_t>(w.data_ptr()));
    }
    return words;
}

void* data_or_null(const std::optional<at::Tensor>& t) {
    return t.has_value() ? t->data_ptr() : nullptr;
}

std::tuple<at::Tensor, at::Tensor> fused_moe_decode_npu(
    const at::Tensor& x, const at::Tensor& expert_ids, const at::Tensor& expert_scales,
    at::TensorList w1, at::TensorList w2, const std::optional<at::Tensor>& x_active_mask,
    const std::optional<at::Tensor>& moe_load, const std::optional<at::Tensor>& load_counter,
    std::optional<at::TensorList> w1_scale, std::optional<at::TensorList> w2_scale) {
    const FusedMoeParams params = validate(x, expert_ids, expert_scales, w1, w2, x_active_mask,
                                           moe_load, load_counter, w1_scale, w2_scale);
    const c10::DeviceIndex device_index = x.device().index();
    DeviceTables& tables = device_tables();
    tiling::DeviceSpec spec;
    {
        const std::lock_guard<std::mutex> lock(tables.mutex);
        auto found = tables.devices.find(device_index);
        if (found == tables.devices.end()) {
            found = tables.devices.emplace(device_index, device_spec(device_index)).first;
        }
        spec = found->second;
    }
    FusedMoeTilingData t{};
    try {
        t = tiling::make_fused_moe_tiling(params, spec);
    } catch (const std::invalid_argument& error) {
        TORCH_CHECK_VALUE(false, error.what());
    }

    at::Tensor tiling_dev;
    at::Tensor w1_table;
    at::Tensor w2_table;
    at::Tensor w1_scale_table;
    at::Tensor w2_scale_table;
    {
        const std::lock_guard<std::mutex> lock(tables.mutex);
        const auto upload = [&x](const std::vector<uint64_t>& words) {
            return upload_words(words, x.device());
        };
        tiling_dev = tables.tilings.get(device_index, tiling::pod_words(t), upload);
        w1_table = tables.weights.get(device_index, pointer_words(w1), upload);
        w2_table = tables.weights.get(device_index, pointer_words(w2), upload);
        if (params.w8a8 != 0) {
            w1_scale_table = tables.weights.get(device_index, pointer_words(*w1_scale), upload);
            w2_scale_table = tables.weights.get(device_index, pointer_words(*w2_scale), upload);
        }
    }

    at::Tensor out = at::empty_like(x);
    at::Tensor expert_token_nums = at::empty({params.num_experts}, x.options().dtype(at::kLong));
    at::Tensor workspace = at::empty({t.ws_bytes}, x.options().dtype(at::kByte));

    // Raw addresses for the launchers; the lambda also holds the tensors so that every buffer
    // outlives the deferred launch on torch_npu's task queue.
    void* ids_ptr = expert_ids.data_ptr();
    void* mask_ptr = data_or_null(x_active_mask);
    void* token_nums_ptr = expert_token_nums.data_ptr();
    void* load_ptr = data_or_null(moe_load);
    void* counter_ptr = data_or_null(load_counter);
    void* x_ptr = x.data_ptr();
    void* scales_ptr = expert_scales.data_ptr();
    void* out_ptr = out.data_ptr();
    void* ws_ptr = workspace.data_ptr();
    void* tiling_ptr = tiling_dev.data_ptr();
    void* w1_ptr = w1_table.data_ptr();
    void* w2_ptr = w2_table.data_ptr();
    void* w1_scale_ptr = params.w8a8 != 0 ? w1_scale_table.data_ptr() : nullptr;
    void* w2_scale_ptr = params.w8a8 != 0 ? w2_scale_table.data_ptr() : nullptr;
    const aclrtStream stream = c10_npu::getCurrentNPUStream(device_index).stream(false);
    std::vector<at::Tensor> keep_alive = {x,          expert_ids, expert_scales, out,
                                          expert_token_nums, workspace, tiling_dev, w1_table,
                                          w2_table};
    for (const std::optional<at::Tensor>* given : {&x_active_mask, &moe_load, &load_counter}) {
        if (given->has_value()) {
            keep_alive.push_back(**given);
        }
    }
    if (params.w8a8 != 0) {
        keep_alive.push_back(w1_scale_table);
        keep_alive.push_back(w2_scale_table);
    }
    at_npu::native::OpCommand::RunOpApi("EplbFusedMoeDecode", [=]() -> int {
        (void)keep_alive;
        uint32_t status = aclrtlaunch_moe_route_count(
            static_cast<uint32_t>(t.route_blocks), stream, ids_ptr, mask_ptr, token_nums_ptr,
            load_ptr, counter_ptr, ws_ptr, tiling_ptr);
        if (status == 0) {
            status = aclrtlaunch_moe_permute(static_cast<uint32_t>(t.permute_blocks), stream,
                                             x_ptr, ws_ptr, tiling_ptr);
        }
        if (status == 0) {
            status = aclrtlaunch_moe_gemm1(static_cast<uint32_t>(t.gemm1_blocks), stream, w1_ptr,
                                           ws_ptr, tiling_ptr);
        }
        if (status == 0) {
            status = aclrtlaunch_moe_swiglu(static_cast<uint32_t>(t.swiglu_blocks), stream,
                                            w1_scale_ptr, ws_ptr, tiling_ptr);
        }
        if (status == 0) {
            status = aclrtlaunch_moe_gemm2(static_cast<uint32_t>(t.gemm2_blocks), stream, w2_ptr,
                                           ws_ptr, tiling_ptr);
        }
        if (status == 0) {
            status = aclrtlaunch_moe_combine(static_cast<uint32_t>(t.combine_blocks), stream,
                                             ids_ptr, scales_ptr, w2_scale_ptr, out_ptr, ws_ptr,
                                             tiling_ptr);
        }
        return static_cast<int>(status);
    });
    return {out, expert_token_nums};
}

}  // namespace
}  // namespace eplb_native::npu

TORCH_LIBRARY_IMPL(eplb_native, PrivateUse1, m) {
    m.impl("fused_moe_decode", TORCH_FN(eplb_native::npu::fused_moe_decode_npu));
}
