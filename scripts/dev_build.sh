#!/usr/bin/env bash
# Developer build: compiles eplb_core, the gtest binary and the _core module into build/dev and
# drops _core next to the Python sources, so `PYTHONPATH=python pytest` runs without installing.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
cmake -S . -B build/dev -G Ninja -DCMAKE_BUILD_TYPE=Release -DEPLB_WERROR=ON \
  -DEPLB_BUILD_PYTHON=ON -DEPLB_BUILD_TESTS=ON \
  -DPython_EXECUTABLE="$(command -v "$python")" \
  -Dpybind11_DIR="$("$python" -m pybind11 --cmakedir)" >/dev/null
cmake --build build/dev -j "$(nproc)"
cp build/dev/_core*.so python/eplb_native/
