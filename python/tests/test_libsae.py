"""The libsae Python package against the `sae` tool built from the same tree and against
numpy written from the formulas (docs/python.md lists what each test covers).

Same inputs, same code: training with the same settings gives the same weights bit for bit
(array or path input), encode gives the codes `sae encode` writes bit for bit, steer and
evaluate equal `sae steer` / `sae eval`.
"""
import json
import os
import resource
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import scipy.sparse

import libsae
from conftest import ARCHS, SMALL, cli_flags, last_json, run_sae


def read_safetensors(path):
    """{name: float32 array} parsed from the raw bytes (independent of libsae)."""
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", info
        a, b = info["data_offsets"]
        out[name] = np.frombuffer(raw[8 + n + a:8 + n + b], dtype="<f4").reshape(info["shape"])
    return out


def weights(sae):
    w = {"W_enc": sae.W_enc, "W_dec": sae.W_dec, "b_enc": sae.b_enc, "b_dec": sae.b_dec}
    if sae.threshold is not None:
        w["threshold"] = sae.threshold
    return w


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert np.array_equal(wa[name], wb[name]), f"{name} differs (max {np.abs(wa[name] - wb[name]).max()})"


# ---------------------------------------------------------------------------------------------
# Training: the same weights as `sae train`.

@pytest.mark.parametrize("arch", ARCHS)
def test_train_array_equals_cli(arch, data, trained, tmp_path):
    py = libsae.train(data["X"], arch=arch, **SMALL, out=tmp_path / "py", verbose=False)
    cli = libsae.load(trained[arch])
    assert_same_weights(py, cli)
    assert py.architecture == cli.architecture
    # The directory it saved holds the same tensors, byte for byte.
    a = read_safetensors(tmp_path / "py" / "sae_weights.safetensors")
    b = read_safetensors(trained[arch] / "sae_weights.safetensors")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert (tmp_path / "py" / "train_log.jsonl").read_text().count("\n") == SMALL["steps"] // SMALL["log_every"]
    assert py.result["steps"] == SMALL["steps"] and py.result["tokens"] == SMALL["steps"] * SMALL["batch"]


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_bf16_precision_gives_the_fp32_weights(arch, data, trained, tmp_path):
    """The TopK family's bf16 encoder product only proposes candidates (rescored in fp32):
    the weights are those of the fp32 run bit for bit, in the package and in the tool, on
    every backend (Eigen below: the software bf16 product; dnnl where linked)."""
    small = {k: v for k, v in SMALL.items() if k != "gemm"}
    backends = ["eigen"] + (["dnnl"] if libsae.gemm_backends().count("dnnl") else [])
    for gemm in backends:
        runs = {p: libsae.train(data["X"], arch=arch, **small, gemm=gemm, precision=p, verbose=False)
                for p in ("fp32", "bf16")}
        assert runs["fp32"].result["encoder_precision"] == "fp32"
        assert runs["bf16"].result["encoder_precision"] == "bf16"
        assert_same_weights(runs["fp32"], runs["bf16"])
        assert_same_weights(runs["bf16"], libsae.load(trained[arch]))
    run_sae("train", "--data", data["path"], "--arch", arch, *cli_flags(SMALL), "--precision", "bf16",
            "--out", tmp_path / "bf16")
    a = read_safetensors(tmp_path / "bf16" / "sae_weights.safetensors")
    b = read_safetensors(trained[arch] / "sae_weights.safetensors")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        libsae.train(data["X"], arch=arch, d_sae=16, k=2, steps=5, precision="fp8", verbose=False)
    p = run_sae("train", "--data", data["path"], "--arch", arch, "--d-sae", "16", "--precision", "fp8",
                "--out", tmp_path / "bad", ok=False)
    assert p.returncode != 0 and "--precision" in p.stderr and not (tmp_path / "bad").exists()


def test_train_from_paths_and_float16(data, trained, tmp_path):
    by_path = libsae.train(data["path"], arch="topk", **SMALL, verbose=False)
    assert_same_weights(by_path, libsae.load(trained["topk"]))
    # A list of files is streamed (StreamingBatches), like `sae train --data a.npy b.npy`.
    X = data["X"]
    np.save(tmp_path / "a.npy", X[:3000])
    np.save(tmp_path / "b.npy", X[3000:])
    listed = libsae.train([tmp_path / "a.npy", tmp_path / "b.npy"], arch="topk", **SMALL, verbose=False)
    run_sae("train", "--data", tmp_path / "a.npy", tmp_path / "b.npy", "--arch", "topk", *cli_flags(SMALL),
            "--out", tmp_path / "cli2")
    assert_same_weights(listed, libsae.load(tmp_path / "cli2"))
    # float16 arrays are converted once and train like the float32 values they hold.
    h = X.astype(np.float16)
    from16 = libsae.train(h, arch="topk", **SMALL, verbose=False)
    from32 = libsae.train(h.astype(np.float32), arch="topk", **SMALL, verbose=False)
    assert_same_weights(from16, from32)


def test_train_normalize_folds_like_cli(data, tmp_path):
    settings = dict(SMALL, normalize="expected-norm")
    py = libsae.train(data["X"] * 7.0, arch="topk", **settings, verbose=False)
    np.save(tmp_path / "X7.npy", data["X"] * 7.0)
    run_sae("train", "--data", tmp_path / "X7.npy", "--arch", "topk", *cli_flags(settings), "--out", tmp_path / "c")
    assert_same_weights(py, libsae.load(tmp_path / "c"))
    assert py.result["normalize"]["method"] == "expected-norm"


def test_train_progress_callback_and_stderr(data, capfd):
    seen = []
    libsae.train(data["X"], arch="topk", d_sae=32, k=2, steps=40, batch=128, log_every=10, callback=seen.append)
    assert [p["step"] for p in seen] == [10, 20, 30, 40]
    assert all({"loss", "l0", "fvu", "tokens_per_s", "dead_fraction"} <= p.keys() for p in seen)
    assert all(p["l0"] <= 2.0 + 1e-9 for p in seen)
    libsae.train(data["X"], arch="topk", d_sae=32, k=2, steps=20, batch=128, log_every=10)
    err = capfd.readouterr().err
    assert "step 10/20" in err and "step 20/20" in err and "libsae.train: topk" in err
    libsae.train(data["X"], arch="topk", d_sae=32, k=2, steps=20, batch=128, log_every=10, verbose=False)
    assert capfd.readouterr().err == ""


def test_train_recovers_known_features(data):
    sae = libsae.train(data["X"], arch="topk", d_sae=96, k=4, steps=600, batch=512, seed=0, verbose=False)
    m = libsae.evaluate(sae, data["X"], features=data["F"])
    assert m["mmcs"] > 0.9, m
    assert m["fvu"] < 0.3, m


def test_gil_is_released_while_training():
    X = np.random.default_rng(0).standard_normal((20000, 256), dtype=np.float32)
    ticks = []
    stop = threading.Event()

    def count():
        while not stop.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.001)

    t = threading.Thread(target=count)
    t.start()
    try:
        t0 = time.perf_counter()
        libsae.train(X, arch="topk", d_sae=2048, k=16, steps=40, batch=1024, verbose=False)
        t1 = time.perf_counter()
    finally:
        stop.set()
        t.join()
    during = [x for x in ticks if t0 < x < t1]
    # ~1 tick per ms when the other thread can run; with the GIL held the whole time: ~0.
    assert t1 - t0 > 0.2
    assert len(during) > 0.2 * (t1 - t0) / 0.001, (len(during), t1 - t0)


def test_ctrl_c_stops_between_steps_with_checkpoint(data, tmp_path):
    # The child restores Python's Ctrl-C handler: a test runner started in the background (CI)
    # may have SIGINT ignored, which children inherit and Python then respects.
    script = textwrap.dedent(f"""
        import signal, sys, numpy as np, libsae
        signal.signal(signal.SIGINT, signal.default_int_handler)
        X = np.load({str(data["path"])!r})
        def cb(p):
            print("STEP", p["step"], flush=True)
        try:
            libsae.train(X, arch="topk", d_sae=64, k=4, steps=100000, batch=256, log_every=5, callback=cb,
                         out={str(tmp_path / "run")!r}, checkpoint_every=1000000)
        except KeyboardInterrupt as e:
            print("INTERRUPTED", flush=True)
            sys.exit(3)
    """)
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    assert line.startswith("STEP"), (line, p.stderr.read() if p.poll() is not None else "")
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 3, (out, err)
    assert "INTERRUPTED" in out
    assert "interrupted after step" in err and "checkpoint written to" in err
    ckpt = tmp_path / "run" / "checkpoint" / "checkpoint.safetensors"
    assert ckpt.exists()
    assert not (tmp_path / "run" / "cfg.json").exists()  # nothing saved as if finished
    # The checkpoint resumes with the same array: the run's other settings come from it.
    with pytest.raises(ValueError, match="cannot be changed when resuming"):
        libsae.train(data["X"], resume=tmp_path / "run", steps=10, verbose=False)


def test_ctrl_c_inside_the_callback_stops_like_ctrl_c_between_steps(data, tmp_path, capsys):
    # Ctrl-C that lands while the callback's Python code runs surfaces as KeyboardInterrupt
    # raised by the callback: the same stop (checkpoint of that step, message), then re-raised.
    def cb(p):
        if p["step"] == 10:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        libsae.train(data["X"], arch="topk", d_sae=64, k=4, steps=1000, batch=256, log_every=5, callback=cb,
                     out=tmp_path / "run", checkpoint_every=1000000)
    err = capsys.readouterr().err
    ckpt = tmp_path / "run" / "checkpoint" / "checkpoint.safetensors"
    assert "interrupted after step 10" in err and str(ckpt) in err, err
    assert ckpt.exists()
    assert not (tmp_path / "run" / "cfg.json").exists()
    resumed = libsae.train(data["X"], resume=tmp_path / "run", verbose=False)
    assert resumed.result["resumed_from_step"] == 10


def test_resume_finishes_like_uninterrupted_run(data, tmp_path):
    settings = dict(SMALL, steps=80)
    full = libsae.train(data["X"], arch="topk", **settings, verbose=False)
    ck = tmp_path / "ck"
    seen = []

    class Stop(Exception):
        pass

    def stop_at_60(p):  # progress comes before the step's checkpoint: the last one is step 40's
        seen.append(p["step"])
        if p["step"] == 60:
            raise Stop()

    with pytest.raises(Stop):
        libsae.train(data["X"], arch="topk", **settings, checkpoint_every=20, checkpoint_dir=ck, callback=stop_at_60)
    assert seen[-1] == 60
    resumed = libsae.train(data["X"], resume=ck, verbose=False)
    assert resumed.result["resumed_from_step"] == 40
    assert_same_weights(resumed, full)


# ---------------------------------------------------------------------------------------------
# Encoding, decoding, steering, evaluation: the `sae` tool's numbers.

@pytest.mark.parametrize("arch", ARCHS)
def test_encode_equals_cli(arch, data, trained, tmp_path):
    sae = libsae.load(trained[arch])
    codes = sae.encode(data["X"])
    assert isinstance(codes, scipy.sparse.csr_matrix)
    assert codes.shape == (data["X"].shape[0], sae.d_sae) and codes.dtype == np.float32
    run_sae("encode", "--sae", trained[arch], "--data", data["path"], "--out", tmp_path / "c.npz", "--no-compress")
    z = np.load(tmp_path / "c.npz")
    assert np.array_equal(codes.indptr, z["offsets"])
    assert np.array_equal(codes.indices, z["indices"])
    assert np.array_equal(codes.data, z["values"])  # bit-identical
    run_sae("encode", "--sae", trained[arch], "--data", data["path"], "--out", tmp_path / "c.npy")
    dense = sae.encode(data["X"], dense=True)
    assert dense.shape == (data["X"].shape[0], sae.d_sae)
    assert np.array_equal(dense, np.load(tmp_path / "c.npy"))
    assert np.array_equal(dense, codes.toarray())
    # A path encodes the same as the array.
    assert np.array_equal(sae.encode(data["path"], dense=True), dense)


@pytest.mark.parametrize("arch", ["relu", "topk", "jumprelu"])
def test_encode_decode_match_numpy(arch, data, trained):
    """Codes and reconstructions from the formulas of DESIGN.md, in float64 numpy."""
    sae = libsae.load(trained[arch])
    w = read_safetensors(trained[arch] / "sae_weights.safetensors")
    X = data["X"][:500].astype(np.float64)
    z = (X - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    if arch == "relu":
        f = np.maximum(z, 0)
    elif arch == "jumprelu":
        f = np.where(z > w["threshold"], z, 0) * (z > 0)
    else:
        k = sae.k
        f = np.zeros_like(z)
        top = np.argsort(-z, axis=1)[:, :k]
        rows = np.arange(len(z))[:, None]
        f[rows, top] = np.maximum(z[rows, top], 0)
    got = sae.encode(data["X"][:500], dense=True)
    assert np.allclose(got, f, atol=1e-4), np.abs(got - f).max()
    xhat = f @ w["W_dec"] + w["b_dec"]
    assert np.allclose(sae.decode(scipy.sparse.csr_matrix(got)), xhat, atol=1e-4)
    assert np.allclose(sae.decode(got), xhat, atol=1e-4)
    assert np.allclose(sae.reconstruct(data["X"][:500]), xhat, atol=1e-4)
    # other sparse formats are converted
    assert np.allclose(sae.decode(scipy.sparse.coo_matrix(got)), xhat, atol=1e-4)


@pytest.mark.parametrize("mode,value", [("scale", 2.5), ("clamp", 1.25), ("add", -0.5), ("scale", 1.0)])
def test_steer_equals_cli(mode, value, data, trained, tmp_path):
    sae = libsae.load(trained["topk"])
    codes = sae.encode(data["X"])
    j = int(np.argmax(np.asarray((codes != 0).sum(axis=0)).ravel()))  # the most active latent
    Y = sae.steer(data["X"], latent=j, **{mode: value})
    run_sae("steer", "--sae", trained["topk"], "--data", data["path"], "--latent", j, f"--{mode}={value}",
            "--out", tmp_path / "y.npy")
    assert np.array_equal(Y, np.load(tmp_path / "y.npy"))
    if mode == "scale" and value == 1.0:
        assert np.array_equal(Y, data["X"])
    # x' - x = (f'_j - f_j) W_dec[j], numpy from the codes
    f = codes[:, j].toarray().ravel()
    after = {"scale": value * f, "clamp": np.full_like(f, value), "add": f + value}[mode]
    expect = data["X"] + np.outer(after - f, sae.W_dec[j])
    assert np.allclose(Y, expect, atol=1e-5)


def test_steer_several_edits_and_errors(data, trained):
    sae = libsae.load(trained["topk"])
    X = data["X"][:100]
    Y = sae.steer(X, edits=[(3, "scale", 2.0), (3, "clamp", 5.0), (7, "add", 1.0)])
    f = sae.encode(X, dense=True)
    expect = X + np.outer(5.0 - f[:, 3], sae.W_dec[3]) + np.outer(np.ones(100), sae.W_dec[7])
    assert np.allclose(Y, expect, atol=1e-5)
    with pytest.raises(ValueError, match="outside"):
        sae.steer(X, latent=sae.d_sae, scale=2.0)
    with pytest.raises(ValueError, match="exactly one"):
        sae.steer(X, latent=1, scale=2.0, clamp=1.0)
    with pytest.raises(ValueError, match="finite"):
        sae.steer(X, latent=1, scale=float("nan"))


@pytest.mark.parametrize("arch", ["relu", "topk", "batchtopk"])
def test_evaluate_equals_cli(arch, data, trained):
    sae = libsae.load(trained[arch])
    m = libsae.evaluate(sae, data["X"], features=data["F"])
    cli = last_json(run_sae("eval", "--sae", trained[arch], "--data", data["path"], "--features", data["features"]))
    for key in ("tokens", "l0", "mse", "fvu", "explained_variance", "dead_fraction", "mmcs", "architecture"):
        assert m[key] == cli[key], (key, m[key], cli[key])
    assert set(cli) <= set(m), set(cli) - set(m)  # every key of `sae eval`
    assert m["sae"] == str(trained[arch]) and m["seconds"] >= 0
    assert libsae.evaluate(sae, data["path"], limit=100)["tokens"] == 100


# ---------------------------------------------------------------------------------------------
# Views, files, inputs, errors.

def test_views_are_read_only_saelens_shapes_and_zero_copy(trained):
    sae = libsae.load(trained["jumprelu"])
    w = read_safetensors(trained["jumprelu"] / "sae_weights.safetensors")
    assert sae.W_enc.shape == (sae.d_in, sae.d_sae) and sae.W_dec.shape == (sae.d_sae, sae.d_in)
    for name, arr in weights(sae).items():
        assert np.array_equal(arr, w[name]), name
        assert not arr.flags.writeable
        with pytest.raises(ValueError):
            arr[0] = 1.0
    # Views of the SAE's own memory: every access points at the same bytes (nothing is copied),
    # and W_enc is the transpose view of libsae's d x m column-major matrix.
    assert sae.W_dec.__array_interface__["data"][0] == sae.W_dec.__array_interface__["data"][0]
    assert sae.W_enc.__array_interface__["data"][0] == sae.W_enc.__array_interface__["data"][0]
    assert sae.W_enc.strides == (4, 4 * sae.d_in)
    W = sae.W_dec
    del sae
    assert np.array_equal(W, w["W_dec"])  # the view keeps the SAE alive
    assert libsae.load(trained["relu"]).threshold is None


def test_cfg_and_properties(trained):
    sae = libsae.load(trained["topk"])
    cfg = json.loads((trained["topk"] / "cfg.json").read_text())
    assert sae.cfg["architecture"] == cfg["architecture"] == sae.architecture == "topk"
    assert sae.cfg["d_in"] == sae.d_in and sae.cfg["d_sae"] == sae.d_sae == 64 and sae.k == 4
    assert sae.cfg["metadata"]["training"]["seed"] == SMALL["seed"]
    assert sae.format == "saelens"
    assert "topk" in repr(sae)
    # batchtopk is read back in its inference form
    assert libsae.load(trained["batchtopk"]).architecture == "jumprelu"


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_save_equals_convert(dtype, trained, tmp_path):
    sae = libsae.load(trained["jumprelu"])
    sae.save(tmp_path / "py", dtype=dtype)
    run_sae("convert", "--in", trained["jumprelu"], "--out", tmp_path / "cli", "--dtype", dtype)
    for f in ("cfg.json", "sae_weights.safetensors"):
        assert (tmp_path / "py" / f).read_bytes() == (tmp_path / "cli" / f).read_bytes(), f
    back = libsae.load(tmp_path / "py")
    assert back.architecture == "jumprelu"
    if dtype == "f32":
        assert_same_weights(back, sae)


def test_other_inputs_are_converted(data, trained):
    sae = libsae.load(trained["topk"])
    X = data["X"][:300]
    ref = sae.encode(X, dense=True)
    assert np.array_equal(sae.encode(np.asfortranarray(X), dense=True), ref)
    assert np.array_equal(sae.encode(X.astype(np.float64), dense=True), ref)
    assert np.array_equal(sae.encode(data["X"][:600:2], dense=True), sae.encode(data["X"][:600:2].copy(), dense=True))
    assert np.array_equal(sae.encode(X.tolist(), dense=True), ref)


def test_bad_inputs_raise_clear_errors(data, trained, tmp_path):
    sae = libsae.load(trained["topk"])
    with pytest.raises(ValueError, match="d_in=5 but the SAE has d_in=24"):
        sae.encode(np.zeros((3, 5), np.float32))
    with pytest.raises(ValueError, match="2-D"):
        sae.encode(np.zeros(24, np.float32))
    with pytest.raises(ValueError, match="batch"):
        sae.encode(data["X"], batch=0)
    with pytest.raises(ValueError, match="columns but the SAE has d_sae"):
        sae.decode(scipy.sparse.csr_matrix((2, 10), dtype=np.float32))
    bad = scipy.sparse.csr_matrix((np.ones(1, np.float32), np.array([3]), np.array([0, 1])), shape=(1, 64))
    bad.indices[0] = 99  # corrupt on purpose
    with pytest.raises(ValueError, match="outside"):
        sae.decode(bad)
    with pytest.raises(libsae.FormatError, match="not found"):
        libsae.load(tmp_path / "missing")
    assert issubclass(libsae.FormatError, OSError)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "cfg.json").write_text("{not json")
    (tmp_path / "broken" / "sae_weights.safetensors").write_bytes(b"\x00" * 3)
    with pytest.raises(OSError, match="broken"):
        libsae.load(tmp_path / "broken")
    (tmp_path / "x.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(libsae.FormatError, match="x.npy"):
        sae.encode(tmp_path / "x.npy")
    with pytest.raises(ValueError, match="dtype must be f32, f16 or bf16"):
        sae.save(tmp_path / "s", dtype="f8")


def test_bad_training_options(data, tmp_path):
    X = data["X"]
    with pytest.raises(ValueError, match="k must be in"):
        libsae.train(X, arch="topk", d_sae=16, k=17, steps=5, verbose=False)
    with pytest.raises(ValueError, match="unknown architecture"):
        libsae.train(X, arch="gated", d_sae=16, steps=5, verbose=False)
    with pytest.raises(ValueError, match="--l1 does not apply to --arch topk"):
        libsae.train(X, arch="topk", d_sae=16, k=2, l1=0.5, steps=5, verbose=False)
    with pytest.raises(ValueError, match="d_sae"):
        libsae.train(X, arch="topk", steps=5, verbose=False)
    with pytest.raises(ValueError, match="steps"):
        libsae.train(X, arch="topk", d_sae=16, k=2, steps=0, verbose=False)
    with pytest.raises(ValueError, match="lr"):
        libsae.train(X, arch="topk", d_sae=16, k=2, steps=5, lr=-1, verbose=False)
    with pytest.raises(ValueError, match="integer"):
        libsae.train(X, arch="topk", d_sae=16.5, k=2, steps=5, verbose=False)
    with pytest.raises(ValueError, match="checkpoints need a place"):
        libsae.train(X, arch="topk", d_sae=16, k=2, steps=5, checkpoint_every=1, verbose=False)
    with pytest.raises(TypeError):
        libsae.train(X, arch="topk", d_sae=16, no_such_option=1)
    (tmp_path / "file").write_text("x")
    with pytest.raises(libsae.FormatError, match="not a directory"):
        libsae.train(X, arch="topk", d_sae=16, k=2, steps=5, out=tmp_path / "file", verbose=False)
    Xn = X.copy()
    Xn[123, 4] = np.nan
    with pytest.raises(libsae.NumericalError, match="row 123"):
        libsae.train(Xn, arch="topk", d_sae=16, k=2, steps=50, batch=1024, verbose=False)


def test_large_array_is_read_in_place(tmp_path):
    """A 1 GiB float32 array is encoded without a second copy: peak RSS grows by far less
    than the array (run in a fresh process so the peak is this test's)."""
    script = textwrap.dedent("""
        import resource, numpy as np, libsae, json, sys
        d, n = 256, (1 << 30) // (256 * 4)
        X = np.empty((n, d), np.float32)
        block = np.random.default_rng(0).standard_normal((1 << 16, d), dtype=np.float32)
        for i in range(0, n, 1 << 16):
            X[i:i + (1 << 16)] = block
        small = libsae.train(X[:20000], arch="topk", d_sae=32, k=2, steps=5, batch=1024, verbose=False)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        codes = small.encode(X)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"before_kb": before, "after_kb": after, "nnz": int(codes.nnz), "n": n}))
    """)
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["before_kb"] > 1_000_000  # the array itself is resident
    grown_mb = (r["after_kb"] - r["before_kb"]) / 1024
    codes_mb = (r["n"] * 8 + r["nnz"] * 8) / 2**20  # indptr + indices + values
    assert grown_mb < codes_mb + 150, (grown_mb, codes_mb)  # a copy of X would add 1024 MB


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_input_is_refused(value, data, trained):
    sae = libsae.load(trained["topk"])
    X = data["X"][:5000].copy()
    X[4321, 2] = value
    for call in (lambda: sae.encode(X), lambda: sae.encode(X, dense=True), lambda: sae.reconstruct(X),
                 lambda: sae.steer(X, latent=0, scale=2.0), lambda: libsae.evaluate(sae, X)):
        with pytest.raises(libsae.NumericalError, match="row 4321, dimension 2"):
            call()
