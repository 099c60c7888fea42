#!/usr/bin/python3
"""One SAE training step in plain PyTorch (CPU, float32): a measuring stick for `sae bench`.

Not part of libsae. It is what a user of SAELens-style code would write, from the formulas
in DESIGN.md section 1, so `benchmarks/compare.py` can put libsae's speed and memory next to
it. Shapes (SAELens layout): x [B, d], W_enc [d, m], W_dec [m, d], b_enc [m], b_dec [d].

    z     = (x - b_dec) @ W_enc + b_enc
    f     = act(z)
    x_hat = f @ W_dec + b_dec
    loss  = mean_t ||x_t - x_hat_t||^2 + extra

    relu       f = relu(z);  extra = l1 * mean_t sum_j f_tj ||W_dec[j]||        (l1 = 0.3)
    topk       f = the k largest of relu(z) per token, scattered into a dense [B, m];
               extra = AuxK: alpha * ||e_hat - e||^2 / ||e||^2 with e = x - x_hat (detached),
               e_hat = top-k_aux of relu(z) over dead latents @ W_dec, k_aux = d/2,
               alpha = 1/32, dead = silent for 10M tokens (so it never fires in a short run)
    batchtopk  f = the k*B largest of relu(z) over the whole flattened batch; extra = AuxK
    jumprelu   f = z * H(z - theta), per-latent theta (init 0.3, clamped >= 0 after a step);
               extra = lambda * mean_t sum_j H(z_tj - theta_j)                  (lambda = 1e-2)
               straight-through estimator, rectangle kernel K(u) = 1[|u| < 1/2], eps = 0.3:
               df/dtheta = -(theta/eps) K((z - theta)/eps), dH/dtheta = -(1/eps) K((z - theta)/eps)
    ortsae     batchtopk + gamma * (1/m) sum_i max_{j != i in chunk(i)} cos(W_dec[i], W_dec[j])
               over K random equal chunks of latents (new permutation every step), gamma = 0.25

Init: W_dec rows random directions of norm 0.1 (relu) or 1 (others), W_enc = W_dec.T,
b_enc = 0, b_dec = mean of the first batch. Step: forward, loss, backward, (unit-norm variants
topk/batchtopk/jumprelu/ortsae: remove the gradient component parallel to each decoder row),
Adam(lr 2e-4) step, (unit-norm variants: renormalise decoder rows).

Data are X ~ N(0, 1), a fresh [B, d] batch per step drawn outside the timed region. The last
stdout line is one JSON object (see `result` in main). `--check` prints the loss trajectory.
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time

from benchutil import rss_mb

ARCHS = ("relu", "topk", "batchtopk", "jumprelu", "ortsae")
UNIT_NORM = {"topk", "batchtopk", "jumprelu", "ortsae"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", choices=ARCHS, required=True)
    p.add_argument("--d-in", type=int, default=768)
    p.add_argument("--d-sae", type=int, default=16384)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--steps", type=int, default=5, help="timed steps")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps before the timed ones")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--chunks", type=int, default=8, help="OrtSAE: K chunks of latents")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--check", action="store_true",
                   help="print the loss of every step (to stderr) and the first/last in the JSON")
    return p.parse_args(argv)


ARGS = parse_args()
# Debian's torch reaches OpenBLAS through the generic libblas.so.3, so torch.set_num_threads
# does not reach it: cap OpenBLAS's own pool (and OpenMP's) before torch is imported.
os.environ["OMP_NUM_THREADS"] = str(ARGS.threads)
os.environ["OPENBLAS_NUM_THREADS"] = str(ARGS.threads)

import torch  # noqa: E402

torch.set_num_threads(ARGS.threads)
BASELINE_RSS_MB = rss_mb()


class JumpReLUFn(torch.autograd.Function):
    """f = z * H(z - theta); z gets the plain mask, theta the rectangle-kernel STE."""

    @staticmethod
    def forward(ctx, z, theta, eps):
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return z * (z > theta)

    @staticmethod
    def backward(ctx, grad):
        z, theta = ctx.saved_tensors
        eps = ctx.eps
        kernel = ((z - theta).abs() < eps / 2).to(z.dtype)  # K((z - theta) / eps)
        grad_theta = (-(theta / eps) * kernel * grad).sum(dim=0)
        return grad * (z > theta), grad_theta, None


class StepFn(torch.autograd.Function):
    """H(z - theta); no gradient to z, rectangle-kernel STE for theta."""

    @staticmethod
    def forward(ctx, z, theta, eps):
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, grad):
        z, theta = ctx.saved_tensors
        eps = ctx.eps
        kernel = ((z - theta).abs() < eps / 2).to(z.dtype)
        return None, (-(1.0 / eps) * kernel * grad).sum(dim=0), None


class SAE(torch.nn.Module):
    def __init__(self, arch, d_in, d_sae, k, chunks, x0, gen):
        super().__init__()
        self.arch, self.k, self.chunks, self.gen = arch, k, chunks, gen
        self.l1, self.lam, self.eps, self.gamma = 0.3, 1e-2, 0.3, 0.25
        self.aux_k, self.aux_alpha, self.dead_tokens = d_in // 2, 1.0 / 32, 10_000_000
        w = torch.randn(d_sae, d_in, generator=gen)
        w *= (0.1 if arch == "relu" else 1.0) / w.norm(dim=1, keepdim=True)
        self.W_dec = torch.nn.Parameter(w)
        self.W_enc = torch.nn.Parameter(w.T.clone())
        self.b_enc = torch.nn.Parameter(torch.zeros(d_sae))
        self.b_dec = torch.nn.Parameter(x0.mean(dim=0))
        if arch == "jumprelu":
            self.threshold = torch.nn.Parameter(torch.full((d_sae,), 0.3))
        if arch in ("topk", "batchtopk", "ortsae"):
            self.register_buffer("since_fired", torch.zeros(d_sae, dtype=torch.long))

    def activation(self, z):
        if self.arch == "relu":
            return torch.relu(z)
        if self.arch == "topk":  # as SAELens's TopK
            top = torch.topk(z, self.k, dim=-1)
            return torch.zeros_like(z).scatter(-1, top.indices, torch.relu(top.values))
        if self.arch in ("batchtopk", "ortsae"):  # as SAELens's BatchTopK
            acts = torch.relu(z).flatten()
            top = torch.topk(acts, self.k * z.shape[0], dim=-1)
            return torch.zeros_like(acts).scatter(-1, top.indices, top.values).reshape(z.shape)
        return JumpReLUFn.apply(z, self.threshold, self.eps)

    def auxk_loss(self, x, x_hat, z):
        dead = self.since_fired >= self.dead_tokens
        if not dead.any():
            return z.new_zeros(())
        e = (x - x_hat).detach()
        zd = torch.relu(z[:, dead])
        top = torch.topk(zd, min(self.aux_k, zd.shape[1]), dim=-1)
        fd = torch.zeros_like(zd).scatter(-1, top.indices, top.values)
        e_hat = fd @ self.W_dec[dead]
        return self.aux_alpha * (e_hat - e).pow(2).sum() / e.pow(2).sum()

    def ortho_loss(self):
        m = self.W_dec.shape[0]
        w = self.W_dec / self.W_dec.norm(dim=1, keepdim=True)
        total = w.new_zeros(())
        for idx in torch.randperm(m, generator=self.gen).tensor_split(self.chunks):
            wc = w[idx]
            cos = wc @ wc.T
            cos = cos.masked_fill(torch.eye(len(idx), dtype=torch.bool), float("-inf"))
            total = total + cos.max(dim=1).values.sum()
        return self.gamma * total / m

    def forward(self, x):
        z = (x - self.b_dec) @ self.W_enc + self.b_enc
        f = self.activation(z)
        x_hat = f @ self.W_dec + self.b_dec
        loss = (x_hat - x).pow(2).sum(dim=-1).mean()
        if self.arch == "relu":
            loss = loss + self.l1 * (f * self.W_dec.norm(dim=1)).sum(dim=-1).mean()
        elif self.arch == "jumprelu":
            loss = loss + self.lam * StepFn.apply(z, self.threshold, self.eps).sum(dim=-1).mean()
        else:
            loss = loss + self.auxk_loss(x, x_hat, z)
            if self.arch == "ortsae":
                loss = loss + self.ortho_loss()
            with torch.no_grad():  # dead-latent bookkeeping for AuxK
                self.since_fired += x.shape[0]
                self.since_fired[(f > 0).any(dim=0)] = 0
        return loss


def train_step(sae, opt, x):
    loss = sae(x)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    unit_norm = sae.arch in UNIT_NORM
    if unit_norm:  # drop the gradient component parallel to each (unit) decoder row
        with torch.no_grad():
            g, w = sae.W_dec.grad, sae.W_dec
            g -= (g * w).sum(dim=1, keepdim=True) * w
    opt.step()
    with torch.no_grad():
        if unit_norm:
            sae.W_dec /= sae.W_dec.norm(dim=1, keepdim=True)
        if sae.arch == "jumprelu":
            sae.threshold.clamp_(min=0)
    return loss.item()


def main(a):
    if a.arch in ("topk", "batchtopk", "ortsae") and not 0 < a.k <= a.d_sae:
        sys.exit("torch_step.py: --k must be in [1, d_sae]")
    gen = torch.Generator().manual_seed(a.seed)
    draw = lambda: torch.randn(a.batch, a.d_in, generator=gen)  # noqa: E731
    x = draw()
    sae = SAE(a.arch, a.d_in, a.d_sae, a.k, a.chunks, x, gen)
    opt = torch.optim.Adam(sae.parameters(), lr=a.lr)
    times, losses = [], []
    for step in range(a.warmup + a.steps):
        if step > 0:
            x = draw()
        t0 = time.perf_counter()
        losses.append(train_step(sae, opt, x))
        dt = time.perf_counter() - t0
        if step >= a.warmup:
            times.append(dt)
        if a.check:
            print(f"step {step:4d} loss {losses[-1]:.6f} ({dt * 1e3:.1f} ms)", file=sys.stderr)
    sec = statistics.median(times) if times else float("nan")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    result = {
        "impl": "pytorch", "torch_version": torch.__version__, "arch": a.arch,
        "d_in": a.d_in, "d_sae": a.d_sae, "k": a.k, "batch": a.batch, "steps": a.steps,
        "threads": a.threads, "tokens_per_s": a.batch / sec, "seconds_per_step": sec,
        "step_seconds": times, "peak_rss_mb": peak, "baseline_rss_mb": BASELINE_RSS_MB,
        "training_mb": peak - BASELINE_RSS_MB,
    }
    if a.check:
        result.update(first_loss=losses[0], last_loss=losses[-1])
    print(json.dumps(result))


if __name__ == "__main__":
    main(ARGS)
