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


def _random_weights(sae, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sae.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def test_topk_rescale_acts_by_decoder_norm_is_folded(data, tmp_path):
    """SAELens's TopK with rescale_acts_by_decoder_norm (its training default) on a decoder whose
    rows are far from unit norm: libsae folds the norms at load and gives SAELens's codes and
    reconstructions."""
    from sae_lens import TopKSAE, TopKSAEConfig

    d = data["X"].shape[1]
    theirs = TopKSAE(TopKSAEConfig(d_in=d, d_sae=40, k=5, rescale_acts_by_decoder_norm=True))
    _random_weights(theirs, 1)
    with torch.no_grad():  # decoder norms from 0.1 to 3
        theirs.W_dec.mul_(torch.linspace(0.1, 3.0, 40)[:, None] / theirs.W_dec.norm(dim=1, keepdim=True))
    theirs.save_model(tmp_path / "sae")
    ours = libsae.load(tmp_path / "sae")
    assert ours.cfg["metadata"]["folded_decoder_norm"] is True
    X = data["X"][:2000]
    with torch.no_grad():
        f = theirs.encode(torch.from_numpy(X))
        x_hat = theirs.decode(f).numpy()
        f = f.numpy()
    got = ours.encode(X, dense=True)
    assert ((got != 0) == (f != 0)).all()
    assert np.abs(got - f).max() <= 1e-5 * max(1.0, np.abs(f).max())
    assert np.abs(ours.reconstruct(X) - x_hat).max() <= 1e-4 * max(1.0, np.abs(x_hat).max())
    # saved again it is a plain TopK SAE (flag off, norms folded) that SAELens reads the same
    ours.save(tmp_path / "again")
    again = SAE_load(tmp_path / "again")
    assert again.cfg.rescale_acts_by_decoder_norm is False
    with torch.no_grad():
        assert np.abs(again.encode(torch.from_numpy(X)).numpy() - f).max() <= 1e-5 * max(1.0, np.abs(f).max())


def SAE_load(path):
    from sae_lens import SAE

    return SAE.load_from_disk(str(path), device="cpu")


@pytest.mark.parametrize("norm", ["layer_norm", "constant_norm_rescale"])
def test_run_time_normalisations_are_refused(norm, tmp_path):
    """SAELens normalises every token at run time for these; libsae refuses the file with the
    reason instead of giving other codes."""
    from sae_lens import StandardSAE, StandardSAEConfig

    sae = StandardSAE(StandardSAEConfig(d_in=8, d_sae=16, normalize_activations=norm))
    _random_weights(sae, 2)
    sae.save_model(tmp_path / "sae")
    with pytest.raises(libsae.FormatError, match=f"normalize_activations '{norm}'.*refused"):
        libsae.load(tmp_path / "sae")
