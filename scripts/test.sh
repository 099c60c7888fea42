#!/usr/bin/env bash
# Build and run every test, then the file-reading tests ([io]) again under ASan + UBSan.
#
#   scripts/test.sh
#   BUILD_DIR=build-test ASAN_BUILD_DIR=build-asan JOBS=2 scripts/test.sh
#
# Exits non-zero on the first failing step and prints the total time either way.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
BUILD_DIR=${BUILD_DIR:-build-test}
ASAN_BUILD_DIR=${ASAN_BUILD_DIR:-build-asan}
JOBS=${JOBS:-2}

start=$SECONDS
report_time() {
  local rc=$?
  local status=passed
  [[ $rc -eq 0 ]] || status="FAILED (exit $rc)"
  echo "test.sh: ${status} in $((SECONDS - start)) s"
}
trap report_time EXIT

step() { echo; echo "== $* =="; }

step "dependencies"
# python3-torch serves tests/python/test_torch_reference.py (an independent PyTorch step of
# every SAE variant); the library itself never uses it.
bash scripts/setup-deps.sh --with-torch

step "configure + build ${BUILD_DIR} (Release)"
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release \
  -DSAE_BUILD_TESTS=ON -DSAE_BUILD_EXAMPLES=ON
cmake --build "$BUILD_DIR" -j "$JOBS"

step "ctest ${BUILD_DIR}"
ctest --test-dir "$BUILD_DIR" --output-on-failure -j "$JOBS"

# Sanitizer tree: Debug keeps Eigen's bounds assertions on, -O1 keeps it fast enough.
# OpenMP stays on. Only the [io] tests run here (everything that reads files).
step "configure + build ${ASAN_BUILD_DIR} (ASan + UBSan)"
if ! compgen -G "tests/test_*.cpp" >/dev/null; then
  echo "no tests/test_*.cpp yet: sanitizer run skipped"
  exit 0
fi
cmake -S . -B "$ASAN_BUILD_DIR" -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-g -O1" \
  -DSAE_SANITIZE=ON -DSAE_BUILD_TESTS=ON -DSAE_BUILD_EXAMPLES=OFF -DSAE_INSTALL=OFF
cmake --build "$ASAN_BUILD_DIR" --target sae_tests -j "$JOBS"

step "ctest ${ASAN_BUILD_DIR} -L io"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
ctest --test-dir "$ASAN_BUILD_DIR" --output-on-failure -L '^io$'
