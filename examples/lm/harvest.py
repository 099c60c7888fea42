#!/usr/bin/env python3
"""Harvest a language model's residual stream for `sae train`.

Runs SmolLM2-135M-Instruct over Debian text and saves, for every harvested token, the
residual stream after decoder block --layer (the block's output, "resid_post") as sharded
float32 .npy files [tokens, d_model], with a token table per shard (the text and place of
every token, for `sae report --tokens`), the model's unembedding for logit effects, and
lm.json describing it all.

    python examples/lm/harvest.py --out lm/train --tokens 2000000
    python examples/lm/harvest.py --out lm/heldout --split heldout --tokens 100000 --shard-tokens 0

OUT/
  acts/00000.npy ...     [n_i, d_model] float32 (or float16 with --dtype f16): `sae train --data OUT/acts`
  tokens/00000.tsv ...   token table of that shard: row ctx pos token_id doc text
  mlp_in/00000.npy, mlp_out/00000.npy   with --mlp: block --layer's MLP input and output
  mean.npy               [d_model] mean of the harvested activations (mean ablation)
  unembed.npy            [vocab, d_model] float16: lm_head * final-norm weight
  vocab.txt              one escaped token per line (vocab order)
  lm.json                what was harvested, how, and how fast

Which tokens: every window of --ctx tokens is cut from one document (no BOS). Position 0 of
each window is an attention sink (norm ~20,000 after block 15, median ~175) and is not
harvested; neither is any token whose norm exceeds --sink-factor times the batch's median.
Those tokens keep their line in the token table with row -1, so contexts print whole.

Files appear complete or not at all (written as *.tmp, renamed when done). Memory stays
bounded by one batch of windows, whatever --tokens is.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lmlib  # noqa: E402


class NpyShardWriter:
    """Appends [n, d] rows to OUT/name; the header is rewritten with the final row count on
    close (a fixed 128-byte header leaves room for any count), then *.tmp is renamed."""

    HEADER = 128

    def __init__(self, path: str, d: int, dtype: np.dtype):
        self.path, self.tmp, self.d, self.dtype, self.rows = path, path + ".tmp", d, np.dtype(dtype), 0
        self.fh = open(self.tmp, "wb")
        self.fh.write(self._header(0))

    def _header(self, rows: int) -> bytes:
        descr = self.dtype.str  # '<f4' / '<f2'
        h = "{'descr': '%s', 'fortran_order': False, 'shape': (%d, %d), }" % (descr, rows, self.d)
        h = h + " " * (self.HEADER - 10 - 1 - len(h)) + "\n"
        return b"\x93NUMPY\x01\x00" + len(h).to_bytes(2, "little") + h.encode("latin1")

    def write(self, a: np.ndarray) -> None:
        self.fh.write(np.ascontiguousarray(a, dtype=self.dtype).tobytes())
        self.rows += a.shape[0]

    def close(self) -> None:
        self.fh.seek(0)
        self.fh.write(self._header(self.rows))
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.fh.close()
        if os.path.exists(self.tmp):
            os.remove(self.tmp)


class Shard:
    """One shard: activations (+ MLP pair) and its token table."""

    def __init__(self, out: str, index: int, d: int, dtype, mlp: bool):
        name = f"{index:05d}"
        kinds = ["acts"] + (["mlp_in", "mlp_out"] if mlp else [])
        for sub in kinds + ["tokens"]:
            os.makedirs(os.path.join(out, sub), exist_ok=True)
        self.files = {k: NpyShardWriter(os.path.join(out, k, f"{name}.npy"), d, dtype) for k in kinds}
        self.table_path = os.path.join(out, "tokens", f"{name}.tsv")
        self.table = open(self.table_path + ".tmp", "w", encoding="utf-8", newline="\n")
        self.table.write("row\tctx\tpos\ttoken_id\tdoc\ttext\n")
        self.rows = 0
        self.ctx = 0

    def close(self) -> dict:
        for f in self.files.values():
            f.close()
        self.table.close()
        os.replace(self.table_path + ".tmp", self.table_path)
        rel = lambda path: os.path.join(os.path.basename(os.path.dirname(path)), os.path.basename(path))  # noqa: E731
        return {k: rel(f.path) for k, f in self.files.items()} | {
            "tokens": rel(self.table_path), "rows": self.rows, "windows": self.ctx}

    def abort(self) -> None:
        for f in self.files.values():
            f.abort()
        self.table.close()
        if os.path.exists(self.table_path + ".tmp"):
            os.remove(self.table_path + ".tmp")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__[__doc__.index("OUT/"):])
    p.add_argument("--out", required=True, help="output directory (created; must not hold a harvest already unless --force)")
    p.add_argument("--layer", type=int, default=15, help="decoder block whose output is harvested (default 15)")
    p.add_argument("--tokens", type=int, default=2_000_000, help="harvested tokens to collect (default 2,000,000)")
    p.add_argument("--corpus", default="bible,python-docs,fortunes",
                   help=f"comma-separated sources ({', '.join(lmlib.SOURCES)}) or text files, interleaved by window")
    p.add_argument("--split", choices=["train", "heldout", "all"], default="train",
                   help="documents to use: a fixed hash of each document's label holds out --heldout-percent of them")
    p.add_argument("--heldout-percent", type=float, default=5.0)
    p.add_argument("--ctx", type=int, default=256, help="tokens per window (default 256)")
    p.add_argument("--batch", type=int, default=8, help="windows per forward pass (default 8)")
    p.add_argument("--shard-tokens", type=int, default=500_000, help="rows per .npy shard; 0: one shard (default 500,000)")
    p.add_argument("--dtype", choices=["f32", "f16"], default="f32", help="activation file type (default f32)")
    p.add_argument("--sink-factor", type=float, default=lmlib.SINK_FACTOR,
                   help="tokens with a norm above this times the batch median are not harvested (default 8)")
    p.add_argument("--mlp", action="store_true", help="also save block --layer's MLP input and output (transcoder pairs)")
    p.add_argument("--no-unembed", action="store_true", help="skip unembed.npy / vocab.txt")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--force", action="store_true", help="overwrite a previous harvest in --out")
    a = p.parse_args()
    for name in ("tokens", "ctx", "batch"):
        if getattr(a, name) <= 0:
            lmlib.fail(f"--{name} must be positive, got {getattr(a, name)}", 2)
    if a.shard_tokens < 0 or a.sink_factor <= 1 or not 0 < a.heldout_percent < 100:
        lmlib.fail("--shard-tokens must be >= 0, --sink-factor > 1, --heldout-percent in (0, 100)", 2)
    corpus = lmlib.parse_corpus(a.corpus)
    previous = [f for sub, ext in (("acts", ".npy"), ("mlp_in", ".npy"), ("mlp_out", ".npy"), ("tokens", ".tsv"))
                for f in glob.glob(os.path.join(a.out, sub, "[0-9]" * 5 + ext))]
    if os.path.exists(os.path.join(a.out, "lm.json")):
        previous.append(os.path.join(a.out, "lm.json"))
    if previous and not a.force:
        lmlib.fail(f"{a.out} already holds a (possibly interrupted) harvest; use --force to replace it", 2)
    if os.path.exists(a.out) and not os.path.isdir(a.out):
        lmlib.fail(f"--out {a.out} exists and is not a directory", 2)
    os.makedirs(a.out, exist_ok=True)
    if not os.access(a.out, os.W_OK):
        lmlib.fail(f"--out {a.out} is not writable", 2)
    for f in previous:  # --force: no shard of the old harvest may mix with the new one
        os.remove(f)

    import torch
    model, tok = lmlib.load_model(a.threads)
    lmlib.check_layer(model, a.layer)
    d = model.config.hidden_size
    dtype = np.float32 if a.dtype == "f32" else np.float16
    shard_rows = a.shard_tokens if a.shard_tokens > 0 else a.tokens

    captured = {}
    block = model.model.layers[a.layer]
    mlp_hooks = []
    if a.mlp:
        mlp_hooks.append(block.mlp.register_forward_hook(
            lambda m, i, o: captured.update(mlp_in=i[0].detach(), mlp_out=o.detach())))

    t0 = time.time()
    shards, shard, index = [], None, 0
    total = sinks = windows_done = forward_tokens = 0
    mean_sum = np.zeros(d, dtype=np.float64)
    progress = lmlib.Progress(a.tokens)
    try:
        for group in lmlib.batches(lmlib.windows(tok, corpus, a.ctx, a.split, a.heldout_percent), a.batch):
            ids = torch.tensor([w.ids for w in group])
            with torch.no_grad(), lmlib.BlockOutput(model, a.layer, lambda h: captured.update(resid=h.detach()), stop=True):
                model.model(input_ids=ids, use_cache=False)
            acts = captured["resid"].float()
            keep = lmlib.harvested_mask(acts, a.sink_factor)
            forward_tokens += ids.numel()
            sinks += int((~keep).sum())
            for b, w in enumerate(group):
                if total >= a.tokens:
                    break
                if shard is None:
                    shard = Shard(a.out, index, d, dtype, a.mlp)
                kb = keep[b].clone()
                room = min(shard_rows - shard.rows, a.tokens - total)
                if int(kb.sum()) > room:  # cut the window where the shard or the budget ends
                    idx = torch.nonzero(kb).flatten()
                    kb[idx[room]:] = False
                    n_pos = int(idx[room])
                else:
                    n_pos = len(w.ids)
                rows = acts[b][kb].numpy()
                shard.files["acts"].write(rows)
                if a.mlp:
                    shard.files["mlp_in"].write(captured["mlp_in"][b][kb].float().numpy())
                    shard.files["mlp_out"].write(captured["mlp_out"][b][kb].float().numpy())
                mean_sum += rows.astype(np.float64).sum(0)
                texts = lmlib.token_texts(tok, w.ids[:n_pos])
                doc = lmlib.escape(w.doc)
                lines = []
                r = shard.rows
                for pos in range(n_pos):
                    if kb[pos]:
                        row, r = r, r + 1
                    else:
                        row = -1
                    lines.append(f"{row}\t{shard.ctx}\t{pos}\t{w.ids[pos]}\t{doc}\t{lmlib.escape(texts[pos])}\n")
                shard.table.write("".join(lines))
                shard.rows = r
                shard.ctx += 1
                total += rows.shape[0]
                windows_done += 1
                if shard.rows >= shard_rows:
                    shards.append(shard.close())
                    shard, index = None, index + 1
            progress(total)
            if total >= a.tokens:
                break
        if shard is not None and shard.rows > 0:
            shards.append(shard.close())
            shard = None
    except KeyboardInterrupt:
        if shard is not None:
            shard.abort()
        print(f"\nharvest: interrupted; {len(shards)} complete shard(s) kept in {a.out} (no lm.json)", file=sys.stderr)
        return 130
    finally:
        for h in mlp_hooks:
            h.remove()
    progress(total, final=True)
    if total == 0:
        lmlib.fail("the corpus gave no tokens to harvest")
    if total < a.tokens:
        print(f"harvest: the corpus ran out after {total:,} of {a.tokens:,} tokens", file=sys.stderr)
    seconds = time.time() - t0

    def save_npy(name: str, arr: np.ndarray) -> str:
        path = os.path.join(a.out, name)
        with open(path + ".tmp", "wb") as fh:
            np.save(fh, arr)
        os.replace(path + ".tmp", path)
        return name

    meta = {
        "model": lmlib.GGUF_FILE, "layer": a.layer, "hook": f"model.layers.{a.layer} output (resid_post)",
        "d_model": d, "vocab": int(model.config.vocab_size), "ctx": a.ctx, "corpus": corpus, "split": a.split,
        "heldout_percent": a.heldout_percent, "sink_factor": a.sink_factor, "dtype": a.dtype,
        "tokens": total, "windows": windows_done, "forward_tokens": forward_tokens, "not_harvested": sinks,
        "shards": shards, "mean": save_npy("mean.npy", (mean_sum / total).astype(np.float32)),
        "seconds": round(seconds, 1), "tokens_per_second": round(forward_tokens / seconds, 1),
        "threads": torch.get_num_threads(),
    }
    if not a.no_unembed:
        meta["unembed"] = save_npy("unembed.npy", lmlib.unembedding(model).numpy().astype(np.float16))
        vocab = lmlib.token_texts(tok, range(model.config.vocab_size))
        with open(os.path.join(a.out, "vocab.txt.tmp"), "w", encoding="utf-8", newline="\n") as fh:
            fh.write("".join(lmlib.escape(v) + "\n" for v in vocab))
        os.replace(os.path.join(a.out, "vocab.txt.tmp"), os.path.join(a.out, "vocab.txt"))
        meta["vocab_file"] = "vocab.txt"
    with open(os.path.join(a.out, "lm.json.tmp"), "w") as fh:
        json.dump(meta, fh, indent=1)
    os.replace(os.path.join(a.out, "lm.json.tmp"), os.path.join(a.out, "lm.json"))
    print(json.dumps({k: meta[k] for k in ("tokens", "windows", "not_harvested", "seconds", "tokens_per_second")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
