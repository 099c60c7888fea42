#!/usr/bin/env python3
"""NaN or Inf in the activations is refused by every subcommand that reads them (eval, encode,
steer, report, train), with a non-zero exit, a message naming the file, the row and the value,
and no output file; never wrong numbers with exit 0.

Environment: SAE_BIN (the sae executable), SAE_TMP (scratch directory).
"""
import os
import sys
import tempfile

import numpy as np

from saetest import finish, check, failures, run

TMP = tempfile.mkdtemp(prefix="sae_nonfinite_", dir=os.environ.get("SAE_TMP") or None)


def main():
    toy = os.path.join(TMP, "toy.npy")
    run("synth", "--out", toy, "--d-in", 16, "--features", 32, "--samples", 3000, "--seed", 4)
    sae_dir = os.path.join(TMP, "sae")
    run("train", "--data", toy, "--arch", "topk", "--d-sae", 32, "--k", 2, "--steps", 30, "--batch", 256,
        "--out", sae_dir)
    X = np.load(toy)
    for value, name in ((np.nan, "nan"), (np.inf, "inf"), (-np.inf, "-inf")):
        bad = os.path.join(TMP, f"bad_{name}.npy")
        Y = X.copy()
        Y[1234, 5] = value
        np.save(bad, Y)
        for cmd, extra, out in (
            ("eval", [], None),
            ("encode", ["--out", os.path.join(TMP, f"c_{name}.npz")], os.path.join(TMP, f"c_{name}.npz")),
            ("steer", ["--latent", 0, "--scale", 2, "--out", os.path.join(TMP, f"s_{name}.npy")],
             os.path.join(TMP, f"s_{name}.npy")),
            ("report", ["--out", os.path.join(TMP, f"r_{name}.html")], os.path.join(TMP, f"r_{name}.html")),
        ):
            p = run(cmd, "--sae", sae_dir, "--data", bad, *extra, ok=False)
            check(f"{cmd} on {name}: exit 1", p.returncode == 1, f"rc={p.returncode} {p.stderr}")
            check(f"{cmd} on {name}: names file, row and value",
                  bad in p.stderr and "row 1234" in p.stderr and f"is {name}" in p.stderr, p.stderr)
            check(f"{cmd} on {name}: no JSON result", p.stdout.strip() == "", p.stdout)
            if out:
                check(f"{cmd} on {name}: no output file", not os.path.exists(out))
        p = run("train", "--data", bad, "--arch", "topk", "--d-sae", 32, "--k", 2, "--steps", 30, "--batch", 256,
                "--out", os.path.join(TMP, f"t_{name}"), ok=False)
        check(f"train on {name}: exit 1 naming the row", p.returncode == 1 and "row 1234" in p.stderr, p.stderr)
        check(f"train on {name}: no SAE written", not os.path.exists(os.path.join(TMP, f"t_{name}", "cfg.json")))

    return finish()


if __name__ == "__main__":
    sys.exit(main())
