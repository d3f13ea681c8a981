#!/usr/bin/env bash
# Installs everything the tests need, then runs every test: the C++ tests (gtest, via ctest), the
# lint and type checks (ruff, mypy) and the Python tests (pytest, against the installed package).
# Fails if any test fails or none ran.
#
#   bash scripts/test.sh            # uses python3 from PATH (a venv if one is active)
#   PYTHON=/path/to/python bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1

if [ ! -e /usr/include/gtest/gtest.h ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== installing libgtest-dev (C++ tests)"
    apt-get update -qq && apt-get install -y -qq libgtest-dev >/dev/null
  else
    echo "error: the C++ tests need GoogleTest: sudo apt-get install -y libgtest-dev" >&2
    exit 1
  fi
fi

echo "== installing eplb-native with its test extra"
# Pin the CPU build of torch first: an unpinned 'torch' requirement would pull a multi-GB CUDA build.
"$python" -c "import torch" 2>/dev/null || "$python" -m pip install -q torch==2.13.0
"$python" -m pip install -q ".[test]"
# SGLang's EPLB algorithm modules need only torch: its wheel alone (39 MB, none of its GPU
# stack) lets the integration tests run eplb_native inside SGLang's own code. The wheels are for
# CPython 3.11-3.13 on glibc >= 2.34; elsewhere those tests skip, and this says so.
"$python" -m pip install -q --no-deps --only-binary=:all: sglang==0.5.23 ||
  echo "warning: no sglang 0.5.23 wheel for this Python; SGLang's own-code tests will skip" >&2

echo "== C++ tests (ctest)"
cmake -S . -B build/ctest -DCMAKE_BUILD_TYPE=Release -DEPLB_BUILD_TESTS=ON -DEPLB_WERROR=ON
cmake --build build/ctest -j "$(nproc)"
ctest --test-dir build/ctest --output-on-failure --no-tests=error -j "$(nproc)"

echo "== lint (ruff) and types (mypy --strict on the package)"
"$python" -m ruff check python tests benchmarks
"$python" -m mypy

echo "== Python tests (pytest)"
# python/ is not on sys.path here, so the installed package is what the tests import.
"$python" -m pytest -c pyproject.toml --rootdir . tests/python
