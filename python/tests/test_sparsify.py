"""libsae against the real eai-sparsify (pip `eai-sparsify`, import `sparsify`).

Every option of sparsify's SparseCoder that saves an SAE: a random-weight SAE written by
`save_to_disk` is read by libsae with sparsify's codes (to 1e-5, same active latents) and
reconstructions, or refused with one line naming the file and the reason. libsae writes no
sparsify directories (it writes SAELens ones), so the other direction is sparsify -> libsae ->
SAELens: what libsae writes from a sparsify SAE gives sparsify's codes in SAELens.

Skipped when sparsify is not installed, unless LIBSAE_REQUIRE_SPARSIFY=1 (scripts/test.sh sets
it after installing eai-sparsify), which turns the missing package into a failure.
"""
import os

import numpy as np
import pytest

import libsae

# sparsify decodes with a Triton kernel whenever triton imports (torch brings it), which needs a
# GPU; its documented switch selects its eager CPU decoder (embedding_bag) instead.
os.environ["SPARSIFY_DISABLE_TRITON"] = "1"

if os.environ.get("LIBSAE_REQUIRE_SPARSIFY") == "1":
    import sparsify  # noqa: F401  (a failure here is the test failing)
    import torch
else:
    sparsify = pytest.importorskip("sparsify")
    torch = pytest.importorskip("torch")

D_SAE = 96
K = 5


def _random_sparsify(d, dtype=torch.float32, seed=0, **options):
    """A sparsify SparseCoder with random weights: encoder rows and decoder rows of unequal
    norms (sparsify's selection never rescales by them), biases of both signs."""
    from sparsify import SparseCoder, SparseCoderConfig

    options.setdefault("num_latents", D_SAE)
    options.setdefault("k", K)
    sae = SparseCoder(d, SparseCoderConfig(**options), dtype=dtype)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sae.named_parameters():
            p.copy_((torch.randn(p.shape, generator=g) * 0.5).to(p.dtype))
        if sae.W_dec is not None:
            sae.W_dec.mul_(torch.linspace(0.2, 2.0, sae.num_latents)[:, None].to(dtype))
    return sae


def _sparsify_codes(sae, X):
    """sparsify's dense codes and reconstruction of X (float32 numpy [N, d])."""
    with torch.no_grad():
        x = torch.from_numpy(X).to(sae.dtype)
        out = sae.encode(x)
        dense = torch.zeros(x.shape[0], sae.num_latents, dtype=out.top_acts.dtype)
        dense.scatter_(1, out.top_indices, out.top_acts)
        x_hat = sae.decode(out.top_acts, out.top_indices)
    return dense.float().numpy(), x_hat.float().numpy()


def _assert_same_codes(got, want):
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max())
    same = ((got != 0) == (want != 0)).all(axis=1)
    assert same.all(), f"active sets differ on {np.count_nonzero(~same)} of {len(same)} tokens"


# Every SparseCoderConfig option that leaves an SAE (not a transcoder) with topk: they change
# only training (multi_topk adds a loss, normalize_decoder renormalises the decoder between
# steps) or the size (expansion_factor instead of num_latents).
OPTIONS = {
    "default": {},
    "normalize_decoder_false": {"normalize_decoder": False},
    "multi_topk": {"multi_topk": True},
    "expansion_factor": {"num_latents": 0, "expansion_factor": 3},
    "k_1": {"k": 1},
}


@pytest.mark.parametrize("name", list(OPTIONS))
def test_sparsify_sae_is_read_with_its_codes(name, data, tmp_path):
    X = data["X"][:2000]
    theirs = _random_sparsify(X.shape[1], **OPTIONS[name])
    theirs.save_to_disk(tmp_path / "layers.3")
    ours = libsae.load(tmp_path / "layers.3")
    assert ours.format == "sparsify"
    assert ours.architecture == "topk" and ours.k == theirs.cfg.k
    assert ours.d_in == theirs.d_in and ours.d_sae == theirs.num_latents
    f, x_hat = _sparsify_codes(theirs, X)
    _assert_same_codes(ours.encode(X, dense=True), f)
    assert np.abs(ours.reconstruct(X) - x_hat).max() <= 1e-4 * max(1.0, np.abs(x_hat).max())


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_sparsify_half_precision(dtype, data, tmp_path):
    """Half-precision weights are read exactly (as float32); the codes agree with sparsify
    running the same weights in float32."""
    X = data["X"][:2000]
    theirs = _random_sparsify(X.shape[1], dtype=getattr(torch, dtype), seed=1)
    theirs.save_to_disk(tmp_path / "sae")
    ours = libsae.load(tmp_path / "sae")
    assert np.array_equal(ours.W_enc.T, theirs.encoder.weight.detach().float().numpy())
    assert np.array_equal(ours.W_dec, theirs.W_dec.detach().float().numpy())
    assert np.array_equal(ours.b_enc, theirs.encoder.bias.detach().float().numpy())
    assert np.array_equal(ours.b_dec, theirs.b_dec.detach().float().numpy())
    f, _ = _sparsify_codes(theirs.float(), X)
    _assert_same_codes(ours.encode(X, dense=True), f)


REFUSED = {
    "skip_connection": ({"skip_connection": True}, r"skip_connection without transcode: .*W_skip x.*refused"),
    "groupmax": ({"activation": "groupmax", "num_latents": 96, "k": 8}, r"'groupmax' .* k groups.*refused"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_sparsify_forms_libsae_does_not_compute_are_refused(name, data, tmp_path):
    options, reason = REFUSED[name]
    _random_sparsify(data["X"].shape[1], **options).save_to_disk(tmp_path / "sae")
    with pytest.raises(libsae.FormatError, match=reason) as e:
        libsae.load(tmp_path / "sae")
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "sae" / "cfg.json") in msg


def test_sparsify_sae_through_libsae_into_saelens(data, tmp_path):
    """sparsify -> libsae -> SAELens directory: SAELens computes sparsify's codes, and the
    metadata says where the SAE came from."""
    sae_lens = pytest.importorskip("sae_lens")
    X = data["X"][:2000]
    theirs = _random_sparsify(X.shape[1], seed=2, normalize_decoder=False)
    theirs.save_to_disk(tmp_path / "sparsify")
    libsae.load(tmp_path / "sparsify").save(tmp_path / "saelens")
    sl = sae_lens.SAE.load_from_disk(str(tmp_path / "saelens"), device="cpu")
    assert sl.cfg.metadata.converted_from == "sparsify"
    with torch.no_grad():
        f_sl = sl.encode(torch.from_numpy(X)).numpy()
    f, _ = _sparsify_codes(theirs, X)
    _assert_same_codes(f_sl, f)


@pytest.mark.parametrize("skip", [False, True], ids=["transcoder", "skip_transcoder"])
def test_sparsify_transcoders_both_ways(skip, data, tmp_path):
    """sparsify's TopK transcoders (transcode: true, skip_connection: W_skip x) are read with
    sparsify's codes and outputs; libsae writes its TopK transcoders as sparsify directories
    (SAELens has no TopK transcoder), which sparsify loads with libsae's outputs."""
    X = data["X"][:1500]
    theirs = _random_sparsify(X.shape[1], seed=4, transcode=True, skip_connection=skip)
    theirs.save_to_disk(tmp_path / "sparsify")
    ours = libsae.load(tmp_path / "sparsify")
    assert ours.is_transcoder and ours.d_out == X.shape[1] and (ours.W_skip is not None) == skip
    with torch.no_grad():
        y_hat = theirs(torch.from_numpy(X)).sae_out.numpy()
    f, _ = _sparsify_codes(theirs, X)
    _assert_same_codes(ours.encode(X, dense=True), f)
    assert np.abs(ours.reconstruct(X) - y_hat).max() <= 1e-4 * max(1.0, np.abs(y_hat).max())
    # libsae's save of it is a sparsify directory again, and so is a TopK transcoder it trains
    ours.save(tmp_path / "again")
    assert not (tmp_path / "again" / "sae_weights.safetensors").exists()
    from sparsify import SparseCoder
    back = SparseCoder.load_from_disk(tmp_path / "again")
    assert back.cfg.transcode and back.cfg.skip_connection == skip
    with torch.no_grad():
        assert np.abs(back(torch.from_numpy(X)).sae_out.numpy() - y_hat).max() <= 1e-5 * max(1.0, np.abs(y_hat).max())
    rng = np.random.default_rng(1)
    Y = (X @ rng.standard_normal((X.shape[1], X.shape[1])) * 0.3).astype(np.float32)
    trained = libsae.train(X, target=Y, arch="topk", k=4, d_sae=64, steps=200, batch=256, skip=skip,
                           verbose=False, out=tmp_path / "trained")
    sp = SparseCoder.load_from_disk(tmp_path / "trained")
    with torch.no_grad():
        y_sp = sp(torch.from_numpy(X)).sae_out.numpy()
    assert np.abs(trained.reconstruct(X) - y_sp).max() <= 1e-5 * max(1.0, np.abs(y_sp).max())
    assert libsae.evaluate(trained, X, target=Y)["fvu"] < 0.9
