#!/usr/bin/env python3
"""Renders an `sae report` page in headless Chromium: the page loads, every image decodes,
the DOM has the expected element counts, and a full-page screenshot is a real picture. A second
report, of the same data as language-model tokens (--tokens, --unembed, --vocab), is rendered
too: its text contexts, shaded token spans and logit-effect tables are counted.

Skipped (exit 77) when no Chromium/Chrome is installed; the default setup does not install
one (`apt-get install chromium` to run it). The screenshot stays in $SAE_TMP for a look.

Environment: SAE_BIN (the sae executable), SAE_TMP (scratch directory), optionally
SAE_CHROMIUM (the browser to use).
"""
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib

SAE = os.environ.get("SAE_BIN", "sae")
BROWSER = os.environ.get("SAE_CHROMIUM") or next(
    (b for b in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable") if shutil.which(b)), None)
if not BROWSER:
    print("no chromium / google-chrome found: skipping")
    sys.exit(77)
TMP = tempfile.mkdtemp(prefix="sae_report_browser_", dir=os.environ.get("SAE_TMP") or None)
failures = []

FEATURES, EXAMPLES, INTERVALS, PER_INTERVAL = 6, 5, 2, 4

# Appended to a copy of the report: after the load event, record what the browser built.
PROBE = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const b = document.body;
  b.setAttribute('data-probe-images', imgs.length);
  b.setAttribute('data-probe-decoded', imgs.filter(i => i.complete && i.naturalWidth > 0).length);
  b.setAttribute('data-probe-features', document.querySelectorAll('div.feature').length);
  b.setAttribute('data-probe-examples', document.querySelectorAll('figure.example').length);
  b.setAttribute('data-probe-intervals', document.querySelectorAll('figure.interval-example').length);
  b.setAttribute('data-probe-svgs', document.querySelectorAll('svg').length);
  b.setAttribute('data-probe-curves', document.querySelectorAll('svg.train-curve polyline').length);
  b.setAttribute('data-probe-bars', document.querySelectorAll('svg.density-hist rect.bar').length);
  b.setAttribute('data-probe-contexts', document.querySelectorAll('div.context').length);
  b.setAttribute('data-probe-ctxexamples', document.querySelectorAll('div.example.context').length);
  b.setAttribute('data-probe-tokens', document.querySelectorAll('div.context span.tok').length);
  b.setAttribute('data-probe-outlined', document.querySelectorAll('span.tok.ex').length);
  b.setAttribute('data-probe-shaded', [...document.querySelectorAll('span.tok')].filter(
    e => getComputedStyle(e).backgroundColor !== 'rgba(0, 0, 0, 0)').length);
  b.setAttribute('data-probe-logits', document.querySelectorAll('table.logit-effect').length);
  b.setAttribute('data-probe-logitrows', document.querySelectorAll('table.logit-effect td.lt').length);
  b.setAttribute('data-probe-width', document.documentElement.scrollWidth);
  b.setAttribute('data-probe-height', document.documentElement.scrollHeight);
});
</script>"""


def run(*args):
    p = subprocess.run([SAE, *map(str, args)], capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise AssertionError(f"sae {' '.join(map(str, args))} failed ({p.returncode}):\n{p.stderr}")
    return p


def check(name, cond, detail=""):
    print(("ok   " if cond else "FAIL ") + name + ("" if cond else f" {detail}"))
    if not cond:
        failures.append(name)


def path(name):
    return os.path.join(TMP, name)


def browser(*args):
    cmd = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
           "--disable-extensions", f"--user-data-dir={path('profile')}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def png_info(file):
    """(width, height, number of distinct gray levels in a sample of rows) of a PNG, by hand."""
    data = open(file, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    at, idat, w, h, ctype = 8, b"", 0, 0, 0
    while at < len(data):
        (n,) = struct.unpack(">I", data[at : at + 4])
        typ, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + n]
        if typ == b"IHDR":
            w, h, depth, ctype = struct.unpack(">IIBB", body[:10])
        elif typ == b"IDAT":
            idat += body
        at += 12 + n
    raw = zlib.decompress(idat)
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[ctype]
    stride = w * channels + 1
    # Filters make raw bytes differ from pixels, but a blank page compresses to a handful of
    # byte values; a page with charts and images has many.
    return w, h, len(set(raw[: stride * min(h, 400)]))


def probe(html_file):
    """The data-probe-* counts Chromium records for @p html_file (with PROBE appended)."""
    html = open(html_file, encoding="utf-8").read()
    probe_file = html_file + ".probe.html"
    with open(probe_file, "w", encoding="utf-8") as f:
        f.write(html.replace("</body>", PROBE + "</body>"))
    d = browser("--window-size=1400,1000", "--virtual-time-budget=10000", "--dump-dom", "file://" + probe_file)
    m = re.search(r"<body([^>]*)>", d.stdout)
    check("chromium dumped the DOM of " + os.path.basename(html_file), d.returncode == 0 and m is not None,
          d.stderr[-2000:])
    return {k: int(v) for k, v in re.findall(r'data-probe-([a-z]+)="(\d+)"', m.group(1) if m else "")}


def text_case():
    """The same data seen as 30 windows of 101 tokens (pos 0 not harvested), a 64-dim
    unembedding of 300 tokens: text contexts and logit-effect tables."""
    import random
    rng = random.Random(3)
    rows, lines = 3000, ["row\tctx\tpos\ttoken_id\tdoc\ttext"]
    r = 0
    for c in range(30):
        for p in range(101):
            row = -1 if p == 0 else r
            r += p > 0
            text = "\\n" if p % 17 == 0 else rng.choice([" the", " cat", " <sat>", " on", "\\t", " caf\u00e9", "."])
            lines.append(f"{row}\t{c}\t{p}\t{(c * 101 + p) % 300}\tdoc {c}\t{text}")
    assert r == rows
    with open(path("tokens.tsv"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    with open(path("vocab.txt"), "w", encoding="utf-8") as f:
        f.write("".join(f"v{i}\n" for i in range(300)))
    # a [300, 64] float32 .npy written by hand (no numpy needed)
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (300, 64), }"
    header += " " * (63 - (10 + len(header)) % 64) + "\n"
    with open(path("U.npy"), "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode())
        f.write(struct.pack("<%df" % (300 * 64), *[rng.gauss(0, 1) for _ in range(300 * 64)]))
    p = run("report", "--sae", path("sae"), "--data", path("x.npy"), "--tokens", path("tokens.tsv"),
            "--unembed", path("U.npy"), "--vocab", path("vocab.txt"), "--features", FEATURES, "--examples", EXAMPLES,
            "--intervals", INTERVALS, "--context-before", 6, "--context-after", 3, "--out", path("text.html"))
    r = json.loads(p.stdout.strip().splitlines()[-1])
    contexts = FEATURES * (EXAMPLES + INTERVALS * PER_INTERVAL)
    check("text report written", r["text"] and r["contexts"] == contexts and r["logit_features"] == FEATURES, r)
    got = probe(path("text.html"))
    print("browser counts (text):", got)
    check("text: feature blocks", got.get("features") == FEATURES, got)
    check("text: no images", got.get("images") == 0, got)
    check("text: context spans", got.get("contexts") == contexts, got)
    check("text: top-example contexts", got.get("ctxexamples") == FEATURES * EXAMPLES, got)
    check("text: one outlined token per context", got.get("outlined") == contexts, got)
    check("text: 4 to 10 token spans per context", 4 * contexts <= got.get("tokens", 0) <= 10 * contexts, got)
    check("text: the example tokens at least are shaded", got.get("shaded", 0) >= contexts, got)
    check("text: logit-effect tables", got.get("logits") == FEATURES, got)
    check("text: 10 promoted + 10 suppressed tokens each", got.get("logitrows") == 20 * FEATURES, got)
    s = browser("--window-size=1400,3000", f"--screenshot={path('text.png')}", "file://" + path("text.html"))
    check("text: screenshot written", s.returncode == 0 and os.path.exists(path("text.png")), s.stderr[-2000:])
    if os.path.exists(path("text.png")):
        w, h, levels = png_info(path("text.png"))
        check("text: screenshot is not blank", levels > 50, levels)


def main():
    run("synth", "--out", path("x.npy"), "--d-in", 64, "--features", 128, "--samples", 3000, "--seed", 9)
    run("train", "--data", path("x.npy"), "--arch", "topk", "--d-sae", 128, "--k", 4, "--steps", 150, "--batch", 256,
        "--log-every", 15, "--out", path("sae"))
    p = run("report", "--sae", path("sae"), "--data", path("x.npy"), "--images", "8x8", "--features", FEATURES,
            "--examples", EXAMPLES, "--intervals", INTERVALS, "--out", path("report.html"))
    r = json.loads(p.stdout.strip().splitlines()[-1])
    check("report written", r["features"] == FEATURES and os.path.getsize(path("report.html")) == r["bytes"], r)

    html = open(path("report.html"), encoding="utf-8").read()
    with open(path("probe.html"), "w", encoding="utf-8") as f:
        f.write(html.replace("</body>", PROBE + "</body>"))
    d = browser("--window-size=1400,1000", "--virtual-time-budget=10000", "--dump-dom", "file://" + path("probe.html"))
    m = re.search(r"<body([^>]*)>", d.stdout)
    check("chromium dumped the DOM", d.returncode == 0 and m is not None, d.stderr[-2000:])
    attrs = dict(re.findall(r'data-probe-([a-z]+)="(\d+)"', m.group(1) if m else ""))
    got = {k: int(v) for k, v in attrs.items()}
    print("browser counts:", got)
    n_log = len([k for k in json.loads(open(path("sae/train_log.jsonl")).readline())
                 if k not in ("step", "tokens", "seconds", "tokens_per_s")])
    images = FEATURES * (2 + EXAMPLES + INTERVALS * PER_INTERVAL)  # decoder + decoded + examples + intervals
    check("the load event ran", "images" in got, attrs)
    check("feature blocks", got.get("features") == FEATURES, got)
    check("top examples", got.get("examples") == FEATURES * EXAMPLES, got)
    check("interval samples", got.get("intervals") == FEATURES * INTERVALS * PER_INTERVAL, got)
    check("all images present", got.get("images") == images, (got.get("images"), images))
    check("every image decoded", got.get("decoded") == got.get("images"), got)
    check("charts: training curves + density + one per feature", got.get("svgs") == n_log + 1 + FEATURES, got)
    check("training curves drawn", got.get("curves") == n_log, got)
    check("density histogram has bars", got.get("bars", 0) >= 3, got)
    check("page has a sensible size", got.get("width", 0) >= 1000 and got.get("height", 0) > 2000, got)

    height = min(max(got.get("height", 3000), 1000), 16000)
    s = browser(f"--window-size=1400,{height}", f"--screenshot={path('report.png')}", "file://" + path("report.html"))
    ok = s.returncode == 0 and os.path.exists(path("report.png"))
    check("screenshot written", ok, s.stderr[-2000:])
    if ok:
        w, h, levels = png_info(path("report.png"))
        print(f"screenshot {path('report.png')}: {w}x{h}, {levels} distinct byte values")
        check("screenshot has the page's size", w == 1400 and h == height, (w, h))
        check("screenshot is not blank", levels > 50, levels)

    text_case()

    if failures:
        print(f"{len(failures)} failures")
        sys.exit(1)
    print("all passed")


if __name__ == "__main__":
    main()
