#!/usr/bin/env python3
"""TopK / BatchTopK trained by SAELens's (or dictionary_learning's) own trainer on `sae synth` data.

Trains on libsae's synthetic data and evaluates the result, and libsae's SAEs (--eval-only),
the same way.

Question (issue 14, item 4): on `sae synth` superposition data libsae's BatchTopK reconstructs
worse than its TopK at the same L0. Does SAELens's BatchTopK show the same gap?

SAELens is used as SAELens trains: its TrainingSAE classes (TopKTrainingSAE,
BatchTopKTrainingSAE with their defaults: decoder_init_norm 0.1, W_enc = W_dec^T, b_enc = b_dec
= 0, rescale_acts_by_decoder_norm, AuxK coefficient 1.0 with dead window 1000 steps,
topk_threshold_lr 0.01) driven by its SAETrainer (Adam betas 0.9/0.999, gradient clipping at
norm 1, its lr scheduler), with the trainer settings of sae_lens.synthetic.train_toy_sae
(SAELens's own recipe for toy data) except that the lr schedule matches libsae's `sae train`:
linear warm-up over 100 steps, constant, linear decay to 0 over the last 20% of the steps.
Batches of train.npy rows, one random permutation per epoch (seeded by --seed).

Evaluation on held-out rows, identical for every SAE, computed from the SAELens-format
inference weights (W_enc, b_enc, W_dec, b_dec, threshold):
  fvu  = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2
  l0   = mean number of nonzero latents per row
  mmcs = mean over true features of the max cosine with any decoder row
For BatchTopK: "inference" = the saved JumpReLU (one global threshold), as SAELens saves it;
"train-mode" = batch top-(k*B) selection over held-out batches of B = 1024 rows. Only whole
batches are evaluated (19456 of 20000 held-out rows), so fvu differs from `sae eval`'s in the
fourth digit; fvu_saelens_forward is SAELens's own loaded SAE on all rows (a cross-check).

dictionary_learning (PyPI `dictionary-learning`, 0.1.0): its package __init__ needs nnsight,
its trainers do not; `pip install --no-deps dictionary-learning` next to sae-lens (which brings
torch and einops) is enough for --impl dictionary_learning.

Usage (one synth file split into train / held-out rows, so both share the features):
  sae synth --out all.npy --d-in 64 --features 256 --samples 200000 --seed 7
  python -c "import numpy as np; X=np.load('all.npy'); np.save('train.npy', X[:180000]); np.save('heldout.npy', X[180000:])"
  python benchmarks/peer_toy_training.py --dir DIR --arch batchtopk --seed 0 [--steps 1500]
  python benchmarks/peer_toy_training.py --dir DIR --impl dictionary_learning --arch batchtopk
  python benchmarks/peer_toy_training.py --dir DIR --eval-only DIR/lib_batchtopk_s0 --arch batchtopk
DIR holds train.npy, heldout.npy and all_features.npy (or --features). Results: one JSON line.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file


def batches(x: torch.Tensor, batch: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(x.shape[0], generator=g)
        for i in range(0, x.shape[0] - batch + 1, batch):
            yield x[perm[i : i + batch]]


def train_saelens(arch: str, train: torch.Tensor, args) -> Path:
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(args.seed)
    common = dict(d_in=train.shape[1], d_sae=args.d_sae, dtype="float32", device="cpu")
    # ablations (defaults: SAELens's own)
    if args.decoder_init_norm is not None:
        common["decoder_init_norm"] = None if args.decoder_init_norm <= 0 else args.decoder_init_norm
    if args.aux_coeff is not None:
        common["aux_loss_coefficient"] = args.aux_coeff
    if args.no_rescale:
        common["rescale_acts_by_decoder_norm"] = False
    if args.no_clip:  # SAETrainer calls torch.nn.utils.clip_grad_norm_(params, 1.0) every step
        torch.nn.utils.clip_grad_norm_ = lambda params, max_norm, *a, **k: torch.tensor(0.0)
    if arch == "topk":
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(k=args.k, **common))
    else:
        sae = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(k=float(args.k), **common))
    decay = args.steps // 5 if args.decay is None else args.decay
    cfg = SAETrainerConfig(  # as sae_lens.synthetic.train_toy_sae, lr schedule as libsae's
        n_checkpoints=0,
        checkpoint_path=None,
        save_final_checkpoint=False,
        total_training_samples=args.steps * args.batch,
        train_batch_size_samples=args.batch,
        device="cpu",
        autocast=False,
        lr=args.lr,
        lr_end=args.lr,
        lr_scheduler_name="constant",
        lr_warm_up_steps=args.warmup,
        lr_decay_steps=decay,
        n_restart_cycles=1,
        adam_beta1=0.9,
        adam_beta2=0.999,
        dead_feature_window=1000,
        feature_sampling_window=2000,
        logger=LoggingConfig(log_to_wandb=False, eval_every_n_wandb_logs=2**31 - 1),
    )
    trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=batches(train, args.batch, args.seed))
    t0 = time.time()
    trainer.fit()
    out = Path(args.out or Path(args.dir) / f"saelens_{arch}_s{args.seed}_{args.steps}")
    sae.save_inference_model(out)  # BatchTopK -> JumpReLU with the global threshold, norms folded
    info = {
        "train_seconds": round(time.time() - t0, 1),
        "dead_at_end": int(trainer.dead_neurons.sum()),
        "topk_threshold": float(getattr(sae, "topk_threshold", torch.tensor(float("nan")))),
    }
    (out / "train_info.json").write_text(json.dumps(info))
    return out


def import_dictionary_learning():
    """dictionary_learning's package __init__ imports nnsight (for its LM activation buffer);
    its trainers do not need it, so import the trainer modules without running __init__."""
    import importlib.util
    import sys
    import types

    if "dictionary_learning" not in sys.modules:
        spec = importlib.util.find_spec("dictionary_learning")
        pkg = types.ModuleType("dictionary_learning")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["dictionary_learning"] = pkg
    from dictionary_learning.trainers.batch_top_k import BatchTopKTrainer
    from dictionary_learning.trainers.top_k import TopKTrainer

    return TopKTrainer, BatchTopKTrainer


def train_dictionary_learning(arch: str, train: torch.Tensor, args) -> Path:
    """dictionary_learning's TopKTrainer / BatchTopKTrainer with their defaults (unit-norm
    decoder, W_enc = W_dec^T, b_dec = geometric median of the first batch, AuxK alpha 1/32 with
    a 10M-token dead window, threshold EMA beta 0.999 from step 1000), driven as its trainSAE
    does (trainer.update(step, batch)); lr schedule as libsae's (warm-up, decay over the last 20%)."""
    import safetensors.torch

    TopKTrainer, BatchTopKTrainer = import_dictionary_learning()
    decay = args.steps // 5 if args.decay is None else args.decay
    cls = TopKTrainer if arch == "topk" else BatchTopKTrainer
    trainer = cls(steps=args.steps, activation_dim=train.shape[1], dict_size=args.d_sae, k=args.k,
                  layer=0, lm_name="toy", lr=args.lr, warmup_steps=args.warmup,
                  decay_start=args.steps - decay, seed=args.seed, device="cpu")
    t0 = time.time()
    data = batches(train, args.batch, args.seed)
    for step in range(args.steps):
        trainer.update(step, next(data))
    ae = trainer.ae
    out = Path(args.out or Path(args.dir) / f"dictlearn_{arch}_s{args.seed}_{args.steps}")
    out.mkdir(parents=True, exist_ok=True)
    w = {"W_enc": ae.encoder.weight.T, "b_enc": ae.encoder.bias, "W_dec": ae.decoder.weight.T,
         "b_dec": ae.b_dec}
    cfg = {"architecture": "topk", "d_in": train.shape[1], "d_sae": args.d_sae, "dtype": "float32",
           "device": "cpu", "apply_b_dec_to_input": True, "normalize_activations": "none", "k": args.k}
    if arch == "batchtopk":  # inference: encode(use_threshold=True) = JumpReLU with one threshold
        w["threshold"] = torch.full((args.d_sae,), float(ae.threshold))
        cfg["architecture"] = "jumprelu"
        del cfg["k"]
    safetensors.torch.save_file({k: v.detach().contiguous().float() for k, v in w.items()},
                                str(out / "sae_weights.safetensors"))
    (out / "cfg.json").write_text(json.dumps(cfg))
    info = {"train_seconds": round(time.time() - t0, 1),
            "dead_at_end": int((trainer.num_tokens_since_fired >= trainer.dead_feature_threshold).sum()),
            "topk_threshold": float(ae.threshold)}
    (out / "train_info.json").write_text(json.dumps(info))
    return out


@torch.no_grad()
def evaluate(sae_dir: Path, arch: str, k: int, held: torch.Tensor, feats: torch.Tensor, batch: int) -> dict:
    w = load_file(str(sae_dir / "sae_weights.safetensors"))
    W_enc, b_enc, W_dec, b_dec = (w[n].float() for n in ("W_enc", "b_enc", "W_dec", "b_dec"))
    thr = w["threshold"].float() if "threshold" in w else None
    norms = W_dec.norm(dim=1).clamp_min(1e-8)

    def pre(x):
        return (x - b_dec) @ W_enc + b_enc

    def fvu_l0(act):
        sq, l0 = 0.0, 0.0
        n = held.shape[0] // batch * batch  # whole batches only (train-mode needs them)
        for i in range(0, n, batch):
            x = held[i : i + batch]
            f = act(pre(x))
            sq += ((x - (f @ W_dec + b_dec)) ** 2).sum().item()
            l0 += (f != 0).sum().item()
        x = held[:n]
        return sq / ((x - x.mean(0)) ** 2).sum().item(), l0 / n

    def topk(z):
        v, i = z.topk(k, dim=-1)
        return torch.zeros_like(z).scatter(-1, i, v.relu())

    def batch_topk(z):  # selection on z * ||W_dec row||, as SAELens and libsae train
        s = z.relu() * norms
        v, i = s.flatten().topk(k * z.shape[0])
        keep = torch.zeros_like(s).flatten().scatter(0, i, 1.0).view_as(s)
        return z.relu() * keep

    def jumprelu(z):
        return z.relu() * (z > thr)

    res = {"sae": str(sae_dir), "arch": arch}
    if arch == "topk":
        res["fvu"], res["l0"] = fvu_l0(topk)
    else:
        res["fvu"], res["l0"] = fvu_l0(jumprelu)
        res["fvu_train_mode"], res["l0_train_mode"] = fvu_l0(batch_topk)
        res["threshold"] = float(thr[0])
    cos = (feats / feats.norm(dim=1, keepdim=True)) @ (W_dec / norms[:, None]).T
    res["mmcs"] = cos.max(dim=1).values.mean().item()
    f_all = (topk if arch == "topk" else jumprelu)(pre(held))
    res["dead_fraction_heldout"] = ((f_all != 0).sum(0) == 0).float().mean().item()
    return res


@torch.no_grad()
def saelens_inference_fvu(sae_dir: Path, held: torch.Tensor) -> float:
    """Cross-check: FVU through SAELens's own loaded inference SAE."""
    from sae_lens import SAE

    sae = SAE.load_from_disk(str(sae_dir), device="cpu")
    x_hat = sae(held)
    return (((held - x_hat) ** 2).sum() / ((held - held.mean(0)) ** 2).sum()).item()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", required=True, help="directory with train.npy, heldout.npy")
    p.add_argument("--features", help="true features .npy (default DIR/all_features.npy)")
    p.add_argument("--arch", choices=["topk", "batchtopk"], required=True)
    p.add_argument("--impl", choices=["saelens", "dictionary_learning"], default="saelens",
                   help="whose trainer (dictionary_learning: the `dictionary-learning` PyPI package)")
    p.add_argument("--d-sae", type=int, default=512)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--lr", type=float, default=1.1e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--decay", type=int, default=None, help="default steps/5")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="output SAE directory")
    g = p.add_argument_group("SAELens ablations (default: SAELens's own settings)")
    g.add_argument("--decoder-init-norm", type=float, help="SAELens default 0.1; <= 0: no rescaling (kaiming)")
    g.add_argument("--aux-coeff", type=float, help="AuxK coefficient (SAELens default 1.0)")
    g.add_argument("--no-rescale", action="store_true", help="rescale_acts_by_decoder_norm=False")
    g.add_argument("--no-clip", action="store_true", help="no gradient-norm clipping (SAELens clips at 1)")
    p.add_argument("--eval-only", help="evaluate this SAELens-format SAE directory instead of training")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    d = Path(args.dir)
    held = torch.from_numpy(np.load(d / "heldout.npy")).float()
    feats = torch.from_numpy(np.load(args.features or d / "all_features.npy")).float()
    if args.eval_only:
        sae_dir, impl = Path(args.eval_only), "libsae"
    else:
        train = torch.from_numpy(np.load(d / "train.npy")).float()
        train_fn = train_saelens if args.impl == "saelens" else train_dictionary_learning
        sae_dir, impl = train_fn(args.arch, train, args), args.impl
    res = {"impl": impl, "seed": args.seed, "steps": args.steps}
    if not args.eval_only and args.impl == "saelens":
        res["ablation"] = {k: v for k, v in (("decoder_init_norm", args.decoder_init_norm),
                           ("aux_coeff", args.aux_coeff), ("no_rescale", args.no_rescale),
                           ("no_clip", args.no_clip)) if v is not None and v is not False}
    res.update(evaluate(sae_dir, args.arch, args.k, held, feats, args.batch))
    res["fvu_saelens_forward"] = saelens_inference_fvu(sae_dir, held)
    info = sae_dir / "train_info.json"
    if info.exists():
        res.update(json.loads(info.read_text()))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
