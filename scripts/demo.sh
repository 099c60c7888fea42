#!/usr/bin/env bash
# End-to-end demo: build the `sae` tool, make a synthetic data set with known features,
# train a TopK SAE on it, evaluate it against the true features and print the metrics.
#
#   scripts/demo.sh
#   BUILD_DIR=build OUT_DIR=out JOBS=2 scripts/demo.sh
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
BUILD_DIR=${BUILD_DIR:-build}
OUT_DIR=${OUT_DIR:-out}
JOBS=${JOBS:-2}

start=$SECONDS
stage() { echo "demo.sh: $* at $((SECONDS - start)) s" >&2; }
trap 'rc=$?; [[ $rc -eq 0 ]] || echo "demo.sh: FAILED (exit $rc) after $((SECONDS - start)) s" >&2' EXIT

bash scripts/setup-deps.sh
stage "dependencies installed"

# Compiles go through ccache when it is installed (setup-deps installs it).
command -v ccache >/dev/null && export CMAKE_CXX_COMPILER_LAUNCHER=ccache
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release \
  -DSAE_BUILD_TESTS=OFF -DSAE_BUILD_EXAMPLES=ON
stage "configured"
cmake --build "$BUILD_DIR" --target sae_cli -j "$JOBS"   # produces $BUILD_DIR/bin/sae
stage "built"
SAE="$BUILD_DIR/bin/sae"

mkdir -p "$OUT_DIR"

# Runs `sae <args>`: progress (stderr) shows live, stdout is kept; its last line is the
# command's JSON result, printed under a heading.
run() {
  local name=$1
  echo
  echo "== sae $* =="
  local out
  out=$("$SAE" "$@")
  last=$(printf '%s\n' "$out" | tail -n 1)
  echo "=> $name: $last"
}

run synth --out "$OUT_DIR/toy.npy" --d-in 64 --features 256 --samples 100000 --seed 7
run train --data "$OUT_DIR/toy.npy" --arch topk --d-sae 512 --k 4 --steps 1500 --batch 1024 \
  --out "$OUT_DIR/toy_topk"
run eval --sae "$OUT_DIR/toy_topk" --data "$OUT_DIR/toy.npy" --features "$OUT_DIR/toy_features.npy"

echo
echo "== metrics (sae eval) =="
if command -v python3 >/dev/null 2>&1; then
  printf '%s\n' "$last" | python3 -m json.tool
else
  printf '%s\n' "$last"
fi
stage "done"
