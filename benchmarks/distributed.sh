#!/usr/bin/env bash
# Data-parallel `sae train` on one machine: 1 rank x 2 threads against 2 ranks x 1 thread
# (docs/distributed.md), at the shape by default: TopK, d = 768, m = 16384, k = 32,
# B = 4096, on `sae synth` data. Pairs are alternated REPS times (the machine may be shared) and
# each line carries the load average before the run.
#
#   benchmarks/distributed.sh [path/to/sae]      (default: build-mpi/bin/sae)
#   D=768 M=16384 K=32 B=4096 STEPS=8 REPS=3 benchmarks/distributed.sh
#
# Per run: tokens/s over the whole run (first step and initialisation included), seconds per
# step, and for the 2-rank runs the seconds per step spent in the collectives (waiting for the
# other rank included) and the bytes each rank sent per step (MpiCollectives' count).
set -euo pipefail
SAE=${1:-build-mpi/bin/sae}
D=${D:-768} M=${M:-16384} K=${K:-32} B=${B:-4096} STEPS=${STEPS:-8} REPS=${REPS:-3}
WORK=${WORK:-$(mktemp -d)}
MPIRUN=${MPIRUN:-mpirun --allow-run-as-root --oversubscribe}

lscpu | grep -E '^(Model name|CPU\(s\)|Thread\(s\) per core|L3 cache):' | sed 's/  */ /g'
grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx|avx2|fma|avx512f|avx512bw|avx512_bf16|amx_bf16)$' |
  tr '\n' ' ' | sed 's/^/SIMD flags: /'
echo
samples=$((B * (STEPS + 1)))
"$SAE" synth --out "$WORK/acts.npy" --d-in "$D" --features $((4 * D)) --samples "$samples" --seed 1 >/dev/null 2>&1
args=(--data "$WORK/acts.npy" --arch topk --d-sae "$M" --k "$K" --batch "$B" --steps "$STEPS" --log-every "$STEPS"
  --seed 1)
summary='import json, sys
j = json.loads(sys.stdin.read().strip().splitlines()[-1])
line = "%s: %.0f tok/s, %.3f s/step" % (sys.argv[1], j["tokens_per_s"], j["seconds"] / j["steps"])
if "mpi" in j:
    m = j["mpi"]
    line += ", collectives %.3f s/step, %.1f MB sent/step/rank" % (m["comm_seconds"] / j["steps"], m["comm_bytes_sent"] / j["steps"] / 1e6)
print(line)'
for rep in $(seq "$REPS"); do
  printf 'load %s  ' "$(cut -d' ' -f1 /proc/loadavg)"
  "$SAE" train "${args[@]}" --threads 2 --out "$WORK/one" 2>/dev/null | python3 -c "$summary" "1 rank x 2 threads"
  printf 'load %s  ' "$(cut -d' ' -f1 /proc/loadavg)"
  $MPIRUN --bind-to core -np 2 "$SAE" train "${args[@]}" --threads 1 --out "$WORK/two" 2>/dev/null |
    python3 -c "$summary" "2 ranks x 1 thread"
done
rm -rf "$WORK"
