#!/usr/bin/env python3
"""Every SAE variant's training step against an independent PyTorch implementation.

For relu, topk, batchtopk, jumprelu, jumprelu-target, ortsae and matryoshka_batchtopk this script makes random float32
weights and a batch, runs libsae's training step(s) through tests/tools/sae_one_step, and
recomputes the same step(s) in float64 PyTorch written from the formulas (DESIGN.md section 1),
not from libsae's loops:

  z = (x - b_dec) W_enc + b_enc (or x W_enc + b_enc),  x_hat = f W_dec + b_dec,
  mse = mean_t ||x_t - x_hat_t||^2; relu: + l1/B sum_tj f_tj ||W_dec[j]||;
  topk / batchtopk: torch.topk per token / over the flattened batch, + AuxK on dead latents
  (residual detached, top k_aux of relu(z) among dead latents, e_hat = f_aux W_dec,
  alpha sum ||e - e_hat||^2 / sum ||e||^2); jumprelu: a custom autograd Function for the
  straight-through estimator (rectangle kernel of bandwidth eps) + l0 * L0 or
  l0 * (L0/target - 1)^2; ortsae: batchtopk + AuxK + gamma/m sum_i max_{j!=i} cos(W_dec[i], W_dec[j]).

Gradients come from autograd; the step is torch.optim.Adam after projecting each decoder row's
gradient orthogonal to the row (unit-norm variants), then row renormalisation, threshold clamp
(jumprelu) and the BatchTopK threshold moving average. Compared: the loss terms and l0 of the
first step, its gradients (grad_*), and the update of every tensor after 1 or 3 steps.

Selections (top-k cuts, JumpReLU step and kernel edges, ReLU's sign, the orthogonality arg-max)
are discontinuous, so each case draws seeds until the float64 reference keeps every such
decision at least MARGIN away from its edge in every step; float32 rounding (~1e-6) can then not
flip a decision, and any disagreement is libsae's.

Environment: SAE_ONE_STEP (path of the sae_one_step tool), SAE_TMP (scratch directory).
Exit 77 (skipped) when the tool is not given or numpy / torch is not installed.
"""
import json
import os
import struct
import subprocess
import sys
import tempfile

try:
    import numpy as np
    import torch
except ImportError:  # pragma: no cover
    print("numpy or torch not installed: skipping")
    sys.exit(77)

TOOL = os.environ.get("SAE_ONE_STEP")
if not TOOL:
    print("SAE_ONE_STEP not set: skipping")
    sys.exit(77)

TMP = tempfile.mkdtemp(prefix="sae_torch_", dir=os.environ.get("SAE_TMP") or None)
torch.set_num_threads(1)
F64 = torch.float64

D, M, B = 12, 40, 64
D_OUT = 7  # the transcoder cases: targets of another width than the inputs
RTOL = 1e-4      # float32 libsae vs float64 reference, relative to the tensor's largest entry
MARGIN = 3e-5    # minimum distance of every discrete decision from its edge (see docstring)
CONDITIONING = 100  # minimum |g| / (float32 rounding of g) of every nonzero first-step gradient entry
UNIT_NORM = {"topk", "batchtopk", "jumprelu", "jumprelu-target", "ortsae", "matryoshka_batchtopk"}
SPARSE = {"topk", "batchtopk", "ortsae", "matryoshka_batchtopk"}       # these carry AuxK
BATCH = {"batchtopk", "ortsae", "matryoshka_batchtopk"}  # the k*B largest of the batch
JUMP = {"jumprelu", "jumprelu-target"}
failures = []


def check(name, cond, detail=""):
    print(f"{'ok  ' if cond else 'FAIL'} {name}  {detail}".rstrip())
    if not cond:
        failures.append(name)


# ---------------------------------------------------------------------------------------------
# safetensors and npy, by hand


def write_safetensors(path, tensors):
    """u64 little-endian header length, JSON header padded with spaces to a multiple of 8, data."""
    header, blobs, offset = {}, [], 0
    for name, a in tensors.items():
        raw = np.ascontiguousarray(a, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(np.shape(a)), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    h = json.dumps(header).encode("utf-8")
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for raw in blobs:
            f.write(raw)


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n].decode("utf-8"))
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", info
        b, e = info["data_offsets"]
        out[name] = np.frombuffer(raw[8 + n + b : 8 + n + e], dtype="<f4").reshape(info["shape"]).astype(np.float64)
    return out


# ---------------------------------------------------------------------------------------------
# The reference, from the formulas


class JumpReLUFn(torch.autograd.Function):
    """f = z H(z - theta); df/dz = H(z - theta), df/dtheta = -(theta/eps) K((z - theta)/eps)."""

    @staticmethod
    def forward(ctx, z, theta, eps):
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return z * (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, g):
        z, theta = ctx.saved_tensors
        eps = ctx.eps
        kernel = (((z - theta) / eps).abs() < 0.5).to(g.dtype)
        return g * (z > theta).to(g.dtype), (g * kernel * (-theta / eps)).sum(0), None


class StepFn(torch.autograd.Function):
    """H(z - theta); no gradient to z, dH/dtheta = -(1/eps) K((z - theta)/eps)."""

    @staticmethod
    def forward(ctx, z, theta, eps):
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, g):
        z, theta = ctx.saved_tensors
        eps = ctx.eps
        kernel = (((z - theta) / eps).abs() < 0.5).to(g.dtype)
        return None, (g * kernel * (-1.0 / eps)).sum(0), None


def topk_mask(values, k, dim):
    """0/1 mask of the k largest entries along dim (values detached)."""
    idx = torch.topk(values, k, dim=dim).indices
    return torch.zeros_like(values).scatter_(dim, idx, 1.0)


def cut_gap(sorted_desc, k):
    """Gap at a top-k cut in descending values; inf when the cut falls among zeros."""
    if sorted_desc.shape[-1] <= k:
        return torch.full(sorted_desc.shape[:-1], float("inf"), dtype=sorted_desc.dtype)
    below = sorted_desc[..., k]
    gap = sorted_desc[..., k - 1] - below
    return torch.where(below > 0, gap, torch.full_like(gap, float("inf")))


def loss_terms(P, X, Y, o, dead, margins):
    """Loss terms (autograd graph) of one batch of inputs X and targets Y (X itself for an SAE,
    another layer's activations for a transcoder); appends the step's decision margins."""
    arch, Bn = o["arch"], X.shape[0]
    xin = X - P["b_dec"] if o["apply_b_dec"] else X
    z = xin @ P["W_enc"] + P["b_enc"]
    zd = z.detach()
    info = {}
    if arch == "relu":
        f = torch.relu(z)
        margins.append(zd.abs().min())
    elif arch in JUMP:
        eps, th = o["bandwidth"], P["threshold"]
        f = JumpReLUFn.apply(z, th, eps)
        u = zd - th.detach()
        margins += [u.abs().min(), (u.abs() - eps / 2).abs().min()]
        info["window"] = float((u.abs() < eps / 2).double().mean())
    else:
        r = torch.relu(z)
        margins.append(zd.abs().min())
        if arch == "topk":
            k = o["k"]
            margins.append(cut_gap(torch.sort(r.detach(), dim=1, descending=True).values, k).min())
            mask = topk_mask(r.detach(), k, 1)
        else:  # BATCH: the k*B largest of the whole batch
            kb = o["k"] * Bn
            flat = r.detach().flatten()
            margins.append(cut_gap(torch.sort(flat, descending=True).values, kb))
            mask = topk_mask(flat, kb, 0).view_as(r)
        f = r * mask
    x_hat = f @ P["W_dec"] + P["b_dec"]
    if "W_skip" in P:  # a skip transcoder: y_hat = W_dec f + b_dec + W_skip x
        x_hat = x_hat + X @ P["W_skip"].T
    terms = {"mse_loss": ((x_hat - Y) ** 2).sum(1).mean()}
    if arch == "matryoshka_batchtopk":  # every inner prefix of latents reconstructs on its own
        widths = o["matryoshka_widths"]
        terms["inner_mse_loss"] = sum(((f[:, :w] @ P["W_dec"][:w] + P["b_dec"] - Y) ** 2).sum(1).mean()
                                      for w in widths[:-1])
    if arch == "relu":
        terms["l1_loss"] = o["l1"] / Bn * (f * P["W_dec"].norm(dim=1)).sum()
    if arch in JUMP:
        l0 = StepFn.apply(z, P["threshold"], o["bandwidth"]).sum(1).mean()
        if arch == "jumprelu":
            terms["l0_loss"] = o["l0"] * l0
        else:
            terms["target_l0_loss"] = o["l0"] * (l0 / o["target_l0"] - 1) ** 2
    if arch in SPARSE:
        if dead.any():
            e = (Y - x_hat).detach()
            rd = torch.relu(z[:, dead])
            ka = min(o["aux_k"], int(dead.sum()))
            margins.append(cut_gap(torch.sort(rd.detach(), dim=1, descending=True).values, ka).min())
            fa = rd * topk_mask(rd.detach(), ka, 1)
            e_hat = fa @ P["W_dec"][dead]
            terms["auxk_loss"] = o["aux_coeff"] * ((e - e_hat) ** 2).sum() / (e ** 2).sum()
        else:
            terms["auxk_loss"] = torch.zeros((), dtype=z.dtype)
    if arch == "ortsae":
        W = P["W_dec"]
        Wn = W / W.norm(dim=1, keepdim=True)
        C = (Wn @ Wn.T).masked_fill(torch.eye(W.shape[0], dtype=torch.bool), float("-inf"))
        top2 = torch.topk(C.detach(), 2, dim=1).values
        margins.append((top2[:, 0] - top2[:, 1]).min())
        terms["ortho_loss"] = o["ortho"] / W.shape[0] * C.max(dim=1).values.sum()
    info["f"] = f.detach()
    return terms, info


def project_decoder_gradient(P):
    """g_j <- g_j - (g_j . w_j) w_j / ||w_j||^2 for every decoder row j."""
    W, g = P["W_dec"], P["W_dec"].grad
    g -= (g * W).sum(1, keepdim=True) / (W * W).sum(1, keepdim=True) * W


def first_grads(init, X, Y, o, dead, dtype):
    """The gradients Adam's first step sees (projected where the variant projects), in dtype."""
    P = {n: torch.tensor(a, dtype=dtype, requires_grad=True) for n, a in init.items()}
    terms, _ = loss_terms(P, torch.tensor(X, dtype=dtype), torch.tensor(Y, dtype=dtype), o, dead, [])
    sum(terms.values()).backward()
    with torch.no_grad():
        if o["arch"] in UNIT_NORM:
            project_decoder_gradient(P)
    return {n: p.grad.double() for n, p in P.items()}


def reference(init, X, Y, o, steps):
    """Runs `steps` training steps; returns first-step terms / l0 / grads and the final weights."""
    P = {n: torch.tensor(a, dtype=F64, requires_grad=True) for n, a in init.items()}
    Xt, Yt = torch.tensor(X, dtype=F64), torch.tensor(Y, dtype=F64)
    opt = torch.optim.Adam(list(P.values()), lr=o["lr"], betas=(o["beta1"], o["beta2"]), eps=o["eps"])
    dead = torch.tensor(o["dead_mask"] != 0) if o.get("dead_mask") is not None else torch.zeros(M, dtype=torch.bool)
    margins, res, theta_bt = [], {"dead_per_step": []}, None
    # Adam's first step is about lr * sign(g): an entry whose float32 rounding error is not far
    # below its value could flip. The float32 replay of the same formulas measures that error.
    g64, g32 = first_grads(init, X, Y, o, dead, F64), first_grads(init, X, Y, o, dead, torch.float32)
    res["conditioning"] = min(float((g64[n].abs() / (g64[n] - g32[n]).abs().clamp(min=1e-300))[g64[n] != 0].min())
                              if (g64[n] != 0).any() else float("inf") for n in g64)
    for step in range(steps):
        res["dead_per_step"].append(int(dead.sum()))
        opt.zero_grad()
        terms, info = loss_terms(P, Xt, Yt, o, dead, margins)
        total = sum(terms.values())
        total.backward()
        if step == 0:
            res["terms"] = {n: float(v) for n, v in terms.items()}
            res["loss"] = float(total)
            res["l0"] = float((info["f"] != 0).double().sum(1).mean())
            res["grads"] = {n: p.grad.detach().clone().numpy() for n, p in P.items()}
            res["window"] = info.get("window")
        with torch.no_grad():
            if o["arch"] in UNIT_NORM:
                project_decoder_gradient(P)
        opt.step()
        with torch.no_grad():
            if o["arch"] in UNIT_NORM:
                P["W_dec"] /= P["W_dec"].norm(dim=1, keepdim=True)
            if o["arch"] in JUMP:
                P["threshold"].clamp_(min=0.0)
            if o["arch"] in BATCH:
                f = info["f"]
                mn = float(f[f > 0].min())
                theta_bt = mn if theta_bt is None else theta_bt + 0.01 * (mn - theta_bt)
            if o["arch"] in SPARSE:
                dead = dead & ~(info["f"] != 0).any(0)
    res["params"] = {n: p.detach().numpy() for n, p in P.items()}
    res["batchtopk_threshold"] = theta_bt
    res["margin"] = float(min(float(v) for v in margins)) if margins else float("inf")
    return res


# ---------------------------------------------------------------------------------------------
# Cases


def make_inputs(o, seed):
    rng = np.random.default_rng(seed)
    arch = o["arch"]
    X = (rng.normal(size=(B, D)) + 0.2).astype(np.float32)
    d_out = o.get("d_out") or D  # a transcoder's targets Y [B, d_out]; an SAE's are X
    Y = (rng.normal(size=(B, d_out)) * 0.8 - 0.1).astype(np.float32) if o.get("d_out") else X
    W_dec = rng.normal(size=(M, d_out))
    if arch in UNIT_NORM:
        W_dec /= np.linalg.norm(W_dec, axis=1, keepdims=True)
    else:
        W_dec *= (rng.uniform(0.2, 1.0, size=M) / np.linalg.norm(W_dec, axis=1))[:, None]
    W_enc = rng.normal(size=(D, M)) / np.sqrt(D)
    b_enc = rng.normal(size=M) * 0.2
    b_dec = rng.normal(size=d_out) * 0.2
    dead_mask = None
    if o.get("aux_k"):
        dead = rng.permutation(M)[: M // 4]
        b_enc[dead] -= 1.0  # dead latents rarely win the main selection, so AuxK dominates their gradient
        dead_mask = np.zeros(M, dtype=np.float32)
        dead_mask[dead] = 1.0
    w = {"W_enc": W_enc, "W_dec": W_dec, "b_enc": b_enc, "b_dec": b_dec}
    if o.get("skip"):
        w["W_skip"] = rng.normal(size=(d_out, D)) * 0.1
    w = {n: a.astype(np.float32) for n, a in w.items()}
    if arch in JUMP:
        x64 = X.astype(np.float64) - w["b_dec"] if o["apply_b_dec"] else X.astype(np.float64)
        z = x64 @ w["W_enc"].astype(np.float64) + w["b_enc"]
        q = rng.uniform(0.4, 0.85, size=M)
        th = np.array([np.quantile(z[:, j], q[j]) for j in range(M)])
        th = np.maximum(th, 0.02)
        th[rng.permutation(M)[:4]] = 1e-3  # near zero: the target-L0 step drives these below 0 (clamp)
        w["threshold"] = th.astype(np.float32)
    return w, X, Y, dead_mask


DEFAULTS = dict(k=4, l1=0.1, l0=0.05, target_l0=25.0, bandwidth=0.5, ortho=2.0, chunks=1, aux_k=0,
                aux_coeff=1.0, lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, apply_b_dec=1, steps=1)


def run_tool(o, w, X, Y, dead_mask, tag):
    wp, xp, op = (os.path.join(TMP, f"{tag}.{s}") for s in ("w.safetensors", "x.npy", "out.safetensors"))
    write_safetensors(wp, w)
    np.save(xp, X)
    args = [TOOL, "--arch", o["arch"], "--weights", wp, "--data", xp, "--out", op]
    if o.get("d_out"):
        yp = os.path.join(TMP, f"{tag}.y.npy")
        np.save(yp, Y)
        args += ["--target", yp]
    for key in ("k", "l1", "l0", "target_l0", "bandwidth", "ortho", "chunks", "aux_k", "aux_coeff",
                "lr", "beta1", "beta2", "eps", "apply_b_dec", "steps"):
        args += ["--" + key.replace("_", "-"), repr(o[key])]
    if o.get("matryoshka_widths"):
        args += ["--matryoshka-widths", ",".join(str(w) for w in o["matryoshka_widths"])]
    if dead_mask is not None:
        mp = os.path.join(TMP, f"{tag}.dead.npy")
        np.save(mp, dead_mask)
        args += ["--dead-mask", mp]
    p = subprocess.run(args, capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({p.returncode}):\n{p.stderr}")
    return json.loads(p.stdout.strip().splitlines()[-1]), read_safetensors(op)


def rel_dev(got, ref):
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    if got.shape != ref.shape:
        return float("inf")
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    return float(np.abs(got - ref).max()) / scale if scale > 0 else float(np.abs(got - ref).max())


def compare(name, got, ref, tol=RTOL):
    dev = rel_dev(got, ref)
    check(name, dev <= tol, f"max dev {dev:.2e} (of max |ref| {float(np.abs(np.asarray(ref)).max()):.3g})")
    return dev


def run_case(tag, worst, **kw):
    o = dict(DEFAULTS, **kw)
    for seed in range(1000, 1300):
        w, X, Y, dead_mask = make_inputs(o, seed)
        ref = reference(w, X, Y, dict(o, dead_mask=dead_mask), o["steps"])
        if ref["margin"] > MARGIN and ref["conditioning"] > CONDITIONING:
            break
    else:
        raise AssertionError(f"{tag}: no seed keeps the decisions {MARGIN} from their edges "
                             f"and the first gradients {CONDITIONING}x above their rounding")
    print(f"# {tag}: seed {seed}, decision margin {ref['margin']:.1e}, "
          f"first-step gradients >= {ref['conditioning']:.0f} x their float32 rounding")
    out, got = run_tool(o, w, X, Y, dead_mask, tag)
    devs = []
    arch = o["arch"]

    # validity of the case itself
    if o.get("aux_k"):
        check(f"{tag}: AuxK term exercised (dead latents per step {ref['dead_per_step']})",
              ref["terms"]["auxk_loss"] > 1e-3 and out["terms"].get("auxk_loss", 0) > 1e-3,
              f"ref {ref['terms']['auxk_loss']:.4g} libsae {out['terms'].get('auxk_loss')}")
        if o["steps"] > 1:
            dps = ref["dead_per_step"]
            check(f"{tag}: dead latents revive and AuxK stays on in every step", dps[-1] > 0 and dps[-1] < dps[0], str(dps))
    if arch in JUMP:
        check(f"{tag}: STE window exercised", ref["window"] > 0.1, f"{100 * ref['window']:.0f}% of z within eps/2 of theta")
        if arch == "jumprelu-target":
            clamped = int((ref["params"]["threshold"] == 0).sum())
            check(f"{tag}: threshold clamp exercised", clamped > 0, f"{clamped} thresholds clamped to 0")
            check(f"{tag}: clamped thresholds are exactly 0 in libsae",
                  np.array_equal(got["threshold"] == 0, ref["params"]["threshold"] == 0))

    # first step: loss terms, l0, gradients
    check(f"{tag}: loss term names", set(out["terms"]) == set(ref["terms"]), f"libsae {sorted(out['terms'])} ref {sorted(ref['terms'])}")
    for name, v in ref["terms"].items():
        if name in out["terms"]:
            devs.append(compare(f"{tag}: {name}", out["terms"][name], v, 1e-5 if abs(v) > 1e-6 else 1e-6))
    devs.append(compare(f"{tag}: loss", out["loss"], ref["loss"], 1e-5))
    check(f"{tag}: l0", abs(out["l0"] - ref["l0"]) < 1e-9, f"libsae {out['l0']} ref {ref['l0']}")
    for name, g in ref["grads"].items():
        devs.append(compare(f"{tag}: grad_{name}", got.get("grad_" + name, np.zeros(0)), g))

    # after the step(s): the update of every tensor (W_after - W_before), and the tensor itself
    for name, p in ref["params"].items():
        before = w[name].astype(np.float64)
        after = got.get(name, np.zeros(0))
        devs.append(compare(f"{tag}: {name} update after {o['steps']} step(s)", after - before if after.shape == before.shape else after, p - before))
        compare(f"{tag}: {name} after {o['steps']} step(s)", after, p, RTOL / 10)
    if arch in BATCH:
        devs.append(compare(f"{tag}: batchtopk threshold (moving average)", out.get("batchtopk_threshold", np.nan),
                            ref["batchtopk_threshold"], 1e-5))
    worst[tag] = max(devs)


def main():
    worst = {}
    run_case("relu", worst, arch="relu")
    run_case("relu no-b_dec", worst, arch="relu", apply_b_dec=0)
    run_case("topk", worst, arch="topk", aux_k=4)
    run_case("topk no-b_dec", worst, arch="topk", aux_k=4, apply_b_dec=0)
    run_case("topk no-dead", worst, arch="topk")
    run_case("topk 3 steps", worst, arch="topk", aux_k=4, steps=3)
    run_case("batchtopk", worst, arch="batchtopk", aux_k=4)
    run_case("batchtopk 3 steps", worst, arch="batchtopk", aux_k=4, steps=3)
    run_case("jumprelu", worst, arch="jumprelu")
    run_case("jumprelu no-b_dec", worst, arch="jumprelu", apply_b_dec=0)
    run_case("jumprelu 3 steps", worst, arch="jumprelu", steps=3)
    run_case("jumprelu-target", worst, arch="jumprelu-target")
    run_case("jumprelu-target 3 steps", worst, arch="jumprelu-target", steps=3, beta1=0.8, beta2=0.95, eps=1e-3)
    run_case("ortsae", worst, arch="ortsae", aux_k=4)
    run_case("ortsae 3 steps", worst, arch="ortsae", aux_k=4, steps=3)
    run_case("matryoshka", worst, arch="matryoshka_batchtopk", aux_k=4, matryoshka_widths=[5, 17, M])
    run_case("matryoshka 3 steps no-b_dec", worst, arch="matryoshka_batchtopk", matryoshka_widths=[8, M], steps=3,
             apply_b_dec=0)
    # Transcoders (targets Y of width d_out != d_in; no b_dec subtraction) and skip transcoders.
    run_case("relu transcoder", worst, arch="relu", d_out=D_OUT, apply_b_dec=0)
    run_case("relu skip transcoder 3 steps", worst, arch="relu", d_out=D_OUT, skip=True, apply_b_dec=0, steps=3)
    run_case("jumprelu skip transcoder", worst, arch="jumprelu", d_out=D_OUT, skip=True, apply_b_dec=0)
    run_case("batchtopk skip transcoder 3 steps", worst, arch="batchtopk", aux_k=4, d_out=D_OUT, skip=True,
             apply_b_dec=0, steps=3)
    run_case("topk transcoder", worst, arch="topk", aux_k=4, d_out=D_OUT, apply_b_dec=0)
    print("# worst relative deviation per case: " + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()))
    print(f"{len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
