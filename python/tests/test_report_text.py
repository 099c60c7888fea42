"""libsae.report with a token table (text view) and an unembedding (logit effect), checked
against numpy: every shaded token's activation is numpy's own sae.encode of that row, every
logit-effect list is an argsort of U @ W_dec[j], the contexts are the table's windows, bad
files raise FormatError naming them, and the CLI writes the same page.
"""
import html.parser
import os

import numpy as np
import pytest

import libsae
from conftest import last_json, run_sae

CTX, LEN, D, D_SAE, V = 9, 14, 16, 40, 50  # windows, tokens per window (pos 0 not harvested), d_in, latents, vocab
BEFORE, AFTER, EXAMPLES, INTERVALS, FEATURES = 3, 2, 4, 2, 5


def esc(s: bytes) -> bytes:
    return s.replace(b"\\", b"\\\\").replace(b"\t", b"\\t").replace(b"\n", b"\\n").replace(b"\r", b"\\r")


def token_text(c, p):
    """Raw bytes of token (c, p): words, markup, whitespace, a newline, invalid UTF-8."""
    special = {3: b" <b>&amp;", 5: b"\n", 7: b"\t", 8: b"caf\xc3\xa9", 9: b"\xe2\x80", 10: b"   ", 11: b"a\\b"}
    return special.get(p, f" w{c}_{p}".encode())


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    d = tmp_path_factory.mktemp("lm")
    rng = np.random.default_rng(7)
    n = CTX * (LEN - 1)
    X = rng.standard_normal((n, D)).astype(np.float32)
    X[::5] += 3 * rng.standard_normal(D).astype(np.float32)  # some structure to learn
    np.save(d / "X.npy", X)
    lines, rows, where = [b"row\tctx\tpos\ttoken_id\tdoc\ttext"], 0, {}
    for c in range(CTX):
        for p in range(LEN):
            r = -1 if p == 0 else rows
            if r >= 0:
                where[r] = (c, p)
                rows += 1
            doc = f"Doc {c}\t<{c}>".encode()
            lines.append(b"\t".join([str(r).encode(), str(c).encode(), str(p).encode(), str((7 * c + p) % V).encode(),
                                     esc(doc), esc(token_text(c, p))]))
    (d / "tokens.tsv").write_bytes(b"\n".join(lines) + b"\n")
    U = rng.standard_normal((V, D)).astype(np.float32)
    np.save(d / "U.npy", U)
    vocab = [f"tok{v}".encode() for v in range(V)]
    vocab[3], vocab[4] = b"\n\t", b"x\\y"
    (d / "vocab.txt").write_bytes(b"\n".join(esc(v) for v in vocab) + b"\n")
    sae = libsae.train(X, arch="topk", d_sae=D_SAE, k=4, steps=80, batch=64, seed=2, threads=2, verbose=False,
                       out=d / "sae")
    return {"dir": d, "X": X, "U": U, "sae": sae, "where": where, "rows": rows,
            "vocab": [v.decode("utf-8", "replace") for v in vocab]}


class Page(html.parser.HTMLParser):
    """Per feature block: contexts [(cls, data-row, data-act, [tokens])] and logit tables."""

    def __init__(self):
        super().__init__()
        self.features, self.feature, self.context, self.stack = {}, None, None, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        cls = (a.get("class") or "").split()
        if tag == "div" and "feature" in cls:
            self.feature = int(a["id"].split("-")[1])
            self.features[self.feature] = {"contexts": [], "logit": None}
        elif tag == "div" and "context" in cls:
            self.context = {"cls": cls[0], "row": int(a["data-row"]), "act": float(a["data-act"]), "tokens": []}
            self.features[self.feature]["contexts"].append(self.context)
        elif tag == "span" and "tok" in cls:
            self.context["tokens"].append({"row": int(a.get("data-row", -1)), "act": a.get("data-act"),
                                           "ex": "ex" in cls, "nh": "nh" in cls, "title": a.get("title", ""),
                                           "style": a.get("style", "")})
        elif tag == "table" and "logit-effect" in cls:
            self.features[self.feature]["logit"] = {"up": [], "down": []}
        elif tag == "td" and "lt" in cls:
            side = "up" if "up" in cls else "down"
            self.features[self.feature]["logit"][side].append((int(a["data-id"]), float(a["data-value"])))


def parse(path):
    p = Page()
    p.feed(open(path, encoding="utf-8").read())
    return p.features


def write_report(lm, out, **kw):
    d = lm["dir"]
    args = dict(tokens=d / "tokens.tsv", unembed=d / "U.npy", vocab=d / "vocab.txt", features=FEATURES,
                examples=EXAMPLES, intervals=INTERVALS, context_before=BEFORE, context_after=AFTER)
    args.update(kw)
    return libsae.report(lm["sae"], d / "X.npy", out, **args)


def test_text_view_activations_are_numpy_encodings(lm, tmp_path):
    r = write_report(lm, tmp_path / "r.html")
    assert r["text"] is True and r["features"] == FEATURES and r["tokens"] == lm["rows"]
    F = lm["sae"].encode(lm["X"]).toarray()  # numpy's own encoding of every row
    feats = parse(tmp_path / "r.html")
    assert len(feats) == FEATURES
    n_contexts, n_tokens = 0, 0
    for j, f in feats.items():
        mx = F[:, j].max()
        for c in f["contexts"]:
            n_contexts += 1
            ctx, pos = lm["where"][c["row"]]
            assert c["act"] == pytest.approx(F[c["row"], j], rel=1e-5, abs=1e-6)
            # the window: pos - BEFORE .. pos + AFTER within the ctx, pos 0 (row -1) greyed
            first, last = max(0, pos - BEFORE), min(LEN - 1, pos + AFTER)
            assert len(c["tokens"]) == last - first + 1
            for p, t in zip(range(first, last + 1), c["tokens"]):
                if p == 0:
                    assert t["nh"] and t["act"] is None
                    continue
                row = c["row"] + (p - pos)
                assert lm["where"][row] == (ctx, p) and t["row"] == row
                assert t["ex"] == (p == pos)
                v = float(t["act"])
                assert v == pytest.approx(F[row, j], rel=1e-5, abs=1e-6), (j, row)
                alpha = min(max(v / mx, 0), 1)  # the shading: act / feature max
                if t["style"]:
                    shown = float(t["style"].split(",")[-1].rstrip(")"))
                    assert t["style"].startswith("background:rgba(234,88,12,") and shown == pytest.approx(alpha, rel=1e-2)
                else:
                    assert alpha == 0
                n_tokens += 1
        assert sum(c["cls"] == "example" for c in f["contexts"]) == min(EXAMPLES, int((F[:, j] > 0).sum()))
    assert n_contexts == r["contexts"] and n_tokens > 3 * n_contexts


def test_logit_effect_is_numpy_argsort(lm, tmp_path):
    r = write_report(lm, tmp_path / "r.html")
    feats = parse(tmp_path / "r.html")
    W_dec = np.asarray(lm["sae"].W_dec, dtype=np.float64)  # [d_sae, d_in]
    assert r["logit_features"] == FEATURES == len(r["logit_effects"])
    for j, f in feats.items():
        s = lm["U"].astype(np.float64) @ W_dec[j]
        up, down = np.argsort(-s, kind="stable")[:10], np.argsort(s, kind="stable")[:10]
        assert [i for i, _ in f["logit"]["up"]] == list(up)
        assert [i for i, _ in f["logit"]["down"]] == list(down)
        np.testing.assert_allclose([v for _, v in f["logit"]["up"]], s[up], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose([v for _, v in f["logit"]["down"]], s[down], rtol=1e-5, atol=1e-6)
        e = r["logit_effects"][str(j)]
        assert [t[0] for t in e["promoted"]] == list(up) and [t[0] for t in e["suppressed"]] == list(down)
        assert [t[1] for t in e["promoted"]] == [lm["vocab"][i] for i in up]


def test_page_escapes_and_shows_whitespace(lm, tmp_path):
    write_report(lm, tmp_path / "r.html", context_before=LEN, context_after=LEN)
    page = open(tmp_path / "r.html", encoding="utf-8").read()
    assert "<b>&amp;" not in page and "&lt;b&gt;&amp;amp;" in page   # markup in tokens is text
    assert "&#x23CE;" in page and "&rarr;" in page                    # newline, tab
    assert "\ufffd" in page and "caf\u00e9" in page                   # invalid UTF-8 repaired, valid kept
    assert "&middot;&middot;&middot;" in page                        # whitespace-only token
    assert "&lt;0&gt;" in page                                        # the doc label, escaped


def test_array_data_and_cli_give_the_same_page(lm, tmp_path):
    d = lm["dir"]
    r1 = write_report(lm, tmp_path / "a.html")
    r2 = write_report(lm, tmp_path / "b.html", feature_ids=None)
    assert open(tmp_path / "a.html", "rb").read() == open(tmp_path / "b.html", "rb").read()
    r3 = libsae.report(d / "sae", lm["X"], tmp_path / "c.html", tokens=d / "tokens.tsv", features=FEATURES,
                       examples=EXAMPLES, intervals=INTERVALS, context_before=BEFORE, context_after=AFTER)
    assert r3["contexts"] == r1["contexts"] and r3["logit_effects"] == {}
    p = run_sae("report", "--sae", d / "sae", "--data", d / "X.npy", "--out", tmp_path / "cli.html",
                "--tokens", d / "tokens.tsv", "--unembed", d / "U.npy", "--vocab", d / "vocab.txt",
                "--features", FEATURES, "--examples", EXAMPLES, "--intervals", INTERVALS,
                "--context-before", BEFORE, "--context-after", AFTER)
    cli = last_json(p)
    r4 = libsae.report(d / "sae", d / "X.npy", tmp_path / "py.html", tokens=d / "tokens.tsv", unembed=d / "U.npy",
                       vocab=d / "vocab.txt", features=FEATURES, examples=EXAMPLES, intervals=INTERVALS,
                       context_before=BEFORE, context_after=AFTER)
    for key in ("tokens", "features", "dead", "dense", "l0", "fvu", "text", "contexts", "logit_effects",
                "logit_features", "bytes", "train_log"):
        assert cli[key] == r4[key], key
    assert open(tmp_path / "cli.html", "rb").read() == open(tmp_path / "py.html", "rb").read()
    assert r2["features"] == r1["features"]


def test_limit_and_feature_ids(lm, tmp_path):
    r = write_report(lm, tmp_path / "r.html", limit=40, feature_ids=[3, 1, 3])
    assert r["tokens"] == 40 and r["features"] == 3
    assert r["logit_features"] == 2 and set(r["logit_effects"]) == {"1", "3"}
    page = open(tmp_path / "r.html", encoding="utf-8").read()
    assert page.count('<div class="feature" id="feature-3"') == 2 and page.count('class="logit-effect"') == 3
    feats = parse(tmp_path / "r.html")
    assert set(feats) == {1, 3}


def test_bad_inputs_raise_naming_the_file(lm, tmp_path):
    d = lm["dir"]
    lines = open(d / "tokens.tsv", "rb").read().split(b"\n")

    def bad_table(name, content):
        p = tmp_path / name
        p.write_bytes(content)
        return p

    cases = [
        (bad_table("short.tsv", b"\n".join(lines[:-2]) + b"\n"), f"has {lm['rows'] - 1} harvested rows"),
        (bad_table("header.tsv", b"row\tctx\tpos\ttoken\tdoc\ttext\n" + b"\n".join(lines[1:])), "line 1"),
        (bad_table("escape.tsv", b"\n".join(lines[:3] + [lines[3].replace(b"\t w0_2", b"\t \\qw0_2")] + lines[4:])),
         "line 4: bad escape"),
        (bad_table("cols.tsv", b"\n".join(lines[:5] + [lines[5] + b"\textra"] + lines[6:])), "line 6: expected 6"),
        (bad_table("int.tsv", b"\n".join(lines[:2] + [lines[2].replace(b"\t1\t", b"\tone\t", 1)] + lines[3:])),
         "line 3: pos is not an integer"),
    ]
    for path, fragment in cases:
        with pytest.raises(libsae.FormatError) as e:
            write_report(lm, tmp_path / "x.html", tokens=path)
        assert str(path) in str(e.value) and fragment in str(e.value), str(e.value)
    with pytest.raises(libsae.FormatError) as e:  # the count message names both files and both numbers
        write_report(lm, tmp_path / "x.html", tokens=tmp_path / "short.tsv")
    assert str(d / "X.npy") in str(e.value) and f"has {lm['rows']} rows" in str(e.value)
    v = tmp_path / "vocab.txt"
    v.write_text("a\nb\n")
    with pytest.raises(libsae.FormatError) as e:
        write_report(lm, tmp_path / "x.html", vocab=v)
    assert str(v) in str(e.value) and str(d / "U.npy") in str(e.value) and "2 entries" in str(e.value)
    np.save(tmp_path / "U_bad.npy", np.zeros((V, D + 1), np.float32))
    with pytest.raises(libsae.FormatError, match="U_bad.npy"):
        write_report(lm, tmp_path / "x.html", unembed=tmp_path / "U_bad.npy")
    with pytest.raises(ValueError, match="--unembed and --vocab"):
        write_report(lm, tmp_path / "x.html", vocab=None)
    with pytest.raises(ValueError):
        write_report(lm, tmp_path / "x.html", context_before=-1)
    assert not os.path.exists(tmp_path / "x.html")
