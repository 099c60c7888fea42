#!/usr/bin/env python3
"""Bad flag values exit with status 2 and one line on stderr naming the flag (the README's
promise), before any work or output; runtime failures keep status 1.

Environment: SAE_BIN (the sae executable), SAE_TMP (scratch directory).
"""
import os
import sys
import tempfile

from saetest import finish, check, failures, run

TMP = tempfile.mkdtemp(prefix="sae_exit_", dir=os.environ.get("SAE_TMP") or None)


def main():
    toy = os.path.join(TMP, "toy.npy")
    run("synth", "--out", toy, "--d-in", 8, "--features", 16, "--samples", 2000, "--seed", 1)
    sae_dir = os.path.join(TMP, "sae")
    run("train", "--data", toy, "--arch", "topk", "--d-sae", 16, "--k", 2, "--steps", 10, "--batch", 128,
        "--out", sae_dir)
    out = os.path.join(TMP, "out")
    train = ["train", "--data", toy, "--d-sae", 16, "--out", out]
    io = ["--sae", sae_dir, "--data", toy]
    cases = [
        ("train --k 0", [*train, "--k", 0], "--k"),
        ("train --lr -1", [*train, "--lr=-1"], "--lr"),
        ("train --lr inf", [*train, "--lr", "inf"], "--lr"),
        ("train --lr nan", [*train, "--lr", "nan"], "--lr"),
        ("train --batch 0", [*train, "--batch", 0], "--batch"),
        ("train --steps 0", [*train, "--steps", 0], "--steps"),
        ("train --threads -1", [*train, "--threads=-1"], "--threads"),
        ("train --aux-k -1", [*train, "--aux-k=-1"], "--aux-k"),
        ("train --warmup -1", [*train, "--warmup=-1"], "--warmup"),
        ("train --l1 inf", [*train, "--arch", "relu", "--l1", "inf"], "--l1"),
        ("train --bandwidth 0", [*train, "--arch", "jumprelu", "--bandwidth", 0], "--bandwidth"),
        ("train --k 17 > d_sae", [*train, "--k", 17], "--k"),
        ("encode --limit -1", ["encode", *io, "--limit=-1", "--out", os.path.join(TMP, "c.npz")], "--limit"),
        ("encode --batch 0", ["encode", *io, "--batch", 0, "--out", os.path.join(TMP, "c.npz")], "--batch"),
        ("encode --out x.txt", ["encode", *io, "--out", os.path.join(TMP, "c.txt")], "output must be"),
        ("eval --threads -2", ["eval", *io, "--threads=-2"], "--threads"),
        ("steer --latent 16 (d_sae 16)", ["steer", *io, "--latent", 16, "--scale", 2, "--out", os.path.join(TMP, "s.npy")],
         "--latent"),
        ("steer --latent -1", ["steer", *io, "--latent=-1", "--scale", 2, "--out", os.path.join(TMP, "s.npy")], "--latent"),
        ("steer two modes", ["steer", *io, "--latent", 1, "--scale", 2, "--add", 1, "--out", os.path.join(TMP, "s.npy")],
         "exactly one"),
        ("steer --scale inf", ["steer", *io, "--latent", 1, "--scale", "inf", "--out", os.path.join(TMP, "s.npy")],
         "--scale"),
        ("convert --dtype f8", ["convert", "--in", sae_dir, "--out", os.path.join(TMP, "cv"), "--dtype", "f8"], "--dtype"),
        ("synth --features-out = --out", ["synth", "--out", os.path.join(TMP, "a.npy"), "--features-out",
                                          os.path.join(TMP, "a.npy")], "same file"),
    ]
    for name, args, needle in cases:
        p = run(*args, ok=False)
        lines = p.stderr.strip().splitlines()
        check(f"{name}: exit 2, one line naming {needle}",
              p.returncode == 2 and len(lines) == 1 and needle in lines[0], f"rc={p.returncode} {p.stderr}")
    check("nothing was written by the refused commands",
          not any(os.path.exists(os.path.join(TMP, f)) for f in ("out", "c.npz", "c.txt", "s.npy", "cv", "a.npy")))
    # accepted edge values still work
    p = run("train", "--data", toy, "--d-sae", 16, "--k", 16, "--steps", 3, "--batch", 64, "--warmup", 0, "--decay", 0,
            "--threads", 0, "--aux-k", 0, "--out", os.path.join(TMP, "edge"), ok=False)
    check("edge values (k = d_sae, warmup 0, threads 0) accepted", p.returncode == 0, p.stderr)
    p = run("convert", "--in", sae_dir, "--out", os.path.join(TMP, "cv2"), "--dtype", "bf16", "--threads", 1, ok=False)
    check("convert --threads accepted", p.returncode == 0, p.stderr)
    # runtime failures keep exit status 1
    p = run("eval", "--sae", os.path.join(TMP, "missing"), "--data", toy, ok=False)
    check("a missing SAE: exit 1", p.returncode == 1, f"rc={p.returncode}")

    return finish()


if __name__ == "__main__":
    sys.exit(main())
