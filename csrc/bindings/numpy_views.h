#pragma once
// Helpers shared by the binding files: shape checks that name the argument, and numpy arrays
// made from core vectors. The only place besides the bind_*.cpp files that sees pybind11.

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "eplb_native/error.h"

namespace eplb_native::bindings {

namespace py = pybind11;

template <typename T>
using CArray = py::array_t<T, py::array::c_style | py::array::forcecast>;

// `object` (an array or nested sequences) as a C-contiguous array of T, converted only when no
// value changes meaning: for an integer T, integer dtypes that numpy casts safely (not bool,
// float, or uint64 into int64); for a floating T, bool, integer and float dtypes that cast
// safely. Throws ValueError naming `field` otherwise (complex, object, string, ...).
template <typename T>
[[nodiscard]] CArray<T> as_carray(const py::handle& object, const std::string& field) {
    const py::array array = py::array::ensure(object);
    if (!array) {
        throw_invalid(field, "expected an array (not a ragged sequence), got " +
                                 std::string(py::str(py::type::of(object).attr("__name__"))));
    }
    const py::dtype target = py::dtype::of<T>();
    const bool kind_ok = std::is_integral_v<T> ? (array.dtype().kind() == 'i' ||
                                                   array.dtype().kind() == 'u')
                                                : array.dtype().kind() != 'c';
    const bool safe = kind_ok && py::module_::import("numpy")
                                     .attr("can_cast")(array.dtype(), target, "safe")
                                     .template cast<bool>();
    if (!safe) {
        throw_invalid(field, std::string(std::is_integral_v<T> ? "expected integers" : "expected "
                                                                 "real numbers") +
                                 " that fit " + std::string(py::str(target)) + ", got dtype " +
                                 std::string(py::str(array.dtype())));
    }
    CArray<T> converted = CArray<T>::ensure(array);
    if (!converted) {
        throw py::error_already_set();
    }
    return converted;
}

// The array's shape as a vector (for messages and extents).
template <typename T>
[[nodiscard]] std::vector<int64_t> shape_of(const CArray<T>& array) {
    std::vector<int64_t> shape(static_cast<size_t>(array.ndim()));
    for (py::ssize_t d = 0; d < array.ndim(); ++d) {
        shape[static_cast<size_t>(d)] = static_cast<int64_t>(array.shape(d));
    }
    return shape;
}

// Throws ValueError "<field>: expected a <ndim>-D array <dims>, got shape (...)" unless the
// array has `ndim` dimensions, each non-empty.
template <typename T>
void require_ndim(const CArray<T>& array, py::ssize_t ndim, const std::string& field,
                  const std::string& dims) {
    const auto shape = shape_of(array);
    bool ok = array.ndim() == ndim;
    for (int64_t extent : shape) {
        ok = ok && extent > 0;
    }
    if (!ok) {
        throw_invalid(field, "expected a non-empty " + std::to_string(ndim) + "-D array " + dims +
                                 ", got shape " + shape_str(shape));
    }
}

// A new C-contiguous numpy array with the given shape holding a copy of `values`.
template <typename T>
[[nodiscard]] py::array_t<T> to_numpy(const std::vector<T>& values,
                                      const std::vector<int64_t>& shape) {
    std::vector<py::ssize_t> extents(shape.begin(), shape.end());
    py::array_t<T> out(extents);
    std::copy(values.begin(), values.end(), out.mutable_data());
    return out;
}

}  // namespace eplb_native::bindings
