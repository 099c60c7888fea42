#!/usr/bin/env python3
"""How much of the model's behaviour an SAE keeps: splice the SAE's reconstruction into
SmolLM2's residual stream after block --layer and measure next-token cross-entropy on
held-out text.

    python examples/lm/eval_ce.py --sae lm/sae-topk --layer 15 --mean lm/train/mean.npy --out ce.json

For each batch of held-out windows (the documents harvest.py --split heldout uses):
  clean     the model as it is                                  CE_clean
  sae       h -> sae.reconstruct(h) at every harvested position   CE_sae, KL(clean || sae)
  zero      h -> 0 at the same positions                        CE_zero
  mean      h -> mean activation (--mean, e.g. the harvest's mean.npy; default: the
            mean over the evaluated tokens)                     CE_mean
CE loss recovered = (CE_abl - CE_sae) / (CE_abl - CE_clean) for abl = zero and mean
(1: the SAE loses nothing; 0: as bad as ablating the layer). Positions not harvested
(attention sinks, see harvest.py) keep their clean value in every run. CE is the mean over
every predicted token (positions 0..T-2 predicting 1..T-1); KL the mean over the same.

The model runs once up to the layer; the spliced runs re-run only the blocks after it (and
the script checks on every batch that re-running them on the clean stream gives the clean
logits). Prints a JSON object (also written to --out).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lmlib  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sae", required=True, help="SAE directory or file (any format libsae reads)")
    p.add_argument("--layer", type=int, default=15, help="block whose output the SAE models (default 15)")
    p.add_argument("--windows", type=int, default=64, help="held-out windows evaluated (default 64)")
    p.add_argument("--ctx", type=int, default=256, help="tokens per window (default 256)")
    p.add_argument("--batch", type=int, default=8, help="windows per forward pass (default 8)")
    p.add_argument("--corpus", default="bible,python-docs,fortunes", help="as in harvest.py")
    p.add_argument("--split", choices=["train", "heldout", "all"], default="heldout")
    p.add_argument("--heldout-percent", type=float, default=5.0)
    p.add_argument("--sink-factor", type=float, default=lmlib.SINK_FACTOR)
    p.add_argument("--mean", help="[d_model] .npy for the mean ablation (default: mean of the evaluated tokens)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", help="also write the JSON here")
    a = p.parse_args()
    if a.windows <= 0 or a.ctx < 2 or a.batch <= 0:
        lmlib.fail("--windows and --batch must be positive, --ctx at least 2", 2)
    corpus = lmlib.parse_corpus(a.corpus)

    import torch
    model, tok = lmlib.load_model(a.threads)
    lmlib.check_layer(model, a.layer)
    d = model.config.hidden_size
    sae = lmlib.load_sae(a.sae, d)
    mean = None
    if a.mean:
        try:
            mean = np.load(a.mean).astype(np.float32).reshape(-1)
        except (OSError, ValueError) as e:
            lmlib.fail(f"--mean {a.mean}: {e}")
        if mean.shape != (d,) or not np.isfinite(mean).all():
            lmlib.fail(f"--mean {a.mean} must hold {d} finite values, has shape {mean.shape}")

    # Windows first (the mean ablation may need them all); evaluation keeps the full ones.
    wins = []
    for w in lmlib.windows(tok, corpus, a.ctx, a.split, a.heldout_percent, min_tokens=a.ctx):
        wins.append(w)
        if len(wins) == a.windows:
            break
    if not wins:
        lmlib.fail("the corpus split gave no full window to evaluate")

    sums = {"clean": 0.0, "sae": 0.0, "zero": 0.0, "mean": 0.0, "kl": 0.0}
    n_pred = 0
    spliced = 0
    err_sq = tot_sq = 0.0
    l0_sum = 0.0
    max_tail_diff = 0.0
    mean_acc = np.zeros(d, dtype=np.float64)
    progress = lmlib.Progress(len(wins) * a.ctx)
    t0 = time.time()

    def ce(logits, ids):
        lp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        return -lp.gather(-1, ids[:, 1:, None]).squeeze(-1), lp

    def run_tail(h):
        with lmlib.Tail(model, a.layer), torch.no_grad():
            return model(inputs_embeds=h, use_cache=False).logits

    def evaluate(ids, h, keep, logits_clean, mu):
        nonlocal n_pred, spliced, err_sq, tot_sq, l0_sum, max_tail_diff
        ce_clean, lp_clean = ce(logits_clean, ids)
        # The self-check: the tail on the clean stream is the clean model.
        max_tail_diff = max(max_tail_diff, float((run_tail(h) - logits_clean).abs().max()))
        x = h[keep].numpy()
        r = sae.reconstruct(x)
        codes = sae.encode(x)
        l0_sum += codes.nnz
        err_sq += float(((r - x.astype(np.float64)) ** 2).sum())
        tot_sq += float(((x - x.mean(0)) ** 2).sum())
        variants = {}
        for name, repl in (("sae", torch.from_numpy(r)), ("zero", torch.zeros(1, d)),
                           ("mean", torch.from_numpy(mu)[None, :])):
            h2 = h.clone()
            h2[keep] = repl.expand(int(keep.sum()), d)
            variants[name] = run_tail(h2)
        ce_sae, lp_sae = ce(variants["sae"], ids)
        sums["clean"] += float(ce_clean.sum())
        sums["sae"] += float(ce_sae.sum())
        sums["zero"] += float(ce(variants["zero"], ids)[0].sum())
        sums["mean"] += float(ce(variants["mean"], ids)[0].sum())
        sums["kl"] += float((lp_clean.exp() * (lp_clean - lp_sae)).sum())
        n_pred += ce_clean.numel()
        spliced += int(keep.sum())

    batches = [torch.tensor([w.ids for w in wins[b0:b0 + a.batch]]) for b0 in range(0, len(wins), a.batch)]
    if mean is None:  # a first pass up to the layer only: the mean of the evaluated tokens
        n_kept = 0
        for ids in batches:
            cap = {}
            with torch.no_grad(), lmlib.BlockOutput(model, a.layer, lambda hh: cap.update(h=hh.detach()), stop=True):
                model.model(input_ids=ids, use_cache=False)
            keep = lmlib.harvested_mask(cap["h"], a.sink_factor)
            mean_acc += cap["h"][keep].double().sum(0).numpy()
            n_kept += int(keep.sum())
        mean = (mean_acc / n_kept).astype(np.float32)
    done = 0
    for ids in batches:
        cap = {}
        with torch.no_grad(), lmlib.BlockOutput(model, a.layer, lambda hh: cap.update(h=hh.detach().clone())):
            logits = model(input_ids=ids, use_cache=False).logits
        h = cap["h"]
        evaluate(ids, h, lmlib.harvested_mask(h, a.sink_factor), logits, mean)
        done += ids.numel()
        progress(done)
    progress(len(wins) * a.ctx, final=True)
    if max_tail_diff > 1e-3:
        lmlib.fail(f"re-running the blocks after {a.layer} on the clean stream changed the logits by "
                   f"{max_tail_diff:.3g}: this transformers version's decoder is not supported")

    c = {k: v / n_pred for k, v in sums.items() if k != "kl"}

    def recovered(abl: str) -> float:
        den = c[abl] - c["clean"]
        return (c[abl] - c["sae"]) / den if den > 0 else float("nan")

    res = {
        "sae": a.sae, "layer": a.layer, "windows": len(wins), "ctx": a.ctx, "predicted_tokens": n_pred,
        "spliced_tokens": spliced, "ce_clean": c["clean"], "ce_sae": c["sae"], "ce_zero_ablation": c["zero"],
        "ce_mean_ablation": c["mean"], "ce_increase": c["sae"] - c["clean"],
        "ce_loss_recovered": recovered("zero"), "ce_loss_recovered_mean_ablation": recovered("mean"),
        "kl_div": sums["kl"] / n_pred, "fvu": err_sq / tot_sq, "l0": l0_sum / spliced,
        "mean_ablation_from": a.mean or "evaluated tokens (a first pass up to the layer)", "max_tail_logit_diff": max_tail_diff,
        "seconds": round(time.time() - t0, 1),
    }
    for k, v in res.items():
        if isinstance(v, float) and not math.isfinite(v) and k != "ce_loss_recovered_mean_ablation":
            lmlib.fail(f"{k} is {v}: refusing to report it")
    text = json.dumps(res, indent=1)
    if a.out:
        with open(a.out + ".tmp", "w") as fh:
            fh.write(text + "\n")
        os.replace(a.out + ".tmp", a.out)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
