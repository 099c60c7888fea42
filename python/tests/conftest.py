"""Shared fixtures of the libsae Python tests.

The tests compare the package with the `sae` command-line tool built from the same tree: set
SAE_BIN to it (scripts/test.sh does); without it the tool is looked for in build-test/bin and
build/bin, and the tests that need it fail (not skip) when it is missing.
"""
import json
import os
import pathlib
import subprocess

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def sae_bin() -> str:
    env = os.environ.get("SAE_BIN")
    if env:
        return env
    for cand in (ROOT / "build-test" / "bin" / "sae", ROOT / "build" / "bin" / "sae"):
        if cand.exists():
            return str(cand)
    raise AssertionError("the `sae` tool was not found: set SAE_BIN (scripts/test.sh builds it)")


def run_sae(*args, ok=True, timeout=600):
    p = subprocess.run([sae_bin(), *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if ok and p.returncode != 0:
        raise AssertionError(f"sae {' '.join(map(str, args))} failed ({p.returncode}):\n{p.stderr}")
    return p


def last_json(p):
    lines = [line for line in p.stdout.strip().splitlines() if line.strip()]
    assert lines, "no stdout"
    return json.loads(lines[-1])


def superposition(n=6000, d=24, features=48, prob=0.06, seed=1):
    """n tokens of d-dim data made of `features` known unit directions (sparse, positive
    coefficients) plus a little noise: (X float32 [n, d], F float32 [features, d])."""
    rng = np.random.default_rng(seed)
    F = rng.standard_normal((features, d))
    F /= np.linalg.norm(F, axis=1, keepdims=True)
    A = (rng.random((n, features)) < prob) * rng.random((n, features))
    X = A @ F + 0.01 * rng.standard_normal((n, d))
    return X.astype(np.float32), F.astype(np.float32)


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    """The toy data as an array and as a .npy file."""
    X, F = superposition()
    d = tmp_path_factory.mktemp("data")
    np.save(d / "X.npy", X)
    np.save(d / "F.npy", F)
    return {"X": X, "F": F, "path": d / "X.npy", "features": d / "F.npy", "dir": d}


ARCHS = ["relu", "topk", "batchtopk", "jumprelu", "ortsae", "matryoshka"]
# Small settings every architecture trains with in well under a second.
SMALL = dict(d_sae=64, k=4, steps=60, batch=256, seed=3, threads=2, gemm="eigen", log_every=20)


def cli_flags(settings):
    out = []
    for key, value in settings.items():
        out += ["--" + key.replace("_", "-"), str(value)]
    return out


@pytest.fixture(scope="session")
def trained(data, tmp_path_factory):
    """One SAE per architecture trained by `sae train` (SMALL settings): {arch: directory}."""
    d = tmp_path_factory.mktemp("cli")
    dirs = {}
    for arch in ARCHS:
        out = d / arch
        run_sae("train", "--data", data["path"], "--arch", arch, *cli_flags(SMALL), "--out", out)
        dirs[arch] = out
    return dirs
