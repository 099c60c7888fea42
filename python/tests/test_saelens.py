"""SAELens (pip `sae-lens`) reads what libsae.Sae.save() writes: for every architecture its
encode agrees with libsae's to 1e-5 with the same active latents.

Skipped when sae_lens is not installed, unless LIBSAE_REQUIRE_SAELENS=1 (scripts/test.sh sets
it after installing sae-lens), which turns the missing package into a failure.
"""
import os

import numpy as np
import pytest

import libsae
from conftest import ARCHS

if os.environ.get("LIBSAE_REQUIRE_SAELENS") == "1":
    import sae_lens  # noqa: F401  (a failure here is the test failing)
    import torch
else:
    sae_lens = pytest.importorskip("sae_lens")
    torch = pytest.importorskip("torch")


@pytest.mark.parametrize("arch", ARCHS)
def test_saelens_encode_agrees(arch, data, trained, tmp_path):
    from sae_lens import SAE

    ours = libsae.load(trained[arch])
    ours.save(tmp_path / "sae")
    theirs = SAE.load_from_disk(str(tmp_path / "sae"), device="cpu")
    assert theirs.cfg.d_in == ours.d_in and theirs.cfg.d_sae == ours.d_sae
    X = data["X"][:2000]
    with torch.no_grad():
        f_theirs = theirs.encode(torch.from_numpy(X)).numpy()
    f_ours = ours.encode(X, dense=True)
    assert f_theirs.shape == f_ours.shape
    assert np.abs(f_theirs - f_ours).max() <= 1e-5 * max(1.0, np.abs(f_ours).max())
    same = ((f_theirs != 0) == (f_ours != 0)).all(axis=1)
    assert same.all(), f"active sets differ on {np.count_nonzero(~same)} of {len(same)} tokens"


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_saelens_reads_half_precision(dtype, trained, tmp_path):
    from sae_lens import SAE

    libsae.load(trained["jumprelu"]).save(tmp_path / "sae", dtype=dtype)
    ours = libsae.load(tmp_path / "sae")  # the rounded weights, as float32
    theirs = SAE.load_from_disk(str(tmp_path / "sae"), device="cpu")
    for name in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold"):
        t = getattr(theirs, name).detach().float().numpy()
        assert np.array_equal(t, getattr(ours, name)), name
