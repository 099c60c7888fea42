#!/usr/bin/python3
"""How a libsae training step's cost grows with d_sae (m), k, the batch (B) and d_in (d).

Runs `sae bench` over one axis at a time around a base shape and prints a markdown table of
seconds per step, tokens/s, the encoder's achieved GFLOP/s, the fraction of the encoder-GEMM
bound and the training memory, next to what the performance model predicts
(docs/performance.md): a TopK-family step costs ~ 2 B d m flops (the encoder) plus O(B k d)
sparse work plus O(d m) for Adam and the decoder constraint; a dense (ReLU/JumpReLU) step
costs ~ 10 B d m flops.

    /usr/bin/python3 benchmarks/scaling.py --sae build/bin/sae [--archs topk,relu] [--threads 2]
        [--steps 3] [--axes m,k,batch,d] [--json out.json]
"""
import argparse
import json
import subprocess
import sys

BASE = {"d_in": 768, "d_sae": 16384, "k": 32, "batch": 4096}
AXES = {
    "m": ("d_sae", [4096, 8192, 16384, 32768]),
    "k": ("k", [16, 32, 64, 128]),
    "batch": ("batch", [1024, 2048, 4096, 8192]),
    "d": ("d_in", [512, 768, 1024]),
}


def run(sae, arch, shape, steps, threads):
    cmd = [sae, "bench", "--arch", arch, "--d-in", str(shape["d_in"]), "--d-sae", str(shape["d_sae"]),
           "--k", str(shape["k"]), "--batch", str(shape["batch"]), "--steps", str(steps),
           "--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.stderr.write(out.stderr)
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return cmd, json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sae", required=True, help="path of the sae binary")
    p.add_argument("--archs", default="topk,relu")
    p.add_argument("--axes", default="m,k,batch,d")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--json", help="write every raw result here")
    a = p.parse_args()
    rows, raw = [], []
    for arch in a.archs.split(","):
        for axis in a.axes.split(","):
            key, values = AXES[axis]
            if arch in ("relu", "jumprelu") and axis == "k":
                continue  # k does not enter a dense step
            for v in values:
                shape = dict(BASE, **{key: v})
                cmd, r = run(a.sae, arch, shape, a.steps, a.threads)
                raw.append({"command": cmd, "result": r})
                rows.append((arch, axis, shape, r))
                sys.stderr.write(f"{arch} {axis}={v}: {r['seconds_per_step']:.3f} s/step\n")
    print("| arch | varied | d | m | k | B | s/step | tokens/s | encoder GFLOP/s | of GEMM bound | training MB |")
    print("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for arch, axis, s, r in rows:
        print(f"| {arch} | {axis} | {s['d_in']} | {s['d_sae']} | {s['k']} | {s['batch']} | "
              f"{r['seconds_per_step']:.3f} | {r['tokens_per_s']:.0f} | {r['encoder_gflop_per_s']:.0f} | "
              f"{100 * r['fraction_of_gemm_bound']:.0f}% | {r['training_mb']:.0f} |")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(raw, fh, indent=1)


if __name__ == "__main__":
    main()
