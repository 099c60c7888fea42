#!/usr/bin/env python3
"""Interoperability of `sae` with files written by independent writers.

Writes, with numpy and a byte-by-byte safetensors writer in this script (not libsae):
  - activations with np.save;
  - a Gemma Scope-style params.npz (W_enc [d, m], W_dec [m, d], b_enc, b_dec, threshold) with
    np.savez and np.savez_compressed;
  - SAELens directories whose sae_weights.safetensors is F32, F16 and BF16 (BF16 from float32
    bits, rounded to nearest even);
  - a Gemma Scope 2 params.safetensors (lowercase keys) and a sparsify directory (TopK).
Then checks that `sae eval` on each gives the F32 original's metrics within the dtype's
precision, that the results agree with an independent numpy evaluation of the (dequantised)
weights, that `sae convert` writes F32/F16/BF16 SAELens files bit-identical to numpy's
conversion, and that damaged files give one-line errors.

Environment: SAE_BIN (the sae executable), SAE_TMP (scratch directory).
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

TMP = tempfile.mkdtemp(prefix="sae_interop_", dir=os.environ.get("SAE_TMP") or None)


# ---------------------------------------------------------------------------------------------
# Independent writers.

def to_bf16_bits(a):
    """float32 -> bfloat16 bit patterns, round to nearest even (NaN kept quiet)."""
    u = np.ascontiguousarray(a, dtype="<f4").view("<u4").astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    nan = np.isnan(a.reshape(-1)).reshape(a.shape) if a.ndim else np.isnan(a)
    rounded = np.where(nan, (u >> 16) | 0x40, rounded)
    return rounded.astype("<u2")


def bf16_to_f32(bits):
    return (bits.astype(np.uint32) << 16).view("<f4")


def encode_tensor(a, dtype):
    if dtype == "F32":
        return np.ascontiguousarray(a, dtype="<f4").tobytes()
    if dtype == "F16":
        return np.ascontiguousarray(a, dtype="<f2").tobytes()
    if dtype == "BF16":
        return to_bf16_bits(a).tobytes()
    if dtype == "F64":
        return np.ascontiguousarray(a, dtype="<f8").tobytes()
    raise ValueError(dtype)


def write_safetensors(path, tensors, dtype="F32", metadata=None):
    """Byte by byte: u64 header length, JSON header padded with spaces to 8, raw data."""
    header, blobs, off = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name, a in tensors.items():
        raw = encode_tensor(a, dtype)
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header).encode("utf-8")
    h += b" " * ((8 - (8 + len(h)) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n].decode("utf-8"))
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        out[name] = (info["dtype"], raw[base + b : base + e], info["shape"])
    return out


def dequantise(a, dtype):
    if dtype == "F16":
        return a.astype(np.float16).astype(np.float32)
    if dtype == "BF16":
        return bf16_to_f32(to_bf16_bits(a)).reshape(a.shape)
    return a.astype(np.float32)


def write_saelens(dirname, w, arch, dtype="F32", apply_b_dec=False, k=None):
    os.makedirs(dirname, exist_ok=True)
    write_safetensors(os.path.join(dirname, "sae_weights.safetensors"), w, dtype, {"format": "pt"})
    cfg = {"architecture": arch, "d_in": int(w["W_enc"].shape[0]), "d_sae": int(w["W_enc"].shape[1]),
           "dtype": {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}[dtype], "device": "cpu",
           "apply_b_dec_to_input": apply_b_dec, "normalize_activations": "none", "metadata": {}}
    if k is not None:
        cfg["k"] = k
    with open(os.path.join(dirname, "cfg.json"), "w") as f:
        json.dump(cfg, f)


# ---------------------------------------------------------------------------------------------
# Independent evaluation (float64).

def independent_eval(X, w, arch, apply_b_dec, k=None):
    X = X.astype(np.float64)
    W_enc, W_dec = w["W_enc"].astype(np.float64), w["W_dec"].astype(np.float64)
    b_enc, b_dec = w["b_enc"].astype(np.float64), w["b_dec"].astype(np.float64)
    z = (X - b_dec if apply_b_dec else X) @ W_enc + b_enc
    f = np.maximum(z, 0.0)
    if arch == "jumprelu":
        f = np.where(z > w["threshold"].astype(np.float64), f, 0.0)
    if arch == "topk":
        keep = np.argpartition(-f, k - 1, axis=1)[:, :k]
        mask = np.zeros_like(f, dtype=bool)
        np.put_along_axis(mask, keep, True, axis=1)
        f = np.where(mask, f, 0.0)
    xh = f @ W_dec + b_dec
    err = ((X - xh) ** 2).sum()
    var = ((X - X.mean(axis=0)) ** 2).sum()
    return {"l0": float((f != 0).sum(axis=1).mean()), "mse": float(err / X.size), "fvu": float(err / var)}


def rel_err(a, b):
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


def main():
    rng = np.random.default_rng(6)
    d, m, n = 24, 96, 2000
    # Data with structure: sparse combinations of m directions plus noise.
    D = rng.normal(size=(m, d)).astype(np.float32)
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    codes = (rng.random((n, m)) < 0.05) * rng.exponential(1.0, size=(n, m))
    X = (codes @ D + 0.05 * rng.normal(size=(n, d)) + 0.3).astype(np.float32)
    data = os.path.join(TMP, "acts.npy")
    np.save(data, X)  # independent .npy writer

    # A JumpReLU SAE: encoder near the generating dictionary (Gemma Scope convention: no b_dec
    # subtraction before encoding), decoder and b_dec fitted by least squares to its codes.
    W_enc = np.ascontiguousarray((D + 0.05 * rng.normal(size=(m, d))).T).astype(np.float32)
    b_enc = (-0.3 * W_enc.sum(axis=0)).astype(np.float32)
    threshold = np.abs(0.15 + 0.05 * rng.normal(size=m)).astype(np.float32)
    z = X.astype(np.float64) @ W_enc + b_enc
    f = np.where(z > threshold, np.maximum(z, 0.0), 0.0)
    sol, *_ = np.linalg.lstsq(np.hstack([f, np.ones((n, 1))]), X.astype(np.float64), rcond=None)
    g = {
        "W_enc": W_enc,
        "W_dec": np.ascontiguousarray(sol[:m]).astype(np.float32),
        "b_enc": b_enc,
        "b_dec": sol[m].astype(np.float32),
        "threshold": threshold,
    }

    # F32 reference: a SAELens directory written byte by byte here.
    ref_dir = os.path.join(TMP, "ref_f32")
    write_saelens(ref_dir, g, "jumprelu", "F32", apply_b_dec=False)
    ref = last_json(run("eval", "--sae", ref_dir, "--data", data))
    ind = independent_eval(X, g, "jumprelu", False)
    for key in ("l0", "mse", "fvu"):
        check(f"F32 SAELens eval {key} matches numpy", rel_err(ref[key], ind[key]) < 1e-4, (ref[key], ind[key]))
    check("reference SAE is meaningful", 0.5 < ref["l0"] < 40 and ref["fvu"] < 0.9, ref)

    rows = [("F32 SAELens (reference)", ref)]

    # Gemma Scope params.npz: np.savez (stored) and np.savez_compressed (deflate); the file and
    # its directory both load.
    for name, saver in (("np.savez", np.savez), ("np.savez_compressed", np.savez_compressed)):
        gdir = os.path.join(TMP, "gemma_" + saver.__name__)
        os.makedirs(gdir, exist_ok=True)
        saver(os.path.join(gdir, "params.npz"), **g)
        for where in (gdir, os.path.join(gdir, "params.npz")):
            r = last_json(run("eval", "--sae", where, "--data", data))
            same = all(r[k] == ref[k] for k in ("l0", "mse", "fvu", "dead_fraction"))
            check(f"{name} params.npz ({os.path.basename(where)}) eval identical to F32", same, (r, ref))
            check(f"{name} architecture jumprelu", r.get("architecture") == "jumprelu", r)
        rows.append((f"Gemma Scope npz ({name})", r))
    # float16 and float64 members (np.savez converts nothing: the dtype is the array's).
    gdir16 = os.path.join(TMP, "gemma_f16")
    os.makedirs(gdir16, exist_ok=True)
    np.savez(os.path.join(gdir16, "params.npz"), **{k: v.astype(np.float16) for k, v in g.items()})
    r16npz = last_json(run("eval", "--sae", gdir16, "--data", data))
    ind16 = independent_eval(X, {k: dequantise(v, "F16") for k, v in g.items()}, "jumprelu", False)
    check("float16 params.npz eval matches numpy on the float16 weights",
          all(rel_err(r16npz[k], ind16[k]) < 1e-4 for k in ("l0", "mse", "fvu")), (r16npz, ind16))
    rows.append(("Gemma Scope npz (float16 arrays)", r16npz))

    # SAELens F16 and BF16, written byte by byte.
    for dt, tol in (("F16", 2e-3), ("BF16", 2e-2)):
        ddir = os.path.join(TMP, "saelens_" + dt.lower())
        write_saelens(ddir, g, "jumprelu", dt, apply_b_dec=False)
        r = last_json(run("eval", "--sae", ddir, "--data", data))
        indq = independent_eval(X, {k: dequantise(v, dt) for k, v in g.items()}, "jumprelu", False)
        check(f"{dt} eval matches numpy on the dequantised weights",
              all(rel_err(r[k], indq[k]) < 1e-4 for k in ("l0", "mse", "fvu")), (r, indq))
        check(f"{dt} eval mse/fvu within dtype precision of F32",
              rel_err(r["mse"], ref["mse"]) < tol * 10 and rel_err(r["fvu"], ref["fvu"]) < tol * 10, (r, ref))
        check(f"{dt} eval l0 within 2% of F32", rel_err(r["l0"], ref["l0"]) < 0.02, (r["l0"], ref["l0"]))
        rows.append((f"SAELens {dt} (byte-by-byte writer)", r))

    # Gemma Scope 2 params.safetensors with lowercase keys.
    g2dir = os.path.join(TMP, "gemma2")
    os.makedirs(g2dir, exist_ok=True)
    write_safetensors(os.path.join(g2dir, "params.safetensors"),
                      {("w_enc" if k == "W_enc" else "w_dec" if k == "W_dec" else k): v for k, v in g.items()})
    r = last_json(run("eval", "--sae", g2dir, "--data", data))
    check("Gemma Scope 2 params.safetensors eval identical to F32",
          all(r[k] == ref[k] for k in ("l0", "mse", "fvu")), (r, ref))
    rows.append(("Gemma Scope 2 params.safetensors", r))

    # sparsify (TopK, b_dec subtracted) vs the same SAE as an SAELens topk directory.
    k = 6
    s = {"encoder.weight": np.ascontiguousarray(g["W_enc"].T), "encoder.bias": g["b_enc"],
         "W_dec": g["W_dec"], "b_dec": g["b_dec"]}
    sdir = os.path.join(TMP, "sparsify", "layers.6")
    os.makedirs(sdir, exist_ok=True)
    write_safetensors(os.path.join(sdir, "sae.safetensors"), s)
    with open(os.path.join(sdir, "cfg.json"), "w") as f:
        json.dump({"activation": "topk", "expansion_factor": 4, "normalize_decoder": True, "num_latents": m,
                   "k": k, "multi_topk": False, "skip_connection": False, "transcode": False, "d_in": d}, f)
    tdir = os.path.join(TMP, "saelens_topk")
    write_saelens(tdir, {kk: g[kk] for kk in ("W_enc", "W_dec", "b_enc", "b_dec")}, "topk", "F32",
                  apply_b_dec=True, k=k)
    rs = last_json(run("eval", "--sae", sdir, "--data", data))
    rt = last_json(run("eval", "--sae", tdir, "--data", data))
    indt = independent_eval(X, g, "topk", True, k)
    check("sparsify eval identical to the SAELens topk equivalent",
          all(rs[kk] == rt[kk] for kk in ("l0", "mse", "fvu")), (rs, rt))
    check("sparsify eval matches numpy", all(rel_err(rs[kk], indt[kk]) < 1e-4 for kk in ("l0", "mse", "fvu")),
          (rs, indt))
    check("sparsify architecture topk", rs.get("architecture") == "topk", rs)

    # sae convert: Gemma Scope npz -> SAELens f32/f16/bf16; bytes equal numpy's conversion.
    src = os.path.join(TMP, "gemma_savez_compressed", "params.npz")
    for dt in ("f32", "f16", "bf16"):
        out = os.path.join(TMP, "converted_" + dt)
        j = last_json(run("convert", "--in", src, "--out", out, "--dtype", dt))
        check(f"convert {dt}: JSON result", j.get("format") == "gemma_scope" and j.get("d_in") == d
              and j.get("d_sae") == m and j.get("architecture") == "jumprelu", j)
        cfg = json.load(open(os.path.join(out, "cfg.json")))
        want = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}[dt]
        check(f"convert {dt}: cfg.json dtype {want}", cfg.get("dtype") == want, cfg.get("dtype"))
        check(f"convert {dt}: apply_b_dec_to_input false", cfg.get("apply_b_dec_to_input") is False, cfg)
        st = read_safetensors(os.path.join(out, "sae_weights.safetensors"))
        DT = dt.upper()
        ok = all(st[name][0] == DT and st[name][1] == encode_tensor(g[name], DT) for name in g)
        check(f"convert {dt}: tensors bit-identical to numpy's {DT} conversion", ok)
        r = last_json(run("eval", "--sae", out, "--data", data))
        if dt == "f32":
            check("convert f32: eval identical", all(r[kk] == ref[kk] for kk in ("l0", "mse", "fvu")), (r, ref))
    # sparsify converts too (TopK keeps k and apply_b_dec_to_input).
    out = os.path.join(TMP, "converted_sparsify")
    j = last_json(run("convert", "--in", sdir, "--out", out))
    cfg = json.load(open(os.path.join(out, "cfg.json")))
    check("convert sparsify: topk with k and b_dec subtraction",
          j.get("format") == "sparsify" and cfg.get("k") == k and cfg.get("apply_b_dec_to_input") is True, (j, cfg))

    # Hostile inputs: one-line error naming the file, non-zero exit.
    bad = os.path.join(TMP, "bad")
    os.makedirs(bad, exist_ok=True)
    raw = open(os.path.join(TMP, "gemma_savez", "params.npz"), "rb").read()
    open(os.path.join(bad, "params.npz"), "wb").write(raw[: len(raw) // 2])
    p = run("eval", "--sae", bad, "--data", data, ok=False)
    err = p.stderr.strip().splitlines()
    check("truncated npz: exit non-zero", p.returncode != 0, p.returncode)
    check("truncated npz: one line naming the file", len(err) == 1 and "params.npz" in err[0], p.stderr)
    fdir = os.path.join(TMP, "bad_f16")
    write_saelens(fdir, g, "jumprelu", "F16")
    with open(os.path.join(fdir, "cfg.json"), "w") as f:
        f.write('{"architecture": "jumprelu", "d_in": 24, "d_sae": 95}')
    p = run("eval", "--sae", fdir, "--data", data, ok=False)
    err = p.stderr.strip().splitlines()
    check("d_sae mismatch: one line naming the weights file and tensor",
          p.returncode != 0 and len(err) == 1 and "sae_weights.safetensors" in err[0] and "W_enc" in err[0], p.stderr)
    with open(os.path.join(fdir, "cfg.json"), "w") as f:
        f.write('{"d_in": 24, "metadata": ' + "[" * 5000 + "]" * 5000 + "}")
    p = run("eval", "--sae", fdir, "--data", data, ok=False)
    err = p.stderr.strip().splitlines()
    check("deeply nested cfg.json: one-line error", p.returncode != 0 and len(err) == 1 and "cfg.json" in err[0]
          and "nested" in err[0], p.stderr)
    p = run("convert", "--in", ref_dir, "--out", os.path.join(TMP, "x"), "--dtype", "f8", ok=False)
    check("convert --dtype f8 rejected", p.returncode != 0 and "f32, f16 or bf16" in p.stderr, p.stderr)

    print()
    print(f"{'SAE file':40s} {'l0':>10s} {'mse':>14s} {'fvu':>12s}  rel.dmse vs F32")
    for name, r in rows:
        print(f"{name:40s} {r['l0']:10.4f} {r['mse']:14.8g} {r['fvu']:12.8f}  {rel_err(r['mse'], ref['mse']):.2e}")

    if failures:
        print(f"\n{len(failures)} check(s) failed: {failures}")
        return 1
    print("\nall interop checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
