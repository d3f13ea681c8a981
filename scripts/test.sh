#!/usr/bin/env bash
# Installs everything the tests need, then runs every test: the C++ tests (gtest, via ctest), the
# lint and type checks (ruff, mypy), the Python tests (pytest, against the installed package) and
# the compile check of the torch_npu binding against the torch-npu wheel's headers. Prints one
# line per stage with the time elapsed; fails if any test fails or none ran.
#
#   bash scripts/test.sh            # uses python3 from PATH (a venv if one is active)
#   PYTHON=/path/to/python bash scripts/test.sh
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu bash scripts/test.sh
#                                   # where torch comes from when it is not installed yet
#   EPLB_SKIP_NPU_CHECK=1 bash scripts/test.sh
#                                   # skip the last stage (it downloads the torch-npu wheel once)
#
# The build is incremental: one CMake build folder, build/test, holds the _core module that pip
# installs and the gtest binaries that ctest runs, and pip builds without an isolated
# environment so the folder stays valid between runs; an unchanged tree rebuilds nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
jobs=$(nproc)
build=build/test
stages=7
started=$SECONDS
stage=0

step() {
  stage=$((stage + 1))
  local elapsed=$((SECONDS - started))
  printf '== [%d/%d %d:%02d] %s\n' "$stage" "$stages" $((elapsed / 60)) $((elapsed % 60)) "$*"
}

fail() {
  echo "error: $*" >&2
  exit 1
}

step "prerequisites: C++ compiler, cmake, ninja, GoogleTest"
command -v "$python" >/dev/null || fail "no Python interpreter '$python' (set PYTHON=...)"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
  fail "$python is Python $("$python" -c 'import platform; print(platform.python_version())'); eplb-native needs >= 3.10"
command -v "${CXX:-c++}" >/dev/null ||
  fail "no C++17 compiler (c++ or \$CXX): e.g. sudo apt-get install -y g++"
# Tools pip installs (cmake, ninja, ruff, mypy, pytest) land next to the interpreter.
PATH="$("$python" -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
export PATH
missing_tools=()
command -v cmake >/dev/null || missing_tools+=("cmake>=3.18")
command -v ninja >/dev/null || missing_tools+=(ninja)
if [ ${#missing_tools[@]} -gt 0 ]; then
  echo "   installing ${missing_tools[*]} from PyPI into this environment"
  "$python" -m pip install -q "${missing_tools[@]}"
fi
if [ ! -e /usr/include/gtest/gtest.h ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "   installing libgtest-dev with apt-get"
    apt-get update -qq && apt-get install -y -qq libgtest-dev >/dev/null
  else
    fail "the C++ tests need GoogleTest: sudo apt-get install -y libgtest-dev"
  fi
fi

step "torch, the build backend and SGLang's wheel"
if "$python" -c "import torch" 2>/dev/null; then
  echo "   torch $("$python" -c 'import torch; print(torch.__version__)') is installed"
elif [ -n "${TORCH_INDEX_URL:-}" ]; then
  echo "   installing torch 2.13.0 from $TORCH_INDEX_URL"
  "$python" -m pip install -q torch==2.13.0 --index-url "$TORCH_INDEX_URL"
else
  # From PyPI, Linux x86-64 gets the CUDA build (with the nvidia-* wheels and triton, several
  # GB); elsewhere, or where a CPU wheel is at hand (pip's --find-links), pip takes that.
  echo "   installing torch 2.13.0 from pip's configured index (PyPI on Linux x86-64: the CUDA" \
    "build, several GB; TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu takes the CPU build)"
  "$python" -m pip install -q torch==2.13.0
fi
# The [build-system] requires of pyproject.toml: pip builds without isolation below.
"$python" -m pip install -q "scikit-build-core>=0.10" "pybind11>=2.12"
# SGLang's EPLB algorithm modules need only torch: its wheel alone (39 MB, none of its GPU
# stack) lets the integration tests run eplb_native inside SGLang's own code. The wheels are for
# CPython 3.11-3.13 on glibc >= 2.34; elsewhere those tests skip, and this says so.
"$python" -m pip install -q --no-deps --only-binary=:all: sglang==0.5.23 ||
  echo "warning: no sglang 0.5.23 wheel for this Python; SGLang's own-code tests will skip" >&2

step "build (incremental, $build) and install eplb-native with its test extra"
mkdir -p "$build"
log=$build/pip-install.log
# pip -v streams the build: ninja's [done/total] lines are shown as they come, all goes to the log.
if ! "$python" -m pip install -v --no-build-isolation \
  --config-settings=build-dir="$build" \
  --config-settings=cmake.define.EPLB_BUILD_TESTS=ON \
  --config-settings=cmake.define.EPLB_WERROR=ON \
  ".[test]" 2>&1 | tee "$log" | { grep --line-buffered -E '^ *\[[0-9]+/[0-9]+\] ' || true; }; then
  tail -n 60 "$log" >&2
  fail "pip install failed; the whole output is in $log"
fi

step "C++ tests (ctest)"
if ! ctest --test-dir "$build" --output-on-failure --no-tests=error -j "$jobs" >"$build/ctest.log" 2>&1; then
  cat "$build/ctest.log" >&2
  fail "C++ tests failed"
fi
grep -E 'tests passed|tests failed|Total Test time' "$build/ctest.log" | sed 's/^/   /'

step "lint (ruff) and types (mypy --strict on the package)"
"$python" -m ruff check python tests benchmarks
"$python" -m mypy

step "Python tests (pytest)"
# python/ is not on sys.path here, so the installed package is what the tests import.
"$python" -m pytest -c pyproject.toml --rootdir . tests/python tests/operator/python

step "torch_npu binding against the torch-npu wheel's headers (pytest -m network)"
if [ -n "${EPLB_SKIP_NPU_CHECK:-}" ]; then
  echo "   skipped (EPLB_SKIP_NPU_CHECK is set)"
else
  # Downloads the wheel once into build/torch_npu_wheel/ and builds in build/npu_compile_check/.
  "$python" -m pytest -c pyproject.toml --rootdir . -m network -q tests/python tests/operator/python
fi

elapsed=$((SECONDS - started))
printf '== all %d stages passed in %d:%02d\n' "$stages" $((elapsed / 60)) $((elapsed % 60))
