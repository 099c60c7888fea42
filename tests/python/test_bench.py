#!/usr/bin/env python3
"""Tests of `sae bench` (training throughput and memory on random data, and the GEMM bound).

Runs every architecture at a small shape and checks the JSON contract: the keys exist and the
numbers are consistent (positive rates, peak RSS >= training memory >= 0, a positive fraction
of the GEMM bound). No timing thresholds: the numbers depend on the machine and its load.
Also: bad arguments give a non-zero exit and one error line; --gemm eigen is reported; and
`sae train` records its GEMM backend (result, cfg.json metadata, checkpoint) and --resume pins
the checkpoint's backend (falling back to eigen with a warning when blas is not built in).

Environment: SAE_BIN (path of the sae executable), SAE_TMP (scratch directory).
"""
import json
import os
import struct
import sys
import tempfile
from saetest import check, failures, last_json, run

TMP = tempfile.mkdtemp(prefix="sae_bench_", dir=os.environ.get("SAE_TMP") or None)

SMALL = ["--d-in", 32, "--d-sae", 512, "--k", 8, "--batch", 256, "--steps", 2, "--threads", 1]
KEYS = ["arch", "d_in", "d_sae", "k", "batch", "steps", "warmup", "threads", "gemm_backend", "tokens_per_s",
        "seconds_per_step", "step_seconds", "peak_rss_mb", "baseline_rss_mb", "training_mb", "encoder_gflop_per_s",
        "gemm_default", "cpu", "gemm", "gemm_gflop_per_s", "gemm_bound_tokens_per_s",
        "fraction_of_gemm_bound"]


def rewrite_checkpoint_backend(path, backend):
    """Sets extra.gemm_backend in a checkpoint's JSON state (safetensors header, 8-byte padded)."""
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    state = json.loads(header["__metadata__"]["state"])
    state["extra"]["gemm_backend"] = backend
    header["__metadata__"]["state"] = json.dumps(state)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    open(path, "wb").write(struct.pack("<Q", len(h)) + h + raw[8 + n :])


def train_pins_backend(blas_built):
    toy = os.path.join(TMP, "toy.npy")
    run("synth", "--out", toy, "--d-in", 16, "--features", 32, "--samples", 4000, "--seed", 3)
    out = os.path.join(TMP, "run")
    args = ["--data", toy, "--arch", "topk", "--d-sae", 64, "--k", 4, "--steps", 30, "--batch", 128,
            "--threads", 1, "--checkpoint-every", 20]
    j = last_json(run("train", *args, "--out", out))
    ran = j.get("gemm_backend")
    cfg = json.load(open(os.path.join(out, "cfg.json")))
    ckpt = os.path.join(out, "checkpoint", "checkpoint.safetensors")
    (n,) = struct.unpack("<Q", open(ckpt, "rb").read(8))
    state = json.loads(json.loads(open(ckpt, "rb").read()[8 : 8 + n])["__metadata__"]["state"])
    check("train: gemm_backend in the result, the metadata and the checkpoint", ran in ("eigen", "blas", "dnnl")
          and cfg["metadata"]["training"].get("gemm_backend") == ran
          and state["extra"].get("gemm_backend") == ran, f"{j} {cfg['metadata']} {state['extra'].get('gemm_backend')}")
    j = last_json(run("train", *args, "--gemm", "eigen", "--out", os.path.join(TMP, "run_eigen")))
    check("train --gemm eigen: reported", j.get("gemm_backend") == "eigen", str(j))

    # The checkpoint's backend is pinned on --resume (here: the other one).
    other = "eigen" if ran != "eigen" else "blas"
    rewrite_checkpoint_backend(ckpt, other)
    p = run("train", "--resume", out, "--out", os.path.join(TMP, "resumed"))
    j = last_json(p)
    if other == "blas" and not blas_built:
        check("resume: checkpoint trained with blas, no BLAS here: warns and continues with eigen",
              j.get("gemm_backend") == "eigen" and j.get("resumed_from_step") == 20
              and "blas" in p.stderr and "bit-identical" in p.stderr, p.stderr[-500:])
    else:
        check(f"resume: the checkpoint's backend ({other}) is used", j.get("gemm_backend") == other, str(j))
    p = run("train", "--resume", out, "--gemm", ran, "--out", os.path.join(TMP, "resumed2"))
    j = last_json(p)
    check("resume --gemm: overrides the checkpoint's backend with a warning", j.get("gemm_backend") == ran
          and "bit-identical" in p.stderr, p.stderr[-500:])


def main():
    blas_built = False
    for arch in ["relu", "topk", "batchtopk", "jumprelu", "ortsae"]:
        p = run("bench", "--arch", arch, *SMALL)
        j = last_json(p)
        missing = [k for k in KEYS if k not in j]
        check(f"bench {arch}: JSON keys", not missing, f"missing {missing}: {j}")
        if missing:
            continue
        check(f"bench {arch}: shape echoed", j["arch"] == arch and j["d_in"] == 32 and j["d_sae"] == 512
              and j["batch"] == 256 and j["steps"] == 2 and j["warmup"] == 1 and j["threads"] == 1
              and j["k"] == (0 if arch in ("relu", "jumprelu") else 8), str(j))
        check(f"bench {arch}: rates positive", j["tokens_per_s"] > 0 and j["seconds_per_step"] > 0
              and j["encoder_gflop_per_s"] > 0 and len(j["step_seconds"]) == 2
              and all(s > 0 for s in j["step_seconds"]), str(j))
        check(f"bench {arch}: tokens_per_s = batch / median step",
              abs(j["tokens_per_s"] * j["seconds_per_step"] - 256) < 1e-6 * 256
              and abs(j["seconds_per_step"] - sum(j["step_seconds"]) / 2) < 1e-12, str(j))
        check(f"bench {arch}: memory", j["peak_rss_mb"] >= j["training_mb"] >= 0 and j["baseline_rss_mb"] > 0, str(j))
        g = j["gemm"]
        check(f"bench {arch}: GEMM bound", len(g) >= 1 and g[0]["backend"] == "eigen"
              and all(x["whole_gflop_per_s"] > 0 and x["tiles_gflop_per_s"] > 0 for x in g)
              and j["gemm_gflop_per_s"] == max(max(x["whole_gflop_per_s"], x["tiles_gflop_per_s"]) for x in g
                                               if x["backend"] != "dnnl-bf16" or j["encoder_precision"] == "bf16")
              and abs(j["gemm_bound_tokens_per_s"] - j["gemm_gflop_per_s"] * 1e9 / (2 * 32 * 512))
              < 1e-9 * j["gemm_bound_tokens_per_s"]
              and j["fraction_of_gemm_bound"] > 0, str(j))
        check(f"bench {arch}: backend and cpu", j["gemm_backend"] in ("eigen", "blas", "dnnl")
              and j["gemm_default"] in ("eigen", "blas", "dnnl") and isinstance(j["cpu"].get("avx512f"), bool)
              and j["encoder_precision"] in ("fp32", "bf16"), str(j))
        blas_built = any(x["backend"] == "blas" for x in g)
        check(f"bench {arch}: progress on stderr, one JSON line on stdout",
              "sae bench:" in p.stderr and len(p.stdout.strip().splitlines()) == 1, p.stdout[-300:])

    j = last_json(run("bench", "--arch", "topk", *SMALL, "--gemm", "eigen", "--no-bound", "--warmup", 0))
    check("bench --gemm eigen: reported", j["gemm_backend"] == "eigen", str(j))
    check("bench --no-bound: no bound keys, warm-up 0", "gemm" not in j and "fraction_of_gemm_bound" not in j
          and j["warmup"] == 0 and len(j["step_seconds"]) == 2, str(j))

    for prec in ("fp32", "bf16"):
        for arch in ("topk", "relu"):
            j = last_json(run("bench", "--arch", arch, *SMALL, "--precision", prec, "--no-bound", "--warmup", 0))
            check(f"bench {arch} --precision {prec}: reported", j["encoder_precision"] == prec, str(j))

    p = run("bench", "--arch", "topk", *SMALL, "--gemm", "blas", "--no-bound", ok=False)
    if blas_built:
        check("bench --gemm blas: reported", p.returncode == 0 and last_json(p)["gemm_backend"] == "blas", p.stderr)
    else:
        check("bench --gemm blas without BLAS: one-line error", p.returncode == 1
              and len(p.stderr.strip().splitlines()) == 1 and "BLAS" in p.stderr, p.stderr)

    train_pins_backend(blas_built)

    bad = {
        "--k 0": ["--arch", "topk", "--k", 0],
        "--k > d_sae": ["--arch", "batchtopk", "--d-sae", 16, "--k", 17],
        "--d-in 0": ["--d-in", 0],
        "--d-sae -1": ["--d-sae", -1],
        "--batch 0": ["--batch", 0],
        "--steps 0": ["--steps", 0],
        "--warmup -1": ["--warmup", -1],
        "--arch nope": ["--arch", "nope"],
        "--gemm nope": ["--gemm", "nope"],
        "--precision nope": ["--precision", "nope"],
    }
    for name, args in bad.items():
        full = ["--d-in", 32, "--d-sae", 512, "--k", 8, "--batch", 256, "--steps", 2, "--threads", 1, *args]
        p = run("bench", *full, ok=False)
        err = p.stderr.strip().splitlines()
        check(f"bench {name}: non-zero exit, one error line", p.returncode != 0 and len(err) == 1
              and err[0].startswith("sae: error:") and p.stdout.strip() == "", f"rc={p.returncode} {p.stderr!r}")

    if failures:
        print(f"{len(failures)} failure(s): {failures}")
        return 1
    print("all bench tests passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
