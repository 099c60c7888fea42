#!/usr/bin/env python3
"""End-to-end test of `sae report`: the HTML is one self-contained file with the expected
sections and element counts (parsed with Python's html.parser), and the top examples it
lists are the highest activations numpy computes for those features.

Environment: SAE_BIN (the sae executable), SAE_TMP (scratch directory). Exit 77 without numpy.
"""
import json
import os
import re
import struct
import sys
import tempfile
from html.parser import HTMLParser
from saetest import run

try:
    import numpy as np
except ImportError:  # pragma: no cover
    print("numpy not installed: skipping")
    sys.exit(77)

TMP = tempfile.mkdtemp(prefix="sae_report_", dir=os.environ.get("SAE_TMP") or None)
failures = []


def check(name, cond, detail=""):
    print(("ok   " if cond else "FAIL ") + name + ("" if cond else f" {detail}"))
    if not cond:
        failures.append(name)


def path(name):
    return os.path.join(TMP, name)


class Counter(HTMLParser):
    """Counts elements by (tag, class) and collects feature ids and example captions."""

    def __init__(self):
        super().__init__()
        self.counts = {}
        self.feature_ids = []
        self.tags = 0
        self.external = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags += 1
        for c in (a.get("class") or "").split() or [""]:
            self.counts[(tag, c)] = self.counts.get((tag, c), 0) + 1
        if tag == "div" and "feature" in (a.get("class") or "").split():
            self.feature_ids.append(int(a["id"].split("-")[1]))
        for key in ("src", "href"):
            v = a.get(key)
            if v and not v.startswith("data:") and not v.startswith("#"):
                self.external.append(v)
        if tag in ("script", "link", "iframe"):
            self.external.append(tag)


def main():
    run("synth", "--out", path("x.npy"), "--d-in", 64, "--features", 128, "--samples", 4000, "--seed", 5)
    run("train", "--data", path("x.npy"), "--arch", "topk", "--d-sae", 128, "--k", 4, "--steps", 200, "--batch", 256,
        "--log-every", 20, "--out", path("sae"))
    X = np.load(path("x.npy"))
    with open(path("labels.txt"), "w") as f:
        for i in range(len(X)):
            f.write(f"class{i % 3}\n")

    p = run("report", "--sae", path("sae"), "--data", path("x.npy"), "--images", "8x8", "--labels", path("labels.txt"),
            "--features", 7, "--examples", 5, "--intervals", 2, "--out", path("report.html"))
    r = json.loads(p.stdout.strip().splitlines()[-1])
    html = open(path("report.html"), encoding="utf-8").read()
    check("JSON result", r["features"] == 7 and r["tokens"] == 4000 and r["train_log"] is True and
          r["bytes"] == len(html.encode()), r)
    c = Counter()
    c.feed(html)
    n = c.counts.get
    check("self-contained: no scripts, no external resources", not c.external and "http" not in html, c.external[:5])
    check("7 feature blocks", n(("div", "feature")) == 7, n(("div", "feature")))
    check("5 top examples per feature", n(("figure", "example")) == 35, n(("figure", "example")))
    check("2 intervals x 4 samples per feature", n(("figure", "interval-example")) == 7 * 2 * 4,
          n(("figure", "interval-example")))
    check("decoder and decoded images", n(("img", "decoder")) == 7 and n(("img", "decoded")) == 7)
    log_fields = [k for k in json.loads(open(path("sae/train_log.jsonl")).readline())
                  if k not in ("step", "tokens", "seconds", "tokens_per_s")]
    check("one training curve per logged field", n(("svg", "train-curve")) == len(log_fields), (n(("svg", "train-curve")), log_fields))
    check("density histogram", n(("svg", "density-hist")) == 1)
    check("labels shown", "class0" in html and "class2" in html)

    # The listed top examples are numpy's: recompute codes from the safetensors bytes.
    cfg = json.load(open(path("sae/cfg.json")))
    raw = open(path("sae/sae_weights.safetensors"), "rb").read()
    (hn,) = struct.unpack("<Q", raw[:8])
    hdr = json.loads(raw[8 : 8 + hn])
    t = {k: np.frombuffer(raw[8 + hn + v["data_offsets"][0] : 8 + hn + v["data_offsets"][1]], "<f4").reshape(v["shape"])
         .astype(np.float64) for k, v in hdr.items() if k != "__metadata__"}
    z = (X - t["b_dec"]) @ t["W_enc"] + t["b_enc"]
    f = np.maximum(z, 0)
    keep = np.argsort(-f, axis=1, kind="stable")[:, : cfg["k"]]
    F = np.zeros_like(f)
    np.put_along_axis(F, keep, np.take_along_axis(f, keep, 1), 1)
    freq = (F != 0).mean(0)
    mass = F.sum(0)
    eligible = [j for j in range(F.shape[1]) if 0 < freq[j] <= 0.1]
    want_ids = sorted(eligible, key=lambda j: (-mass[j], j))[:7]
    check("features are the top 7 non-dense latents by total activation", c.feature_ids == want_ids,
          (c.feature_ids, want_ids))
    for j in c.feature_ids[:3]:
        block = html[html.index(f'id="feature-{j}"'):]
        block = block[: block.index('class="intervals"')]
        shown = [int(m) for m in re.findall(r'<figcaption>#(\d+) ', block)]
        order = sorted(range(len(X)), key=lambda i: (-F[i, j], i))[:5]
        check(f"feature {j}: top examples as numpy ranks them", shown == order, (shown, order))

    # Non-image data: example tables, no images; bad --images is one error line.
    run("report", "--sae", path("sae"), "--data", path("x.npy"), "--features", 3, "--out", path("plain.html"))
    c = Counter()
    c.feed(open(path("plain.html")).read())
    check("plain report: tables, no images", c.counts.get(("img", ""), 0) == 0 and
          c.counts.get(("tr", "example"), 0) > 0 and c.counts.get(("div", "feature")) == 3)
    p = run("report", "--sae", path("sae"), "--data", path("x.npy"), "--images", "9x9", "--out", path("bad.html"), ok=False)
    check("--images must match d_in", p.returncode == 1 and "81 pixels but d_in=64" in p.stderr and
          not os.path.exists(path("bad.html")), p.stderr)

    if failures:
        print(f"{len(failures)} failures")
        sys.exit(1)
    print("all passed")


if __name__ == "__main__":
    main()
