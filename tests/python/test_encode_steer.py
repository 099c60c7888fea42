#!/usr/bin/env python3
"""End-to-end tests of `sae encode` and `sae steer`, checked independently with numpy.

Trains a small TopK and a small ReLU SAE on `sae synth` data, then:
  - `sae encode` writes the dense codes numpy computes from the saved safetensors bytes, and
    the same codes as a sparse .npz (offsets, indices, values, shape);
  - `sae steer --scale 1` returns the input bit for bit; `--scale S`, `--clamp V` and `--add A`
    change every token by (f'_j - f_j) W_dec[j] exactly as numpy computes it;
  - float16 input, --limit, and one-line errors with a non-zero exit for bad arguments.

Environment: SAE_BIN (the sae executable), SAE_TMP (scratch directory). Exit 77 without numpy.
"""
import json
import os
import struct
import sys
import tempfile
from saetest import run

try:
    import numpy as np
except ImportError:  # pragma: no cover
    print("numpy not installed: skipping")
    sys.exit(77)

TMP = tempfile.mkdtemp(prefix="sae_encode_steer_", dir=os.environ.get("SAE_TMP") or None)
failures = []


def result(p):
    return json.loads(p.stdout.strip().splitlines()[-1])


def check(name, cond, detail=""):
    print(("ok   " if cond else "FAIL ") + name + ("" if cond else f" {detail}"))
    if not cond:
        failures.append(name)


def path(name):
    return os.path.join(TMP, name)


def load_sae(d):
    """The SAE's tensors from cfg.json and the safetensors bytes (parsed here, not by libsae)."""
    cfg = json.load(open(os.path.join(d, "cfg.json")))
    raw = open(os.path.join(d, "sae_weights.safetensors"), "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    t = {}
    for name, info in header.items():
        if name != "__metadata__":
            b, e = info["data_offsets"]
            t[name] = np.frombuffer(raw[8 + n + b : 8 + n + e], dtype="<f4").reshape(info["shape"]).astype(np.float64)
    return cfg, t


def encode(cfg, t, X):
    """Dense codes [N, d_sae] in float64."""
    x = X.astype(np.float64)
    if cfg.get("apply_b_dec_to_input", True):
        x = x - t["b_dec"]
    z = x @ t["W_enc"] + t["b_enc"]
    if cfg["architecture"] == "jumprelu":
        return np.where(z > t["threshold"], z, 0.0)
    f = np.maximum(z, 0.0)
    if cfg["architecture"] == "topk":
        k = cfg["k"]
        keep = np.argsort(-f, axis=1, kind="stable")[:, :k]
        mask = np.zeros_like(f, dtype=bool)
        np.put_along_axis(mask, keep, True, axis=1)
        f = np.where(mask, f, 0.0)
    return f


def main():
    run("synth", "--out", path("x.npy"), "--d-in", 24, "--features", 64, "--samples", 3000, "--seed", 3)
    X = np.load(path("x.npy"))
    run("train", "--data", path("x.npy"), "--arch", "topk", "--d-sae", 96, "--k", 4, "--steps", 150, "--batch", 256,
        "--out", path("topk"))
    run("train", "--data", path("x.npy"), "--arch", "relu", "--d-sae", 96, "--l1", 0.1, "--steps", 150, "--batch", 256,
        "--out", path("relu"))

    for arch in ("topk", "relu"):
        cfg, t = load_sae(path(arch))
        F = encode(cfg, t, X)
        # --- encode
        r = result(run("encode", "--sae", path(arch), "--data", path("x.npy"), "--out", path(f"{arch}_codes.npy"),
                       "--batch", 700))
        C = np.load(path(f"{arch}_codes.npy"))
        check(f"{arch}: encode shape", C.shape == (3000, 96) and C.dtype == np.float32, C.shape)
        err = np.abs(C - F).max()
        check(f"{arch}: encode equals numpy codes", err < 1e-4 * max(1.0, np.abs(F).max()), f"max err {err}")
        check(f"{arch}: encode JSON", r["tokens"] == 3000 and r["d_sae"] == 96 and
              abs(r["l0"] - (C != 0).sum(1).mean()) < 1e-9, r)

        # --- encode to a sparse .npz (CSR over [tokens, d_sae])
        r = result(run("encode", "--sae", path(arch), "--data", path("x.npy"), "--out", path(f"{arch}_codes.npz")))
        z = np.load(path(f"{arch}_codes.npz"))
        ok = sorted(z.files) == ["indices", "offsets", "shape", "values"] and list(z["shape"]) == [3000, 96]
        S = np.zeros((3000, 96), np.float32)
        if ok:
            off, ind, val = z["offsets"], z["indices"], z["values"]
            ok = off.dtype == np.int64 and ind.dtype == np.int32 and val.dtype == np.float32 and len(off) == 3001
            for tok in range(3000):
                S[tok, ind[off[tok] : off[tok + 1]]] = val[off[tok] : off[tok + 1]]
        check(f"{arch}: sparse .npz equals the dense codes", ok and np.array_equal(S, C) and r["format"] == "sparse", z.files)

        # --- steer
        counts = (F != 0).sum(0)
        j = int(np.argmax(counts))  # the most active latent
        w = t["W_dec"][j]  # [d_in]
        run("steer", "--sae", path(arch), "--data", path("x.npy"), "--latent", j, "--scale", 1, "--out", path("same.npy"))
        Y = np.load(path("same.npy"))
        check(f"{arch}: scale 1 is the identity, bit for bit", Y.dtype == np.float32 and np.array_equal(Y, X))

        for flag, value, f2 in (("--scale", 3.0, lambda f: 3.0 * f), ("--scale", -1.5, lambda f: -1.5 * f),
                                ("--clamp", 2.5, lambda f: np.full_like(f, 2.5)), ("--add", 0.75, lambda f: f + 0.75)):
            p = run("steer", "--sae", path(arch), "--data", path("x.npy"), "--latent", j, flag, value,
                    "--out", path("y.npy"), "--batch", 512)
            Y = np.load(path("y.npy")).astype(np.float64)
            f = F[:, j]
            want = X.astype(np.float64) + np.outer(f2(f) - f, w)
            err = np.abs(Y - want).max()
            check(f"{arch}: {flag} {value} shifts by (f'_j - f_j) W_dec[j]", err < 1e-4, f"max err {err}")
            # The change of every token is parallel to W_dec[j].
            D = Y - X
            resid = D - np.outer(D @ w / (w @ w), w)
            check(f"{arch}: {flag} change lies along W_dec[j]", np.abs(resid).max() < 1e-4, np.abs(resid).max())
            r = result(p)
            if flag != "--add":
                check(f"{arch}: {flag} JSON", abs(r["mean_before"] - f.mean()) < 1e-4 * max(1, abs(f.mean())) and
                      abs(r["active_fraction"] - (f != 0).mean()) < 1e-12, r)

    # float16 input and --limit
    np.save(path("x16.npy"), X.astype(np.float16))
    cfg, t = load_sae(path("topk"))
    run("encode", "--sae", path("topk"), "--data", path("x16.npy"), "--out", path("c16.npy"), "--limit", 100)
    C = np.load(path("c16.npy"))
    F16 = encode(cfg, t, X.astype(np.float16).astype(np.float32)[:100])
    check("float16 input with --limit", C.shape == (100, 96) and np.abs(C - F16).max() < 1e-4, C.shape)

    # errors: one line on stderr, non-zero exit, no output file
    for args, fragment in (
        (["steer", "--sae", path("topk"), "--data", path("x.npy"), "--latent", 96, "--scale", 2, "--out", path("e.npy")],
         "outside [0, d_sae=96)"),
        (["steer", "--sae", path("topk"), "--data", path("x.npy"), "--latent", 1, "--scale", 2, "--clamp", 1,
          "--out", path("e.npy")], "exactly one of"),
        (["steer", "--sae", path("topk"), "--data", path("x.npy"), "--latent", 1, "--out", path("e.npy")], "exactly one of"),
        (["encode", "--sae", path("topk"), "--data", path("x.npy"), "--out", path("e.txt")], ".npy"),
        (["encode", "--sae", path("nope"), "--data", path("x.npy"), "--out", path("e.npy")], "nope"),
    ):
        p = run(*args, ok=False)
        lines = p.stderr.strip().splitlines()
        check(f"error: {args[0]} {fragment}", p.returncode != 0 and lines and lines[-1].startswith("sae: error:") and
              fragment in lines[-1] and not os.path.exists(path("e.npy")), p.stderr)

    if failures:
        print(f"{len(failures)} failures")
        sys.exit(1)
    print("all passed")


if __name__ == "__main__":
    main()
