#!/usr/bin/env python3
"""Data-parallel `sae train` under MPI (include/sae/train/distributed.hpp, docs/distributed.md).

On the toy data of `sae synth` (ground-truth features):
  - agreement: `mpirun -np 2` and `-np 3` (an uneven split of the batch) end with the weights of
    one process on the same global batches, to float rounding, for topk, topk with AuxK active,
    standard (ReLU + L1), jumprelu (L0 and target-L0 penalties), batchtopk with AuxK active (its
    batch-wide selection and threshold), matryoshka_batchtopk and ortsae (its penalty's chunks
    split among the ranks), and a BatchTopK skip transcoder (--target, --skip);
    the loss terms, L0 and FVU they report are the global ones;
  - determinism: two `-np 2` runs write byte-identical weights, and so do two `-np 3` runs;
  - recovery: a 2-rank topk SAE finds the true features (MMCS, FVU);
  - resume: a 2-rank run stopped by SIGTERM on one rank checkpoints on rank 0, all ranks stop
    at the same step, and resuming with 2 ranks ends bit for bit as the uninterrupted run;
    resuming with 3 is refused with a clear message;
  - errors: a batch smaller than the ranks is one message from rank 0, a non-zero exit, and
    nothing written.

Environment: SAE_BIN (the sae executable), SAE_MPIEXEC (mpirun; the test is skipped, exit 77,
when the tool was built without MPI), SAE_TMP (scratch directory).
"""
import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time

from saetest import SAE, check, finish, last_json, run

try:
    import numpy as np
except ImportError:  # pragma: no cover
    print("numpy not installed: skipping")
    sys.exit(77)

MPIEXEC = os.environ.get("SAE_MPIEXEC")
if not MPIEXEC:
    print("SAE_MPIEXEC not set (sae built without MPI): skipping")
    sys.exit(77)

TMP = tempfile.mkdtemp(prefix="sae_mpi_", dir=os.environ.get("SAE_TMP") or None)
# Each rank one thread: the comparison with one process is then free of thread-count effects.
# Ranks yield the CPU while they wait in a collective: the test shares 2 cores with other tests.
ENV = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="passive", OMPI_MCA_mpi_yield_when_idle="1")


def mpi_cmd(n, *args):
    return [MPIEXEC, "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-np", str(n), SAE,
            *map(str, args)]


def mpirun(n, *args, ok=True):
    p = subprocess.run(mpi_cmd(n, *args), capture_output=True, text=True, timeout=300, env=ENV)
    if ok and p.returncode != 0:
        raise AssertionError(f"mpirun -np {n} sae {' '.join(map(str, args))} failed ({p.returncode}):\n{p.stderr}")
    return p


def read_weights(d):
    with open(os.path.join(d, "sae_weights.safetensors"), "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n].decode("utf-8"))
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        out[name] = np.frombuffer(raw[8 + n + b : 8 + n + e], dtype="<f4").reshape(info["shape"])
    return out, raw


def max_diff(a, b):
    """Largest |a - b| over all tensors, relative to the largest |a| of that tensor."""
    return max(float(np.abs(a[k].astype(np.float64) - b[k]).max() / max(np.abs(a[k]).max(), 1e-30)) for k in a)


def main():
    data = os.path.join(TMP, "toy.npy")
    feats = os.path.join(TMP, "toy_features.npy")
    run("synth", "--out", data, "--d-in", 16, "--features", 40, "--samples", 6000, "--seed", 3)
    # Transcoder targets: a fixed linear map of the inputs to 12 dimensions.
    target = os.path.join(TMP, "toy_target.npy")
    X = np.load(data)
    np.save(target, (X @ np.random.default_rng(0).normal(size=(16, 12)) / 4).astype(np.float32))

    common = ["--data", data, "--steps", 200, "--batch", 256, "--seed", 1, "--log-every", 50]
    variants = {
        "topk": ["--arch", "topk", "--d-sae", 64, "--k", 3],
        "topk_auxk": ["--arch", "topk", "--d-sae", 128, "--k", 3, "--dead-tokens", 1000],
        "standard": ["--arch", "relu", "--d-sae", 48, "--l1", 0.1],
        "jumprelu": ["--arch", "jumprelu", "--d-sae", 48, "--l0", 0.01],
        "jumprelu_target": ["--arch", "jumprelu", "--d-sae", 48, "--target-l0", 5],
        "batchtopk_auxk": ["--arch", "batchtopk", "--d-sae", 128, "--k", 3, "--dead-tokens", 1000],
        "matryoshka": ["--arch", "matryoshka_batchtopk", "--d-sae", 48, "--k", 3, "--matryoshka-widths", "6,24,48"],
        "ortsae": ["--arch", "ortsae", "--d-sae", 48, "--k", 3, "--ortho", 0.5, "--chunks", 4],
        "skip_transcoder": ["--arch", "batchtopk", "--d-sae", 64, "--k", 3, "--target", target, "--skip"],
    }
    # ---- agreement with one process on the same global batches, 200 steps
    for name, extra in variants.items():
        one = os.path.join(TMP, f"{name}_1")
        j1 = last_json(run("train", *common, *extra, "--threads", 1, "--out", one))
        w1, _ = read_weights(one)
        for n in (2, 3):
            d = os.path.join(TMP, f"{name}_{n}")
            p = mpirun(n, "train", *common, *extra, "--out", d)
            jn = last_json(p)
            wn, _ = read_weights(d)
            diff = max_diff(w1, wn)
            print(f"     {name}: 1 vs {n} ranks after 200 steps: max |dw| / max |w| = {diff:.3g}; "
                  f"loss {j1['final_loss']:.9g} vs {jn['final_loss']:.9g}")
            check(f"{name}, {n} ranks: weights agree with one process to float rounding (< 1e-4 relative)",
                  diff < 1e-4, f"{diff}")
            check(f"{name}, {n} ranks: reported loss, L0, FVU, dead fraction are the global ones",
                  abs(jn["final_loss"] - j1["final_loss"]) <= 1e-5 * abs(j1["final_loss"])
                  and abs(jn["l0"] - j1["l0"]) <= 1e-6 * max(1.0, j1["l0"])
                  and abs(jn["fvu"] - j1["fvu"]) <= 1e-4 * j1["fvu"]
                  and jn["dead_fraction"] == j1["dead_fraction"], f"{j1} {jn}")
            check(f"{name}, {n} ranks: one JSON line (rank 0 alone prints), {n} ranks recorded",
                  len(p.stdout.strip().splitlines()) == 1 and jn.get("ranks") == n
                  and jn["tokens"] == 200 * 256, p.stdout)
            log = [json.loads(l) for l in open(os.path.join(d, "train_log.jsonl"))]
            check(f"{name}, {n} ranks: one training log with the steps of one run", [r["step"] for r in log] ==
                  [50, 100, 150, 200], str(log))
        if name == "topk_auxk":
            check("topk_auxk: AuxK was active (dead latents during training)",
                  any(json.loads(l).get("auxk_loss", 0) > 0 for l in open(os.path.join(TMP, "topk_auxk_2", "train_log.jsonl"))))

    # ---- determinism: same N, same bytes
    for n in (2, 3):
        d = os.path.join(TMP, f"topk_auxk_{n}_again")
        mpirun(n, "train", *common, *variants["topk_auxk"], "--out", d)
        check(f"determinism: two {n}-rank runs write identical weights",
              read_weights(d)[1] == read_weights(os.path.join(TMP, f"topk_auxk_{n}"))[1])

    # ---- recovery of the true features (the 2-rank run is also the reference of the resume below)
    long = ["--data", data, "--arch", "topk", "--d-sae", 64, "--k", 3, "--steps", 1000, "--batch", 256, "--seed", 5,
            "--log-every", 250]
    ref = os.path.join(TMP, "resume_ref")
    mpirun(2, "train", *long, "--out", ref)
    one = os.path.join(TMP, "recovery_1")
    run("train", *long, "--threads", 1, "--out", one)
    e = last_json(run("eval", "--sae", ref, "--data", data, "--features", feats))
    e1 = last_json(run("eval", "--sae", one, "--data", data, "--features", feats))
    print(f"     recovery after 1000 steps: 2 ranks fvu {e['fvu']:.4f} mmcs {e['mmcs']:.4f}; "
          f"1 process fvu {e1['fvu']:.4f} mmcs {e1['mmcs']:.4f} (untrained: mmcs about 0.55)")
    check("recovery: 2 ranks find the true features (MMCS > 0.9, FVU < 0.1)", e["mmcs"] > 0.9 and e["fvu"] < 0.1,
          str(e))
    check("recovery: as well as one process (MMCS and FVU within 1e-3)",
          abs(e["mmcs"] - e1["mmcs"]) < 1e-3 and abs(e["fvu"] - e1["fvu"]) < 1e-3, f"{e} {e1}")

    # ---- resume: SIGTERM on one rank stops every rank at the same step; resume with the same N
    out = os.path.join(TMP, "resume_run")
    ckpt = os.path.join(out, "checkpoint")
    proc = subprocess.Popen(mpi_cmd(2, "train", *long, "--checkpoint-every", 1, "--out", out),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not (os.path.isdir(ckpt) and os.listdir(ckpt)):
        time.sleep(0.01)
    ranks = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    if ranks:
        os.kill(int(ranks[-1]), signal.SIGTERM)  # one rank only: the stop must reach the others
    stdout, stderr = proc.communicate(timeout=120)
    check("resume: the interrupted run stopped early with a checkpoint",
          proc.returncode != 0 and "checkpoint written" in stderr and not os.path.exists(os.path.join(out, "cfg.json")),
          f"rc={proc.returncode} ranks={ranks} {stderr[-2000:]}")
    p = mpirun(3, "train", "--resume", out, ok=False)
    check("resume: 3 ranks refused for a 2-rank checkpoint, one clear message",
          p.returncode != 0 and "2 rank(s)" in p.stderr and "mpirun -np 2" in p.stderr
          and p.stderr.count("sae: error") == 1, p.stderr)
    p = run("train", "--resume", out, ok=False)
    check("resume: one process refused for a 2-rank checkpoint", p.returncode != 0 and "2 rank(s)" in p.stderr,
          p.stderr)
    j = last_json(mpirun(2, "train", "--resume", out))
    check("resume: 2 ranks continue to the end", j["steps"] == 1000 and j.get("resumed_from_step", 0) > 0, str(j))
    check("resume: bit for bit the uninterrupted 2-rank run", read_weights(out)[1] == read_weights(ref)[1])

    # ---- a bad combination is one clear error, from rank 0 only, and nothing is written
    d = os.path.join(TMP, "refused")
    p = mpirun(3, "train", "--data", data, "--arch", "topk", "--d-sae", 48, "--k", 3, "--steps", 10, "--batch", 2,
               "--out", d, ok=False)
    check("error under MPI: --batch smaller than the ranks: one message, non-zero, nothing written",
          p.returncode != 0 and p.stderr.count("sae: error") == 1 and "smaller than the 3 ranks" in p.stderr
          and not os.path.exists(d), p.stderr)
    return finish()


if __name__ == "__main__":
    sys.exit(main())
