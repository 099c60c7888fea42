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


def test_metadata_survives_saelens(trained, tmp_path):
    """libsae -> SAELens load -> SAELens save_model -> libsae: SAELens sees libsae's metadata
    (cfg.json says it is a v6 config: metadata.sae_lens_version) and keeps every key."""
    from sae_lens import SAE

    ours = libsae.load(trained["topk"])
    ours.save(tmp_path / "ours")
    md = ours.cfg["metadata"]
    assert md["sae_lens_version"] == "6.0.0+libsae." + libsae.__version__
    assert md["sae_lens_training_version"] is None and "training" in md
    theirs = SAE.load_from_disk(str(tmp_path / "ours"), device="cpu")
    for key, value in md.items():
        assert theirs.cfg.metadata[key] == value, key
    theirs.save_model(tmp_path / "theirs")
    back = libsae.load(tmp_path / "theirs")
    for key, value in md.items():
        assert back.cfg["metadata"][key] == value, key
    X = np.random.default_rng(0).standard_normal((200, ours.d_in)).astype(np.float32)
    assert np.array_equal(back.encode(X, dense=True), ours.encode(X, dense=True))


# What SAELens can save, by training class (save_model writes the training form,
# save_inference_model the inference form). "read": libsae computes SAELens's codes;
# otherwise the refusal's reason (a regex on the one-line FormatError).
SAELENS_SAVES = {
    ("standard", "save_model"): "read",
    ("standard", "save_inference_model"): "read",
    ("topk", "save_model"): "read",
    ("topk", "save_inference_model"): "read",
    ("jumprelu", "save_model"): "read",
    ("jumprelu", "save_inference_model"): "read",
    ("gated", "save_model"): "read",
    ("gated", "save_inference_model"): "read",
    ("batchtopk", "save_model"): "read",  # as its inference form: jumprelu, threshold = topk_threshold
    ("batchtopk", "save_inference_model"): "read",
    ("matryoshka_batchtopk", "save_model"): "read",
    ("matryoshka_batchtopk", "save_inference_model"): "read",
    ("abstopk", "save_model"): r"'abstopk' keeps the k pre-activations of largest magnitude with their signs.*refused",
    ("abstopk", "save_inference_model"): r"'abstopk' .*refused",
    ("matching_pursuit", "save_model"): r"'matching_pursuit' .*refused",
    ("matching_pursuit", "save_inference_model"): r"'matching_pursuit' .*refused",
}


TRAINING_SAVES_READ_AS_INFERENCE = {("batchtopk", "save_model"), ("matryoshka_batchtopk", "save_model")}


def _saelens_training_sae(arch, d, m, seed, **options):
    """A SAELens training SAE of `arch` with random weights (thresholds and gate biases of both
    signs, decoder rows of unequal norms, a positive topk_threshold)."""
    from sae_lens.registry import get_sae_training_class

    cls, cfg_cls = get_sae_training_class(arch)
    if arch in ("topk", "batchtopk", "matryoshka_batchtopk", "abstopk"):
        options["k"] = 4
    if arch == "matryoshka_batchtopk":
        options["matryoshka_widths"] = [m // 4, m]
    sae = cls(cfg_cls(d_in=d, d_sae=m, **options))
    _random_weights(sae, seed)
    with torch.no_grad():
        sae.W_dec.mul_(torch.linspace(0.3, 2.0, m)[:, None])
        if hasattr(sae, "topk_threshold"):
            sae.topk_threshold.fill_(0.4)
    return sae


@pytest.mark.parametrize("apply_b_dec", [True, False], ids=["b_dec_in", "no_b_dec_in"])
@pytest.mark.parametrize("arch,how", list(SAELENS_SAVES))
def test_every_saelens_save_is_read_exactly_or_refused(arch, how, apply_b_dec, data, tmp_path):
    from sae_lens import SAE
    from sae_lens.registry import get_sae_training_class

    X = data["X"][:2000]
    sae = _saelens_training_sae(arch, X.shape[1], 64, seed=3, apply_b_dec_to_input=apply_b_dec)
    getattr(sae, how)(tmp_path / "sae")
    expected = SAELENS_SAVES[(arch, how)]
    if expected != "read":
        with pytest.raises(libsae.FormatError, match=expected) as e:
            libsae.load(tmp_path / "sae")
        assert "\n" not in str(e.value) and str(e.value).startswith(str(tmp_path / "sae" / "cfg.json"))
        return
    ours = libsae.load(tmp_path / "sae")
    if (arch, how) in TRAINING_SAVES_READ_AS_INFERENCE:
        # SAE.load_from_disk cannot load these; SAELens's inference form is what its training
        # class writes with save_inference_model (jumprelu, threshold = topk_threshold)
        get_sae_training_class(arch)[0].load_from_disk(str(tmp_path / "sae")).save_inference_model(tmp_path / "inf")
        assert ours.architecture == "jumprelu" and ours.cfg["metadata"]["training_architecture"] == arch
        theirs = SAE.load_from_disk(str(tmp_path / "inf"), device="cpu")
    else:
        theirs = SAE.load_from_disk(str(tmp_path / "sae"), device="cpu")  # SAELens's inference form
    with torch.no_grad():
        f = theirs.encode(torch.from_numpy(X))
        x_hat = theirs.decode(f).numpy()
        f = f.numpy()
    assert (f != 0).any() and (f == 0).any()
    got = ours.encode(X, dense=True)
    assert ((got != 0) == (f != 0)).all(), f"active sets differ on {np.count_nonzero(((got != 0) != (f != 0)).any(axis=1))} tokens"
    assert np.abs(got - f).max() <= 1e-5 * max(1.0, np.abs(f).max())
    assert np.abs(ours.reconstruct(X) - x_hat).max() <= 1e-4 * max(1.0, np.abs(x_hat).max())
    # libsae's own save of it is read by SAELens with the same codes
    ours.save(tmp_path / "again")
    with torch.no_grad():
        f_again = SAE_load(tmp_path / "again").encode(torch.from_numpy(X)).numpy()
    assert ((f_again != 0) == (f != 0)).all()
    assert np.abs(f_again - f).max() <= 1e-5 * max(1.0, np.abs(f).max())


def test_gated_is_read_as_jumprelu_with_gated_codes(data, tmp_path):
    """SAELens's gated SAE has no b_enc: libsae folds it into the JumpReLU that computes the
    same codes, including open gates whose magnitude is negative (code 0) and thresholds < 0."""
    from sae_lens import GatedSAE, GatedSAEConfig

    X = data["X"][:2000]
    theirs = GatedSAE(GatedSAEConfig(d_in=X.shape[1], d_sae=64))
    _random_weights(theirs, 4)
    theirs.save_model(tmp_path / "sae")
    ours = libsae.load(tmp_path / "sae")
    assert ours.architecture == "jumprelu" and ours.cfg["metadata"]["folded_gated"] is True
    assert (ours.threshold < 0).any() and (ours.threshold > 0).any()
    with torch.no_grad():
        sae_in = torch.from_numpy(X) - theirs.b_dec
        gate_open = (sae_in @ theirs.W_enc + theirs.b_gate > 0).numpy()
        magnitude = (sae_in @ (theirs.W_enc * theirs.r_mag.exp()) + theirs.b_mag).numpy()
        f = theirs.encode(torch.from_numpy(X)).numpy()
    assert (gate_open & (magnitude <= 0)).any() and (~gate_open & (magnitude > 0)).any()
    got = ours.encode(X, dense=True)
    assert ((got != 0) == (f != 0)).all()
    assert np.abs(got - f).max() <= 1e-5 * max(1.0, np.abs(f).max())


@pytest.mark.parametrize("rescale", [True, False], ids=["rescale", "no_rescale"])
@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka_batchtopk"])
def test_batchtopk_training_save_reads_as_its_inference_form(arch, rescale, data, tmp_path):
    """A BatchTopK training save (with and without SAELens's rescale_acts_by_decoder_norm) gives
    the codes and reconstructions of what SAELens's save_inference_model writes from it."""
    from sae_lens import SAE
    from sae_lens.registry import get_sae_training_class

    X = data["X"][:2000]
    _saelens_training_sae(arch, X.shape[1], 64, seed=5, rescale_acts_by_decoder_norm=rescale).save_model(tmp_path / "train")
    ours = libsae.load(tmp_path / "train")
    assert ours.architecture == "jumprelu" and ours.cfg["metadata"]["training_architecture"] == arch
    cls = get_sae_training_class(arch)[0]
    cls.load_from_disk(str(tmp_path / "train")).save_inference_model(tmp_path / "inference")
    theirs = SAE.load_from_disk(str(tmp_path / "inference"), device="cpu")
    with torch.no_grad():
        f = theirs.encode(torch.from_numpy(X))
        x_hat = theirs.decode(f).numpy()
        f = f.numpy()
    assert (f != 0).any() and (f == 0).any()
    got = ours.encode(X, dense=True)
    assert ((got != 0) == (f != 0)).all()
    assert np.abs(got - f).max() <= 1e-5 * max(1.0, np.abs(f).max())
    assert np.abs(ours.reconstruct(X) - x_hat).max() <= 1e-4 * max(1.0, np.abs(x_hat).max())
