#!/usr/bin/env python3
"""End-to-end tests of the `sae` command-line tool.

Runs `sae synth`, `sae train` and `sae eval` on small data, checks the JSON contract (one
JSON object on the last line of stdout, progress on stderr, one-line errors with a non-zero
exit), and recomputes `sae eval`'s metrics independently with numpy from the saved
safetensors bytes (parsed here by hand, not through libsae).

Environment: SAE_BIN (path of the sae executable), SAE_TMP (scratch directory).
Exit 77 (skipped) when numpy is not installed.
"""
import json
import os
import struct
import sys
import tempfile
from saetest import check, failures, last_json, run

try:
    import numpy as np
except ImportError:  # pragma: no cover
    print("numpy not installed: skipping")
    sys.exit(77)

TMP = tempfile.mkdtemp(prefix="sae_cli_", dir=os.environ.get("SAE_TMP") or None)


def read_safetensors(path):
    """Independent safetensors parser: u64 header length, JSON header, raw little-endian data."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n].decode("utf-8"))
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", info
        b, e = info["data_offsets"]
        out[name] = np.frombuffer(raw[base + b : base + e], dtype="<f4").reshape(info["shape"])
    return out, (8 + n) % 8, header.get("__metadata__", {})


def independent_eval(sae_dir, X, features=None):
    cfg = json.load(open(os.path.join(sae_dir, "cfg.json")))
    w, pad, _ = read_safetensors(os.path.join(sae_dir, "sae_weights.safetensors"))
    X = X.astype(np.float64)
    W_enc, W_dec = w["W_enc"].astype(np.float64), w["W_dec"].astype(np.float64)
    b_enc, b_dec = w["b_enc"].astype(np.float64), w["b_dec"].astype(np.float64)
    xin = X - b_dec if cfg.get("apply_b_dec_to_input", True) else X
    z = xin @ W_enc + b_enc
    f = np.maximum(z, 0.0)
    if cfg["architecture"] == "jumprelu":  # f = relu(z) * 1[z > threshold]
        f = np.where(z > w["threshold"].astype(np.float64), f, 0.0)
    if cfg["architecture"] == "topk":
        k = cfg["k"]
        keep = np.argpartition(-f, k - 1, axis=1)[:, :k]
        mask = np.zeros_like(f, dtype=bool)
        np.put_along_axis(mask, keep, True, axis=1)
        f = np.where(mask, f, 0.0)
    xh = f @ W_dec + b_dec
    err = ((X - xh) ** 2).sum()
    var = ((X - X.mean(axis=0)) ** 2).sum()
    r = {
        "tokens": X.shape[0],
        "l0": float((f != 0).sum(axis=1).mean()),
        "mse": float(err / X.size),
        "fvu": float(err / var),
        "explained_variance": float(1 - err / var),
        "dead_fraction": float((~(f != 0).any(axis=0)).mean()),
    }
    if features is not None:
        U = features / np.linalg.norm(features, axis=1, keepdims=True)
        Wn = W_dec / np.linalg.norm(W_dec, axis=1, keepdims=True)
        r["mmcs"] = float((U @ Wn.T).max(axis=1).mean())
    return r, pad


def rel_close(a, b, rel=1e-4, abs_=1e-9):
    return abs(a - b) <= rel * max(abs(a), abs(b)) + abs_


def main():
    data = os.path.join(TMP, "toy.npy")
    feats = os.path.join(TMP, "toy_features.npy")

    # ---- synth
    p = run("synth", "--out", data, "--d-in", 16, "--features", 40, "--samples", 6000, "--seed", 3)
    j = last_json(p)
    X = np.load(data)
    F = np.load(feats)
    check("synth: shapes", X.shape == (6000, 16) and F.shape == (40, 16) and X.dtype == np.float32, f"{X.shape} {F.shape}")
    check("synth: JSON fields", j["samples"] == 6000 and j["d_in"] == 16 and j["features"] == 40 and j["out"] == data)
    check("synth: unit features", np.allclose(np.linalg.norm(F, axis=1), 1.0, atol=1e-5))
    run("synth", "--out", os.path.join(TMP, "again.npy"), "--d-in", 16, "--features", 40, "--samples", 6000, "--seed", 3)
    check("synth: seeded output is identical", np.array_equal(np.load(os.path.join(TMP, "again.npy")), X))

    # ---- train topk
    out = os.path.join(TMP, "topk")
    p = run("train", "--data", data, "--arch", "topk", "--d-sae", 64, "--k", 3, "--steps", 300, "--batch", 256,
            "--seed", 1, "--log-every", 50, "--out", out)
    j = last_json(p)
    for key in ("steps", "tokens", "seconds", "final_loss", "l0", "fvu"):
        check(f"train: JSON has {key}", key in j, str(j))
    check("train: steps/tokens", j["steps"] == 300 and j["tokens"] == 300 * 256, str(j))
    check("train: l0 <= k", j["l0"] <= 3.0 + 1e-9, str(j))
    progress = [l for l in p.stderr.splitlines() if l.startswith("step ")]
    check("train: progress lines on stderr", len(progress) == 6, p.stderr)
    check("train: progress has loss, l0, tok/s, ETA",
          all(s in progress[0] for s in ("loss", "l0", "tok/s", "ETA")), progress[0] if progress else "")
    check("train: stdout is only the JSON line", len(p.stdout.strip().splitlines()) == 1, p.stdout)
    check("train: SAELens files", all(os.path.exists(os.path.join(out, f)) for f in ("cfg.json", "sae_weights.safetensors")))
    log = [json.loads(l) for l in open(os.path.join(out, "train_log.jsonl"))]
    check("train: JSON-lines training log", len(log) == 6 and log[-1]["step"] == 300 and "mse_loss" in log[-1], str(log[-1:]))

    # ---- eval vs an independent numpy computation
    p = run("eval", "--sae", out, "--data", data, "--features", feats)
    e = last_json(p)
    ref, pad = independent_eval(out, X, F)
    check("safetensors header padded to 8 bytes", pad == 0)
    for key in ("tokens", "l0", "mse", "fvu", "explained_variance", "dead_fraction", "mmcs"):
        check(f"eval: {key} agrees with numpy to 1e-4", key in e and rel_close(e[key], ref[key]), f"sae {e.get(key)} numpy {ref[key]}")
    p = run("eval", "--sae", out, "--data", data, "--limit", 1000)
    e = last_json(p)
    ref, _ = independent_eval(out, X[:1000])
    check("eval --limit", e["tokens"] == 1000 and rel_close(e["fvu"], ref["fvu"]), f"{e} {ref}")
    check("eval: no mmcs without --features", "mmcs" not in e)

    # ---- relu
    out_relu = os.path.join(TMP, "relu")
    p = run("train", "--data", data, "--arch", "relu", "--d-sae", 48, "--l1", 0.1, "--steps", 200, "--batch", 256, "--out", out_relu)
    cfg = json.load(open(os.path.join(out_relu, "cfg.json")))
    check("train relu: architecture standard", cfg["architecture"] == "standard" and "k" not in cfg, str(cfg))
    e = last_json(run("eval", "--sae", out_relu, "--data", data))
    ref, _ = independent_eval(out_relu, X)
    for key in ("l0", "mse", "fvu", "dead_fraction"):
        check(f"eval relu: {key} agrees with numpy", rel_close(e[key], ref[key]), f"sae {e[key]} numpy {ref[key]}")

    # ---- the rest of the family: trains, saves in SAELens form, and sae eval reads it back
    for arch, extra in (("batchtopk", ["--k", 3]), ("ortsae", ["--k", 3, "--ortho", 0.5, "--chunks", 4]),
                        ("jumprelu", ["--l0", 0.01]), ("jumprelu", ["--target-l0", 5]),
                        ("matryoshka_batchtopk", ["--k", 3, "--matryoshka-widths", "6,24,48"])):
        d = os.path.join(TMP, f"{arch}_{len(extra)}")
        p = run("train", "--data", data, "--arch", arch, "--d-sae", 48, "--steps", 150, "--batch", 256, *extra, "--out", d)
        j = last_json(p)
        cfg = json.load(open(os.path.join(d, "cfg.json")))
        w, _, _ = read_safetensors(os.path.join(d, "sae_weights.safetensors"))
        check(f"train {arch} {extra}: saved as jumprelu with a threshold",
              cfg["architecture"] == "jumprelu" and w["threshold"].shape == (48,) and "dead_fraction" in j,
              f"{cfg} {list(w)}")
        if arch != "jumprelu":
            check(f"train {arch}: training architecture and k in metadata",
                  cfg["metadata"].get("training_architecture") == arch and cfg["metadata"].get("k") == 3
                  and np.all(w["threshold"] == w["threshold"][0]) and w["threshold"][0] > 0, str(cfg["metadata"]))
        e = last_json(run("eval", "--sae", d, "--data", data))
        ref, _ = independent_eval(d, X)
        for key in ("l0", "fvu", "dead_fraction"):
            check(f"eval {arch} {extra}: {key} agrees with numpy", rel_close(e[key], ref[key]), f"sae {e[key]} numpy {ref[key]}")

    # ---- the variants table in docs/variants.md is the one the list generates
    table = run("variants").stdout
    docs = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "docs", "variants.md")).read()
    begin = docs.index("\n", docs.index("<!-- variants:begin")) + 1
    check("variants: docs/variants.md holds `sae variants`'s table", docs[begin:docs.index("<!-- variants:end")] == table,
          table)
    check("variants: every variant listed", all(f"`{a}`" in table for a in
                                                ("standard", "relu", "topk", "batchtopk", "jumprelu", "ortsae",
                                                 "matryoshka_batchtopk")), table)

    # ---- errors: one line on stderr, non-zero exit, nothing written
    def check_error(name, *args, contains=()):
        p = run(*args, ok=False)
        lines = [l for l in p.stderr.strip().splitlines() if l.strip()]
        good = p.returncode != 0 and len(lines) == 1 and all(c in lines[0] for c in contains) and p.stdout.strip() == ""
        check(f"error: {name}", good, f"rc={p.returncode} stderr={p.stderr!r} stdout={p.stdout!r}")

    other = os.path.join(TMP, "other.npy")
    run("synth", "--out", other, "--d-in", 8, "--features", 10, "--samples", 100)
    check_error("unknown flag", "train", "--data", data, "--d-sae", 8, "--out", out, "--bogus", 1, contains=("--bogus",))
    check_error("missing data file", "train", "--data", os.path.join(TMP, "missing.npy"), "--d-sae", 8, "--out", os.path.join(TMP, "x"),
                contains=("missing.npy",))
    check_error("d_in mismatch", "eval", "--sae", out, "--data", other, contains=("other.npy", "d_in"))
    check_error("missing SAE dir", "eval", "--sae", os.path.join(TMP, "nope"), "--data", data, contains=("nope",))
    check_error("bad architecture", "train", "--data", data, "--arch", "gated", "--d-sae", 8, "--out", os.path.join(TMP, "y"),
                contains=("gated",))
    check_error("negative l0", "train", "--data", data, "--arch", "jumprelu", "--d-sae", 8, "--l0", -1, "--out", os.path.join(TMP, "w"),
                contains=("--l0",))
    check_error("k larger than d_sae", "train", "--data", data, "--arch", "topk", "--d-sae", 8, "--k", 9, "--out", os.path.join(TMP, "z"),
                contains=("--k",))
    check_error("an option the variant does not read", "train", "--data", data, "--arch", "topk", "--d-sae", 8,
                "--chunks", 4, "--out", os.path.join(TMP, "x"), contains=("--chunks does not apply to --arch topk", "ortsae"))
    check_error("matryoshka widths not ending at d_sae", "train", "--data", data, "--arch", "matryoshka", "--d-sae", 8,
                "--matryoshka-widths", "2,4", "--out", os.path.join(TMP, "x"), contains=("--matryoshka-widths", "d_sae=8"))
    check("error: failed runs wrote nothing", not any(os.path.exists(os.path.join(TMP, n)) for n in ("x", "y", "z")))
    bad = os.path.join(TMP, "bad.npy")
    with open(bad, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00garbage")
    check_error("malformed npy", "eval", "--sae", out, "--data", bad, contains=("bad.npy",))
    check_error("no subcommand", contains=("subcommand",))

    print(f"{len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
