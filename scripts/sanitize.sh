#!/usr/bin/env bash
# Builds the C++ tests (gtest and the Ascend kernel emulation) with AddressSanitizer and
# UndefinedBehaviorSanitizer into build/sanitize and runs them; any report fails the run.
#
#   bash scripts/sanitize.sh
set -euo pipefail
cd "$(dirname "$0")/.."
generator=()
if command -v ninja >/dev/null; then
  generator=(-G Ninja)
fi
flags="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
cmake -S . -B build/sanitize "${generator[@]}" -DCMAKE_BUILD_TYPE=Debug -DEPLB_WERROR=ON \
  -DEPLB_BUILD_TESTS=ON -DEPLB_BUILD_PYTHON=OFF \
  -DCMAKE_CXX_FLAGS="-O1 $flags" -DCMAKE_EXE_LINKER_FLAGS="$flags" >/dev/null
cmake --build build/sanitize -j "$(nproc)"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
ctest --test-dir build/sanitize --output-on-failure --no-tests=error -j "$(nproc)"
