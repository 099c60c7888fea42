#!/usr/bin/env python3
"""A FIFO (named pipe) where a file is expected is refused at once with "not a regular file",
never read or waited on: as --data of every subcommand that reads activations, and as an
SAE's weights file. Each command runs with a timeout; blocking would fail the test.

Environment: SAE_BIN (the sae executable), SAE_TMP (scratch directory).
"""
import os
import shutil
import subprocess
import sys
import tempfile

from saetest import finish, check, failures, run

TMP = tempfile.mkdtemp(prefix="sae_fifo_", dir=os.environ.get("SAE_TMP") or None)


def refused(name, *args):
    try:
        p = run(*args, ok=False, timeout=20)
    except subprocess.TimeoutExpired:
        check(f"{name}: returns instead of blocking", False, "timed out")
        return
    check(f"{name}: exit 1, 'not a regular file'", p.returncode == 1 and "not a regular file" in p.stderr,
          f"rc={p.returncode} {p.stderr}")


def main():
    toy = os.path.join(TMP, "toy.npy")
    run("synth", "--out", toy, "--d-in", 8, "--features", 16, "--samples", 2000, "--seed", 1)
    sae_dir = os.path.join(TMP, "sae")
    run("train", "--data", toy, "--arch", "topk", "--d-sae", 16, "--k", 2, "--steps", 10, "--batch", 128,
        "--out", sae_dir)
    fifo = os.path.join(TMP, "pipe.npy")
    os.mkfifo(fifo)
    refused("train --data FIFO", "train", "--data", fifo, "--d-sae", 16, "--k", 2, "--steps", 5,
            "--out", os.path.join(TMP, "o"))
    refused("eval --data FIFO", "eval", "--sae", sae_dir, "--data", fifo)
    refused("encode --data FIFO", "encode", "--sae", sae_dir, "--data", fifo, "--out", os.path.join(TMP, "c.npz"))
    refused("steer --data FIFO", "steer", "--sae", sae_dir, "--data", fifo, "--latent", 0, "--scale", 2,
            "--out", os.path.join(TMP, "s.npy"))
    # an SAE directory whose weights file is a FIFO, and a lone FIFO params.safetensors
    bad = os.path.join(TMP, "bad_sae")
    os.makedirs(bad)
    shutil.copy(os.path.join(sae_dir, "cfg.json"), bad)
    os.mkfifo(os.path.join(bad, "sae_weights.safetensors"))
    p = run("eval", "--sae", bad, "--data", toy, ok=False, timeout=20)
    check("eval --sae DIR with a FIFO weights file: refused", p.returncode == 1 and "sae_weights.safetensors" in p.stderr,
          f"rc={p.returncode} {p.stderr}")
    lone = os.path.join(TMP, "params.safetensors")
    os.mkfifo(lone)
    refused("eval --sae FIFO params.safetensors", "eval", "--sae", lone, "--data", toy)

    return finish()


if __name__ == "__main__":
    sys.exit(main())
