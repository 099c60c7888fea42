#!/usr/bin/env bash
# Install the Debian 12 packages libsae needs to build, test and run its demo.
# Idempotent: installs only what is missing, and runs `apt-get update` only then.
#
#   scripts/setup-deps.sh               build + test dependencies
#   scripts/setup-deps.sh --with-torch  also python3-torch (optional cross-checks)
#   scripts/setup-deps.sh --with-lm     also bible-kjv (the text the LM test harvests)
#   scripts/setup-deps.sh --with-lm-corpus   bible-kjv, fortunes, python3.11-doc (docs/lm.md)
#   scripts/setup-deps.sh --with-browser     also chromium (headless checks of the reports)
set -euo pipefail

# ocl-icd-opencl-dev: Debian's libdnnl-dev ships a CMake config that runs
# find_package(OpenCL REQUIRED), and the OpenCL headers are only a Recommends of it (which
# --no-install-recommends leaves out). Without them oneDNN is off (CMakeLists.txt says why).
# ccache: scripts/test.sh compiles through it when present (the cache survives fresh roots).
packages=(
  build-essential cmake ccache
  libeigen3-dev nlohmann-json3-dev catch2 libcli11-dev
  libbenchmark-dev libopenblas-dev libdnnl-dev ocl-icd-opencl-dev zlib1g-dev
  libopenmpi-dev openmpi-bin
  python3-numpy python3-venv python3-dev
  strace
  dataset-fashion-mnist
)

for arg in "$@"; do
  case "$arg" in
    --with-torch) packages+=(python3-torch) ;;
    --with-lm) packages+=(bible-kjv) ;;
    --with-lm-corpus) packages+=(bible-kjv fortunes python3.11-doc) ;;
    --with-browser) packages+=(chromium) ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "setup-deps: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

missing=()
for pkg in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  if [[ "$status" != "install ok installed" ]]; then
    missing+=("$pkg")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "setup-deps: all ${#packages[@]} packages are installed"
  exit 0
fi

if [[ $EUID -eq 0 ]]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1; then
  sudo=(sudo)
else
  echo "setup-deps: missing ${missing[*]}; run as root or install sudo" >&2
  exit 1
fi

echo "setup-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update
"${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}"
