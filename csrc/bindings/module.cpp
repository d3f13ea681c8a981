// The pybind11 module eplb_native._core: only registration calls live here.

#include "bindings.h"

#ifndef EPLB_VERSION
#define EPLB_VERSION "dev"
#endif

PYBIND11_MODULE(_core, m) {
    m.doc() = "eplb_native C++ core: placement plans, policies and the fused-operator reference";
    m.attr("__version__") = EPLB_VERSION;
    eplb_native::bindings::bind_maps(m);
    eplb_native::bindings::bind_metrics(m);
    eplb_native::bindings::bind_policies(m);
    eplb_native::bindings::bind_reference(m);
    eplb_native::bindings::bind_threads(m);
}
