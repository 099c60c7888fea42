#!/usr/bin/env python3
"""One SAELens training step, timed on the CPU: the peer as the yardstick for `sae bench`.

Not part of libsae, and no re-implementation: it builds SAELens's own `*TrainingSAE` and
`SAETrainer` (from the installed `sae_lens` package) and times `SAETrainer.step`, the same
call `SAETrainer.fit` makes once per batch. Needs a Python with `sae-lens` and `torch`
(a venv: see benchmarks/README.md); Debian's python3-torch has no sae-lens.

    --arch      SAELens class (registry name)                   config
    relu        StandardTrainingSAE   ("standard")              StandardTrainingSAEConfig
    topk        TopKTrainingSAE       ("topk")                  TopKTrainingSAEConfig(k)
    batchtopk   BatchTopKTrainingSAE  ("batchtopk")             BatchTopKTrainingSAEConfig(k)
    jumprelu    JumpReLUTrainingSAE   ("jumprelu")              JumpReLUTrainingSAEConfig

Every other setting is SAELens's default (dtype float32, decoder_init_norm 0.1; TopK and
BatchTopK rescale_acts_by_decoder_norm=True, use_sparse_activations=False, AuxK coefficient
1; JumpReLU "step" L0 loss, threshold 0.01, bandwidth 0.05; ReLU L1 coefficient 1; Adam
lr 3e-4, betas 0.9/0.999, constant lr schedule, dead_feature_window 1000 steps).

What one timed step is (sae_lens 6.x, training/sae_trainer.py: `fit` -> `step` -> `_train_step`):
  - `maybe_reset_sparsity()` (a no-op until feature_sampling_window steps have run);
  - `step(batch)`: batch.to(device), the activation scaler (identity: no normalisation), then
  - with autocast (bf16, only with `--autocast bf16`, exactly the context SAETrainer builds
    from its `autocast` option: torch.autocast(device_type, dtype=torch.bfloat16)):
      `sae.training_forward_pass(TrainStepInput(sae_in, coefficients, dead_neuron_mask,
      n_training_steps, is_logging_step))`: encode, activation, dense decode
      (feature_acts @ W_dec), MSE + the architecture's loss (L1 weighted by decoder norm /
      AuxK over dead latents / L0 via the step-function STE); BatchTopK's
      `update_topk_threshold` (moving average of the smallest kept activation) and
      JumpReLU's threshold clamp happen inside it; then the dead-neuron and
      feature-frequency bookkeeping over the dense [B, d_sae] codes;
  - outside autocast: loss.backward(), clip_grad_norm_(parameters, 1.0), Adam step,
    zero_grad(), lr-scheduler step, coefficient-scheduler steps;
  - `n_training_steps += 1`.
SAELens does not renormalise decoder rows after a step (TopK/BatchTopK divide by the
decoder norms inside the forward pass instead). AuxK runs only once a latent has been
silent for dead_feature_window (1000) steps, so never in a short run (as in libsae's bench
and torch_step.py). Not timed: wandb logging, evals, checkpoints, the progress bar (all off
or every-100-steps work in `fit`).

Data are fresh X ~ N(0, 1) [B, d_in] float32 batches drawn outside the timed region. The
reported time is the median of the timed steps. The last stdout line is one JSON object
(see `result` in main); `matmul_dtypes` counts the matrix products of the first (untimed)
warmup step by output dtype, forward and backward, to show what autocast changed; MB = 2^20 bytes, training_mb = peak RSS minus the RSS after
importing torch and sae_lens and before building the SAE.
"""
import argparse
import collections
import json
import os
import resource
import statistics
import sys
import time
from contextlib import nullcontext

from benchutil import rss_mb

ARCHS = ("relu", "topk", "batchtopk", "jumprelu")
SAELENS_NAME = {"relu": "standard", "topk": "topk", "batchtopk": "batchtopk",
                "jumprelu": "jumprelu"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", choices=ARCHS, required=True)
    p.add_argument("--d-in", type=int, default=768)
    p.add_argument("--d-sae", type=int, default=16384)
    p.add_argument("--k", type=int, default=32, help="topk: per token; batchtopk: mean per token")
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--steps", type=int, default=5, help="timed steps")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps before the timed ones")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--autocast", choices=("none", "bf16"), default="none",
                   help="bf16: SAETrainerConfig(autocast=True), i.e. torch.autocast('cpu', "
                        "dtype=torch.bfloat16) around the forward pass")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=3e-4, help="Adam lr (SAELens's default)")
    p.add_argument("--check", action="store_true",
                   help="print every step's loss to stderr and first/last loss in the JSON")
    a = p.parse_args(argv)
    if a.arch in ("topk", "batchtopk") and not 0 < a.k <= a.d_sae:
        p.error("--k must be in [1, d_sae]")
    for name in ("d_in", "d_sae", "batch", "threads"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if a.steps < 1 or a.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    return a


ARGS = parse_args()
# Thread pools read these when torch loads: set them first. The PyPI torch wheel uses MKL
# and OpenMP; a Debian-style torch reaches OpenBLAS, which has its own variable.
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)
os.environ.setdefault("WANDB_MODE", "disabled")  # never log anywhere (log_to_wandb is off too)

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

torch.set_num_threads(ARGS.threads)
TORCH_RSS_MB = rss_mb()

import sae_lens  # noqa: E402
from sae_lens.config import LoggingConfig, SAETrainerConfig  # noqa: E402
from sae_lens.registry import get_sae_training_class  # noqa: E402
from sae_lens.training.sae_trainer import SAETrainer  # noqa: E402

BASELINE_RSS_MB = rss_mb()


class MatmulDtypes(TorchDispatchMode):
    """Counts matrix products (aten mm/addmm/bmm/sparse mm) by output dtype."""

    OPS = {"mm", "addmm", "bmm", "baddbmm", "_sparse_mm", "_sparse_addmm", "sparse_mm"}

    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name in self.OPS and isinstance(out, torch.Tensor):
            self.counts[f"{name}:{str(out.dtype).removeprefix('torch.')}"] += 1
        return out


def mkl_version():
    for line in torch.__config__.show().splitlines():
        if "Math Kernel Library" in line:
            return line.split("Version", 1)[-1].strip()
    return None


def build(a):
    """SAELens's TrainingSAE for --arch and the SAETrainer that trains it."""
    sae_cls, cfg_cls = get_sae_training_class(SAELENS_NAME[a.arch])
    kwargs = {"d_in": a.d_in, "d_sae": a.d_sae, "dtype": "float32", "device": "cpu"}
    if a.arch in ("topk", "batchtopk"):
        kwargs["k"] = a.k
    cfg = cfg_cls(**kwargs)
    torch.manual_seed(a.seed)
    sae = sae_cls(cfg)
    sae.to("cpu")  # as fit() does
    total = a.batch * (a.warmup + a.steps)
    trainer_cfg = SAETrainerConfig(
        total_training_samples=total, train_batch_size_samples=a.batch, lr=a.lr,
        lr_end=a.lr / 10,  # the runner config's default (used only by cosine schedules)
        device="cpu", autocast=(a.autocast == "bf16"),
        logger=LoggingConfig(log_to_wandb=False))
    # The data provider is only read by fit() and by norm estimation; batches are passed in.
    trainer = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=iter(()))
    return sae, trainer


def main(a):
    sae, trainer = build(a)
    gen = torch.Generator().manual_seed(a.seed + 1)
    times, losses, matmuls = [], [], None
    for step in range(a.warmup + a.steps):
        x = torch.randn(a.batch, a.d_in, generator=gen)  # outside the timed region
        t0 = time.perf_counter()
        with MatmulDtypes() if step == 0 and a.warmup > 0 else nullcontext() as probe:
            trainer.maybe_reset_sparsity()  # SAETrainer.fit's loop body, less wandb/checkpoints
            out = trainer.step(x)
            trainer.n_training_steps += 1
        dt = time.perf_counter() - t0
        if step >= a.warmup:
            times.append(dt)
        if a.check:
            losses.append(out.loss.item())
            parts = " ".join(f"{k} {v.item():.5f}" for k, v in out.losses.items())
            print(f"step {step:4d} loss {losses[-1]:.6f} ({parts}) {dt * 1e3:.1f} ms",
                  file=sys.stderr, flush=True)
        if probe is not None:
            matmuls = dict(sorted(probe.counts.items()))
        del out
    sec = statistics.median(times)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    cfg = sae.cfg
    result = {
        "impl": "saelens", "sae_lens_version": sae_lens.__version__,
        "torch_version": torch.__version__, "torch_cpu_capability":
            torch.backends.cpu.get_cpu_capability(), "mkl_version": mkl_version(),
        "arch": a.arch, "sae_lens_architecture": cfg.architecture(),
        "sae_lens_class": type(sae).__name__, "autocast": a.autocast,
        "d_in": a.d_in, "d_sae": a.d_sae, "k": a.k, "batch": a.batch, "steps": a.steps,
        "warmup": a.warmup, "threads": a.threads, "lr": a.lr,
        "matmul_dtypes": matmuls,
        "tokens_per_s": a.batch / sec, "seconds_per_step": sec, "step_seconds": times,
        "peak_rss_mb": peak, "torch_rss_mb": TORCH_RSS_MB, "baseline_rss_mb": BASELINE_RSS_MB,
        "training_mb": peak - BASELINE_RSS_MB,
    }
    if a.arch == "batchtopk":
        result["topk_threshold"] = float(sae.topk_threshold)
    if a.check:
        result.update(first_loss=losses[0], last_loss=losses[-1])
    print(json.dumps(result))


if __name__ == "__main__":
    main(ARGS)
