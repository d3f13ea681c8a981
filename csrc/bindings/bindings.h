#pragma once
// One register function per binding file; module.cpp calls them all.

#include <pybind11/pybind11.h>

namespace eplb_native::bindings {

void bind_maps(pybind11::module_& m);
void bind_metrics(pybind11::module_& m);
void bind_policies(pybind11::module_& m);
void bind_reference(pybind11::module_& m);
void bind_threads(pybind11::module_& m);

}  // namespace eplb_native::bindings
