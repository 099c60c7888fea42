#!/usr/bin/env python3
"""The Python package against the `sae` tool, in one run on one machine: encoding throughput
(`sae.encode` vs `sae encode`) and training throughput (`libsae.train` vs `sae train`).

    python benchmarks/python_vs_cli.py --sae build/bin/sae            # needs `import libsae`
    python benchmarks/python_vs_cli.py --sae build/bin/sae --markdown --tokens 100000

Defaults: d = 768, m = 16384, k = 32 (TopK), 100,000 random tokens to encode, 14 training steps
of 4096 tokens (the rate is `sae train`'s tokens_per_s, whole run, on both sides). The encode comparison
times both sides end to end on the same .npy file: `sae encode --out codes.npz --no-compress`
(JSON "seconds") against `sae.encode(libsae.read_npy(path))` building the scipy CSR matrix.
Each measurement is the best of --repeat runs. Prints the CPU and its flags first.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

import libsae


def cpu():
    name, flags = platform.processor() or "?", ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and name in ("?", "", "x86_64"):
                name = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1]
    except OSError:
        pass
    keep = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f" {f}" in f" {flags}"]
    return name, keep


def run_sae(sae, *args):
    p = subprocess.run([sae, *map(str, args)], capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"sae {' '.join(map(str, args))} failed:\n{p.stderr}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sae", required=True, help="the sae executable")
    ap.add_argument("--d-in", type=int, default=768)
    ap.add_argument("--d-sae", type=int, default=16384)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=100_000, help="tokens to encode")
    ap.add_argument("--steps", type=int, default=14, help="training steps")
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--markdown", action="store_true")
    a = ap.parse_args()

    name, flags = cpu()
    threads = a.threads or os.cpu_count()
    print(f"CPU: {name} ({', '.join(flags) or 'no AVX2'}), {threads} threads, "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '-')}", file=sys.stderr)
    tmp = tempfile.mkdtemp(prefix="libsae_bench_")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((a.tokens, a.d_in), dtype=np.float32)
    xpath = os.path.join(tmp, "X.npy")
    np.save(xpath, X)
    del X
    common = ["--arch", "topk", "--d-sae", a.d_sae, "--k", a.k, "--batch", a.batch, "--seed", 0, "--gemm", "eigen"]
    if a.threads:
        common += ["--threads", a.threads]

    # --- training: the same run through both, tokens/s over the steps after the warm-up
    steps = a.steps
    rows = []
    train = {"cli": [], "python": []}
    for _ in range(a.repeat):
        t = run_sae(a.sae, "train", "--data", xpath, *common, "--steps", steps, "--log-every", 0,
                    "--out", os.path.join(tmp, "cli_sae"))
        train["cli"].append(t["tokens_per_s"])
        py = libsae.train(xpath, arch="topk", d_sae=a.d_sae, k=a.k, batch=a.batch, seed=0, gemm="eigen",
                          steps=steps, log_every=0, threads=a.threads or None, verbose=False)
        train["python"].append(py.result["tokens_per_s"])
    rows.append(("train (tokens/s)", max(train["cli"]), max(train["python"])))

    # --- encoding the same file with the SAE just trained
    sae_dir = os.path.join(tmp, "cli_sae")
    sae = libsae.load(sae_dir)
    enc = {"cli": [], "python": []}
    for _ in range(a.repeat):
        j = run_sae(a.sae, "encode", "--sae", sae_dir, "--data", xpath, "--out", os.path.join(tmp, "c.npz"),
                    "--no-compress", *(["--threads", a.threads] if a.threads else []))
        enc["cli"].append(a.tokens / j["seconds"])
        t0 = time.perf_counter()
        codes = sae.encode(libsae.read_npy(xpath))
        enc["python"].append(a.tokens / (time.perf_counter() - t0))
        assert codes.shape == (a.tokens, a.d_sae)
    rows.append(("encode (tokens/s)", max(enc["cli"]), max(enc["python"])))

    result = {"cpu": name, "flags": flags, "threads": threads, "d_in": a.d_in, "d_sae": a.d_sae, "k": a.k,
              "tokens": a.tokens, "batch": a.batch, "steps": a.steps,
              "train_cli": train["cli"], "train_python": train["python"],
              "encode_cli": enc["cli"], "encode_python": enc["python"]}
    if a.markdown:
        print(f"CPU: {name} ({', '.join(flags)}), {threads} threads; d = {a.d_in}, m = {a.d_sae}, k = {a.k}\n")
        print("| | `sae` tool | `import libsae` | Python / tool |")
        print("|---|--:|--:|--:|")
        for what, c, p in rows:
            print(f"| {what} | {c:,.0f} | {p:,.0f} | {p / c:.3f} |")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
