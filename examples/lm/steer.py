#!/usr/bin/env python3
"""Steer SmolLM2's generation with one SAE feature and measure what it does.

    python examples/lm/steer.py --sae lm/sae-topk --latent 1234 --clamp 40 \
        --prompt "The weather today is"

At every generated step the residual stream after block --layer is edited at every
harvested position (all but the attention sinks, see harvest.py) by libsae's steering,
x -> x + (f_j' - f_j) W_dec[j] (the reconstruction error is kept):
  --scale S   f_j' = S f_j        --clamp V   f_j' = V        --add A   x -> x + A W_dec[j]
Greedy decoding, clean and steered side by side, and the measurements:
  act           the feature's mean activation at the generated positions (after the edit)
  p_promoted    the next-token probability mass on the feature's top --top promoted tokens
                (its logit effect: unembedding * final-norm weight, times W_dec[j]; for a
                middle layer these direct effects are often sub-word noise, hence also)
  p_watched     the probability mass on the first tokens of the --watch words
both along each run's own generation and, teacher-forced, on the clean continuation (the
same tokens, so the difference is the edit alone). Prints JSON too (--json).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lmlib  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sae", required=True)
    p.add_argument("--latent", type=int, required=True, help="the feature (latent index) to steer")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--scale", type=float)
    g.add_argument("--clamp", type=float)
    g.add_argument("--add", type=float)
    p.add_argument("--prompt", action="append", required=True, help="prompt text (repeat for several)")
    p.add_argument("--layer", type=int, default=15)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--top", type=int, default=10, help="promoted tokens whose probability is tracked")
    p.add_argument("--watch", default="", help="comma-separated words whose next-token probability is tracked too "
                   "(each word's first token; e.g. words from the feature's top contexts)")
    p.add_argument("--sink-factor", type=float, default=lmlib.SINK_FACTOR)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", help="write the measurements here")
    a = p.parse_args()
    if a.max_new_tokens <= 0 or a.top <= 0:
        lmlib.fail("--max-new-tokens and --top must be positive", 2)
    for v in (a.scale, a.clamp, a.add):
        if v is not None and not np.isfinite(v):
            lmlib.fail("the steering value must be finite", 2)

    import torch
    model, tok = lmlib.load_model(a.threads)
    lmlib.check_layer(model, a.layer)
    d = model.config.hidden_size
    sae = lmlib.load_sae(a.sae, d)
    if not 0 <= a.latent < sae.d_sae:
        lmlib.fail(f"--latent {a.latent} is outside [0, {sae.d_sae})", 2)
    mode, value = next((m, v) for m, v in (("scale", a.scale), ("clamp", a.clamp), ("add", a.add)) if v is not None)
    j = a.latent
    effect = (lmlib.unembedding(model) @ torch.tensor(np.asarray(sae.W_dec[j], dtype=np.float32))).numpy()
    promoted = np.argsort(-effect, kind="stable")[: a.top]
    promoted_t = torch.from_numpy(promoted)
    watch_words = [w for w in a.watch.split(",") if w.strip()]
    watch = sorted({tok(w, add_special_tokens=False)["input_ids"][0] for w in watch_words})
    watch_t = torch.tensor(watch, dtype=torch.long)

    def forward(ids, steer: bool):
        """Logits [T, V] and the feature's activation at every position [T] (after the edit)."""
        act = {}

        def hook(h):
            x = h[0]
            keep = lmlib.harvested_mask(h, a.sink_factor)[0]
            if steer and keep.any():
                x = x.clone()
                x[keep] = torch.from_numpy(sae.steer(x[keep].numpy(), latent=j, **{mode: value}))
            codes = sae.encode(x.numpy(), dense=True)
            act["f"] = np.where(keep.numpy(), codes[:, j], np.nan)
            return x[None] if steer else None

        with torch.no_grad(), lmlib.BlockOutput(model, a.layer, hook):
            logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0]
        return logits, act["f"]

    def generate(prompt_ids, steer: bool):
        ids = list(prompt_ids)
        acts, pp, pw = [], [], []
        for _ in range(a.max_new_tokens):
            logits, f = forward(ids, steer)
            probs = torch.softmax(logits[-1].float(), -1)
            pp.append(float(probs[promoted_t].sum()))
            pw.append(float(probs[watch_t].sum()) if watch else 0.0)
            acts.append(float(f[-1]) if np.isfinite(f[-1]) else 0.0)
            nxt = int(probs.argmax())
            ids.append(nxt)
            if nxt == tok.eos_token_id:
                break
        return ids[len(prompt_ids):], float(np.mean(acts)), float(np.mean(pp)), float(np.mean(pw))

    def teacher_forced(prompt_ids, cont, steer: bool):
        logits, f = forward(list(prompt_ids) + list(cont), steer)
        probs = torch.softmax(logits.float(), -1)[len(prompt_ids) - 1:-1]
        fa = f[len(prompt_ids) - 1:-1]
        pw = float(probs[:, watch_t].sum(-1).mean()) if watch else 0.0
        return float(np.nanmean(fa)), float(probs[:, promoted_t].sum(-1).mean()), pw

    t0 = time.time()
    out = {"sae": a.sae, "layer": a.layer, "latent": j, "mode": mode, "value": value,
           "promoted_tokens": [tok.decode([int(t)]) for t in promoted],
           "promoted_logit_effect": [float(effect[t]) for t in promoted],
           "watched_tokens": [tok.decode([t]) for t in watch], "prompts": []}
    print(f"feature {j}: {mode} {value}; promotes " + " ".join(repr(t) for t in out["promoted_tokens"]))
    if watch:
        print("watching " + " ".join(repr(t) for t in out["watched_tokens"]))
    for prompt in a.prompt:
        pids = tok(prompt, add_special_tokens=False)["input_ids"]
        if not pids:
            lmlib.fail("a --prompt is empty", 2)
        clean, act_c, pp_c, pw_c = generate(pids, False)
        steered, act_s, pp_s, pw_s = generate(pids, True)
        tf_c = teacher_forced(pids, clean, False)
        tf_s = teacher_forced(pids, clean, True)
        r = {"prompt": prompt, "clean": tok.decode(clean), "steered": tok.decode(steered),
             "act_clean": act_c, "act_steered": act_s, "p_promoted_clean": pp_c, "p_promoted_steered": pp_s,
             "p_watched_clean": pw_c, "p_watched_steered": pw_s,
             "teacher_forced": {"act_clean": tf_c[0], "act_steered": tf_s[0],
                                "p_promoted_clean": tf_c[1], "p_promoted_steered": tf_s[1],
                                "p_watched_clean": tf_c[2], "p_watched_steered": tf_s[2]}}
        out["prompts"].append(r)
        w = 48
        print(f"\nprompt: {prompt!r}")
        left = textwrap.wrap(r["clean"].replace("\n", " ⏎ "), w) or [""]
        right = textwrap.wrap(r["steered"].replace("\n", " ⏎ "), w) or [""]
        print(f"  {'clean':<{w}} | steered ({mode} {value})")
        for i in range(max(len(left), len(right))):
            print(f"  {left[i] if i < len(left) else '':<{w}} | {right[i] if i < len(right) else ''}")
        print(f"  {'act %.2f' % act_c:<{w}} | act {act_s:.2f}")
        print(f"  {'p(promoted) %.4f' % pp_c:<{w}} | p(promoted) {pp_s:.4f}")
        if watch:
            print(f"  {'p(watched) %.4f' % pw_c:<{w}} | p(watched) {pw_s:.4f}")
        print(f"  teacher-forced on the clean text: act {tf_c[0]:.2f} -> {tf_s[0]:.2f}, "
              f"p(promoted) {tf_c[1]:.4f} -> {tf_s[1]:.4f}"
              + (f", p(watched) {tf_c[2]:.4f} -> {tf_s[2]:.4f}" if watch else ""))
    out["seconds"] = round(time.time() - t0, 1)
    if a.json:
        with open(a.json + ".tmp", "w") as fh:
            json.dump(out, fh, indent=1)
        os.replace(a.json + ".tmp", a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
