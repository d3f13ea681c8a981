// Bindings of the fused decode MoE CPU reference. Operates on the caller's numpy buffers in
// place (no copies: torch hands over `tensor.view(torch.int16).numpy()`-style views), validates
// every argument by name, and releases the GIL around the computation.

#include <array>
#include <string>
#include <vector>

#include "bindings.h"
#include "eplb_native/operator/reference/fused_moe_decode_ref.h"
#include "eplb_native/operator/tiling/fused_moe_tiling.h"
#include "eplb_native/thread_pool.h"
#include "numpy_views.h"
#include "shared_pool.h"

namespace eplb_native::bindings {
namespace {

using shared::DType;
using shared::LoadMode;

[[noreturn]] void throw_type(const std::string& field, const std::string& message) {
    throw py::type_error(field + ": " + message);
}

std::vector<int64_t> shape_vec(const py::array& array) {
    std::vector<int64_t> shape(static_cast<size_t>(array.ndim()));
    for (py::ssize_t d = 0; d < array.ndim(); ++d) {
        shape[static_cast<size_t>(d)] = static_cast<int64_t>(array.shape(d));
    }
    return shape;
}

py::array as_array(const py::handle& object, const std::string& field) {
    if (!py::isinstance<py::array>(object)) {
        throw_type(field, "expected a numpy array, got " +
                              std::string(py::str(py::type::of(object).attr("__name__"))));
    }
    return py::reinterpret_borrow<py::array>(object);
}

py::list as_list(const py::object& object, const std::string& field) {
    if (!py::isinstance<py::list>(object)) {
        throw_type(field, "expected a list of numpy arrays");
    }
    return py::reinterpret_borrow<py::list>(object);
}

std::string dtype_name(const py::array& array) { return py::str(array.dtype()); }

// C-contiguous with exactly `shape`; optionally writable.
void require_layout(const py::array& array, const std::string& field,
                    const std::vector<int64_t>& shape, bool writable) {
    if (shape_vec(array) != shape) {
        throw_invalid(field, "expected shape " + shape_str(shape) + ", got " +
                                 shape_str(shape_vec(array)));
    }
    if ((array.flags() & py::array::c_style) == 0) {
        throw_invalid(field, "must be C-contiguous");
    }
    if (writable && !array.writeable()) {
        throw_invalid(field, "must be writable (it is updated in place)");
    }
}

void require_dtype(const py::array& array, const std::string& field, char kind, int itemsize,
                   const std::string& expected) {
    if (array.dtype().kind() != kind || array.itemsize() != itemsize) {
        throw_type(field, "expected dtype " + expected + ", got " + dtype_name(array));
    }
}

// Activations and weights: raw 16-bit bits (int16/uint16, or float16 for fp16) or float32.
void require_act_dtype(const py::array& array, const std::string& field, DType dtype) {
    const char kind = array.dtype().kind();
    bool ok = false;
    if (dtype == DType::kFloat32) {
        ok = kind == 'f' && array.itemsize() == 4;
    } else {
        ok = array.itemsize() == 2 &&
             (kind == 'i' || kind == 'u' || (kind == 'f' && dtype == DType::kFloat16));
    }
    if (!ok) {
        throw_type(field, "expected " +
                              std::string(dtype == DType::kFloat32
                                              ? "float32"
                                              : "16-bit raw bits (int16/uint16 view)") +
                              " for the activation dtype, got " + dtype_name(array));
    }
}

DType parse_dtype(const std::string& name, const std::string& field) {
    if (name == "bfloat16") {
        return DType::kBFloat16;
    }
    if (name == "float16") {
        return DType::kFloat16;
    }
    if (name == "float32") {
        return DType::kFloat32;
    }
    if (name == "int8") {
        throw_invalid(field, "int8 is not an activation/scale dtype; W8A8 takes int8 weights "
                             "plus w1_scale and w2_scale");
    }
    throw_invalid(field, "expected one of 'bfloat16', 'float16', 'float32', got '" + name + "'");
}

// Per-expert weights: each C-contiguous `shape`, or empty (0 elements) for unused experts.
// (W8A8: weights are int8; scales are DType-tagged like activations.)
std::vector<const void*> weight_pointers(const py::list& weights, const std::string& field,
                                         const std::vector<int64_t>& shape, DType dtype,
                                         int64_t num_experts, bool int8) {
    if (static_cast<int64_t>(weights.size()) != num_experts) {
        throw_invalid(field, "expected " + std::to_string(num_experts) + " weights (one per "
                             "expert, as in w1), got " + std::to_string(weights.size()));
    }
    std::vector<const void*> pointers;
    for (size_t e = 0; e < weights.size(); ++e) {
        const std::string name = field + "[" + std::to_string(e) + "]";
        const py::array w = as_array(weights[e], name);
        if (int8) {
            require_dtype(w, name, 'i', 1, "int8 (W8A8 mode)");
        } else {
            require_act_dtype(w, name, dtype);
        }
        if (w.size() == 0) {
            pointers.push_back(nullptr);
            continue;
        }
        require_layout(w, name, shape, false);
        pointers.push_back(w.data());
    }
    return pointers;
}

// w1, w2 (and the W8A8 scale lists with their dtype names) into `in`; sets I (from the first
// non-empty w2: all are checked against it) and the W8A8 fields of `p`.
void bind_weights(const py::list& w1, const py::list& w2, const std::array<py::object, 2>& scales,
                  const std::array<std::string, 2>& scale_dtypes, shared::FusedMoeParams& p,
                  reference::FusedMoeInputs& in) {
    p.intermediate = 0;
    for (const auto& item : w2) {
        const py::array w = as_array(item, "w2");
        if (w.size() > 0 && w.ndim() == 2) {
            p.intermediate = w.shape(0);
            break;
        }
    }
    const bool w8a8 = !scales[0].is_none() || !scales[1].is_none();
    if (w8a8 && (scales[0].is_none() || scales[1].is_none())) {
        throw_invalid(scales[0].is_none() ? "w1_scale" : "w2_scale",
                      "W8A8 needs both w1_scale and w2_scale");
    }
    if (p.intermediate > 0) {
        in.w1 = weight_pointers(w1, "w1", {p.hidden, 2 * p.intermediate}, p.act_dtype,
                                p.num_experts, w8a8);
        in.w2 = weight_pointers(w2, "w2", {p.intermediate, p.hidden}, p.act_dtype,
                                p.num_experts, w8a8);
    } else {
        in.w1.assign(static_cast<size_t>(p.num_experts), nullptr);
        in.w2 = weight_pointers(w2, "w2", {0, p.hidden}, p.act_dtype, p.num_experts, w8a8);
        p.intermediate = 1;  // every weight is empty: only valid if no expert receives rows
    }
    if (w8a8) {
        p.w8a8 = 1;
        p.w1_scale_dtype = parse_dtype(scale_dtypes[0], "w1_scale_dtype");
        p.w2_scale_dtype = parse_dtype(scale_dtypes[1], "w2_scale_dtype");
        in.w1_scale = weight_pointers(as_list(scales[0], "w1_scale"), "w1_scale",
                                      {2 * p.intermediate}, p.w1_scale_dtype, p.num_experts,
                                      false);
        in.w2_scale = weight_pointers(as_list(scales[1], "w2_scale"), "w2_scale", {p.hidden},
                                      p.w2_scale_dtype, p.num_experts, false);
    }
}

// moe_load (int64 [E] total or int32 [T, E] ring) and load_counter (int32 [], with the ring)
// into `o`; sets the load mode of `p`.
void bind_load(const py::object& moe_load, const py::object& load_counter,
               shared::FusedMoeParams& p, reference::FusedMoeOutputs& o) {
    p.load_mode = LoadMode::kNone;
    if (!moe_load.is_none()) {
        py::array load = as_array(moe_load, "moe_load");
        if (load.ndim() == 1) {
            require_dtype(load, "moe_load", 'i', 8, "int64 (1-D [E])");
            require_layout(load, "moe_load", {p.num_experts}, true);
            if (!load_counter.is_none()) {
                throw_invalid("load_counter", "only allowed with a 2-D ring moe_load [T, E]");
            }
            p.load_mode = LoadMode::kTotal;
            o.moe_load_total = static_cast<int64_t*>(load.mutable_data());
        } else if (load.ndim() == 2) {
            require_dtype(load, "moe_load", 'i', 4, "int32 (2-D ring [T, E])");
            require_layout(load, "moe_load", {load.shape(0), p.num_experts}, true);
            if (load_counter.is_none()) {
                throw_invalid("load_counter", "required with a 2-D ring moe_load [T, E]");
            }
            py::array counter = as_array(load_counter, "load_counter");
            require_dtype(counter, "load_counter", 'i', 4, "int32");
            require_layout(counter, "load_counter", {}, true);
            p.load_mode = LoadMode::kRing;
            p.load_steps = load.shape(0);
            o.moe_load_ring = static_cast<int32_t*>(load.mutable_data());
            o.load_counter = static_cast<int32_t*>(counter.mutable_data());
        } else {
            throw_invalid("moe_load", "expected int64 [E] or int32 [T, E], got shape " +
                                          shape_str(shape_vec(load)));
        }
    } else if (!load_counter.is_none()) {
        throw_invalid("load_counter", "given without moe_load");
    }
}

// Arguments arrive as plain objects so that nothing is converted (an implicit copy of an
// output would silently drop the results).
void fused_moe_decode_ref(const py::object& x_obj, const std::string& dtype_name_arg,
                          const py::object& ids_obj, const py::object& scales_obj,
                          const py::list& w1, const py::list& w2, const py::object& x_active_mask,
                          const py::object& out_obj, const py::object& counts_obj,
                          const py::object& moe_load, const py::object& load_counter,
                          int64_t num_threads, const py::object& w1_scale, const py::object& w2_scale,
                          const std::string& w1_scale_dtype, const std::string& w2_scale_dtype) {
    const py::array x = as_array(x_obj, "x");
    const py::array expert_ids = as_array(ids_obj, "expert_ids");
    const py::array expert_scales = as_array(scales_obj, "expert_scales");
    py::array out = as_array(out_obj, "out");
    py::array expert_token_nums = as_array(counts_obj, "expert_token_nums");
    shared::FusedMoeParams p{};
    p.act_dtype = parse_dtype(dtype_name_arg, "dtype");
    require_act_dtype(x, "x", p.act_dtype);
    if (x.ndim() != 2) {
        throw_invalid("x", "expected a 2-D array [BS, H], got shape " + shape_str(shape_vec(x)));
    }
    if (expert_ids.ndim() != 2) {
        throw_invalid("expert_ids", "expected a 2-D array [BS, K], got shape " +
                                        shape_str(shape_vec(expert_ids)));
    }
    p.num_tokens = x.shape(0);
    p.hidden = x.shape(1);
    p.top_k = expert_ids.shape(1);
    p.num_experts = static_cast<int64_t>(w1.size());
    require_layout(x, "x", {p.num_tokens, p.hidden}, false);
    require_dtype(expert_ids, "expert_ids", 'i', 4, "int32");
    require_layout(expert_ids, "expert_ids", {p.num_tokens, p.top_k}, false);
    require_dtype(expert_scales, "expert_scales", 'f', 4, "float32");
    require_layout(expert_scales, "expert_scales", {p.num_tokens, p.top_k}, false);
    if (p.num_experts < 1) {
        throw_invalid("w1", "needs at least one expert weight");
    }
    reference::FusedMoeInputs in;
    in.x = x.data();
    in.expert_ids = static_cast<const int32_t*>(expert_ids.data());
    in.expert_scales = static_cast<const float*>(expert_scales.data());
    bind_weights(w1, w2, {w1_scale, w2_scale}, {w1_scale_dtype, w2_scale_dtype}, p, in);
    if (!x_active_mask.is_none()) {
        const py::array mask = as_array(x_active_mask, "x_active_mask");
        require_dtype(mask, "x_active_mask", 'b', 1, "bool");
        require_layout(mask, "x_active_mask", {p.num_tokens}, false);
        p.has_mask = 1;
        in.x_active_mask = static_cast<const uint8_t*>(mask.data());
    }
    require_act_dtype(out, "out", p.act_dtype);
    require_layout(out, "out", {p.num_tokens, p.hidden}, true);
    require_dtype(expert_token_nums, "expert_token_nums", 'i', 8, "int64");
    require_layout(expert_token_nums, "expert_token_nums", {p.num_experts}, true);
    reference::FusedMoeOutputs o;
    o.out = out.mutable_data();
    o.expert_token_nums = static_cast<int64_t*>(expert_token_nums.mutable_data());
    bind_load(moe_load, load_counter, p, o);
    ThreadPool pool = shared_pool(num_threads);
    // The arrays stay referenced by the caller's arguments; the core touches no Python object.
    py::gil_scoped_release release;
    reference::fused_moe_decode(p, in, o, pool);
}

// The NPU kernels' tiling of one call, as a dict of the FusedMoeTilingData fields. Validates the
// call against the kernel limits first (std::invalid_argument -> ValueError naming the field).
py::dict fused_moe_npu_tiling(int64_t num_tokens, int64_t hidden, int64_t intermediate,
                              int64_t top_k, int64_t num_experts, const std::string& dtype,
                              const py::object& w1_scale_dtype, const py::object& w2_scale_dtype,
                              const std::string& load, int64_t load_steps, bool has_mask,
                              int32_t num_vector_cores, int32_t num_cube_cores) {
    shared::FusedMoeParams p{};
    p.num_tokens = num_tokens;
    p.hidden = hidden;
    p.intermediate = intermediate;
    p.top_k = top_k;
    p.num_experts = num_experts;
    p.act_dtype = parse_dtype(dtype, "dtype");
    if (w1_scale_dtype.is_none() != w2_scale_dtype.is_none()) {
        throw_invalid(w1_scale_dtype.is_none() ? "w1_scale" : "w2_scale",
                      "W8A8 needs both scale dtypes");
    }
    p.w8a8 = w1_scale_dtype.is_none() ? 0 : 1;
    p.w1_scale_dtype = p.w8a8 != 0 ? parse_dtype(py::cast<std::string>(w1_scale_dtype), "w1_scale")
                                   : DType::kFloat32;
    p.w2_scale_dtype = p.w8a8 != 0 ? parse_dtype(py::cast<std::string>(w2_scale_dtype), "w2_scale")
                                   : DType::kFloat32;
    if (load == "none") {
        p.load_mode = LoadMode::kNone;
    } else if (load == "total") {
        p.load_mode = LoadMode::kTotal;
    } else if (load == "ring") {
        p.load_mode = LoadMode::kRing;
    } else {
        throw_invalid("load", "expected 'none', 'total' or 'ring', got '" + load + "'");
    }
    p.load_steps = load_steps;
    p.has_mask = has_mask ? 1 : 0;
    tiling::DeviceSpec device;
    device.num_vector_cores = num_vector_cores;
    device.num_cube_cores = num_cube_cores;
    const shared::FusedMoeTilingData t = tiling::make_fused_moe_tiling(p, device);
    py::dict d;
    d["route_blocks"] = t.route_blocks;
    d["permute_blocks"] = t.permute_blocks;
    d["gemm1_blocks"] = t.gemm1_blocks;
    d["swiglu_blocks"] = t.swiglu_blocks;
    d["gemm2_blocks"] = t.gemm2_blocks;
    d["combine_blocks"] = t.combine_blocks;
    d["row_chunk"] = t.row_chunk;
    d["h1_stride"] = t.h1_stride;
    d["h2_stride"] = t.h2_stride;
    d["ws_bytes"] = t.ws_bytes;
    return d;
}

}  // namespace

void bind_reference(py::module_& m) {
    m.def("fused_moe_decode_ref", &fused_moe_decode_ref, py::arg("x"), py::arg("dtype"),
          py::arg("expert_ids"), py::arg("expert_scales"), py::arg("w1"), py::arg("w2"),
          py::arg("x_active_mask"), py::arg("out"), py::arg("expert_token_nums"),
          py::arg("moe_load") = py::none(), py::arg("load_counter") = py::none(),
          py::arg("num_threads") = 0, py::arg("w1_scale") = py::none(),
          py::arg("w2_scale") = py::none(), py::arg("w1_scale_dtype") = "float32",
          py::arg("w2_scale_dtype") = "float32",
          "Fused decode MoE CPU reference, in place. dtype 'bfloat16' | 'float16' | 'float32'; "
          "x [BS, H] (16-bit raw bits or float32), expert_ids int32 [BS, K], expert_scales "
          "float32 [BS, K], w1 list of E [H, 2I], w2 list of E [I, H] (empty for unused "
          "experts), x_active_mask bool [BS] or None; writes out [BS, H] and expert_token_nums "
          "int64 [E]; moe_load int64 [E] or int32 [T, E] with load_counter int32 [] updated. "
          "W8A8: int8 w1/w2 plus w1_scale (E arrays [2I]) and w2_scale (E arrays [H]) tagged "
          "w1_scale_dtype / w2_scale_dtype ('float32' | 'float16' | 'bfloat16').");

    m.def("fused_moe_npu_tiling", &fused_moe_npu_tiling, py::arg("num_tokens"), py::arg("hidden"),
          py::arg("intermediate"), py::arg("top_k"), py::arg("num_experts"), py::arg("dtype"),
          py::kw_only(), py::arg("w1_scale_dtype") = py::none(),
          py::arg("w2_scale_dtype") = py::none(), py::arg("load") = "none",
          py::arg("load_steps") = 0, py::arg("has_mask") = false,
          py::arg("num_vector_cores") = shared::kDefaultVectorCores,
          py::arg("num_cube_cores") = shared::kDefaultCubeCores,
          "Tiling of the Ascend kernels for one call (block counts, GEMM output row strides, "
          "workspace bytes) after checking it against their limits (ValueError naming the "
          "field). dtype 'bfloat16' | 'float16'; W8A8 when both scale dtypes are given "
          "('float32' or the activation dtype); load 'none' | 'total' | 'ring' (load_steps "
          "rows).");

    m.def(
        "fused_moe_route",
        [](const py::object& expert_ids_object, int64_t num_experts, const py::object& mask) {
            const auto expert_ids = as_carray<int32_t>(expert_ids_object, "expert_ids");
            require_ndim(expert_ids, 2, "expert_ids", "[BS, K]");
            shared::FusedMoeParams p{};
            p.num_tokens = expert_ids.shape(0);
            p.top_k = expert_ids.shape(1);
            p.num_experts = num_experts;
            if (num_experts < 1) {
                throw_invalid("num_experts", "must be >= 1");
            }
            require_array_size("num_experts", {num_experts}, "the per-expert counts");
            std::vector<uint8_t> mask_values;
            if (!mask.is_none()) {
                const auto mask_array = py::cast<CArray<bool>>(mask);
                if (shape_of(mask_array) != std::vector<int64_t>{p.num_tokens}) {
                    throw_invalid("x_active_mask", "expected shape " +
                                                       shape_str({p.num_tokens}));
                }
                for (py::ssize_t t = 0; t < mask_array.size(); ++t) {
                    mask_values.push_back(mask_array.data()[t] ? 1 : 0);
                }
            }
            const auto rows = reference::route_tokens(
                p, expert_ids.data(), mask.is_none() ? nullptr : mask_values.data());
            return py::make_tuple(
                to_numpy(rows.counts, {num_experts}), to_numpy(rows.offsets, {num_experts + 1}),
                to_numpy(rows.row_of, {p.num_tokens, p.top_k}));
        },
        py::arg("expert_ids"), py::arg("num_experts"), py::arg("x_active_mask") = py::none(),
        "Routing phase only: (counts int64 [E], offsets int64 [E + 1], row_of int64 [BS, K], "
        "-1 for skipped pairs). Row order: by expert, then (token, k).");
}

}  // namespace eplb_native::bindings
