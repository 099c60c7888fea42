"""libsae: sparse autoencoders (SAEs) from numpy, on the libsae C++ library.

    import libsae
    sae = libsae.train(X, arch="topk", d_sae=512, k=4, steps=1500, batch=1024, seed=0)
    codes = sae.encode(X)            # scipy.sparse.csr_matrix [N, d_sae] float32
    X_hat = sae.decode(codes)        # ndarray [N, d_in]
    Y = sae.steer(X, latent=3, scale=2.0)
    print(libsae.evaluate(sae, X))   # the metrics of `sae eval`
    libsae.report(sae, "acts.npy", "report.html", tokens="tokens.tsv")   # the page of `sae report`
    sae.save("my_sae")               # SAELens directory; libsae.load() reads it back

Activations are float32 arrays [N, d_in] (one token per row). A C-contiguous float32 array is
read in place, never copied; any other array (float16, float64, Fortran order, a slice with
strides, a torch CPU tensor through numpy) is converted once to a C-contiguous float32 copy.
A path to a .npy file is memory-mapped (float16 files are converted once). The GIL is released
while libsae computes, so other Python threads keep running.

Errors: ValueError for bad arguments and shapes, FormatError (an OSError) for files, with the
messages of the `sae` command-line tool; NumericalError (an ArithmeticError) when training
diverges or the data holds NaN/Inf.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _core

__all__ = ["Sae", "train", "load", "evaluate", "report", "read_npy", "gemm_backends", "FormatError", "NumericalError",
           "__version__"]

__version__: str = _core.version
FormatError = _core.FormatError
NumericalError = _core.NumericalError


def gemm_backends() -> List[str]:
    """The GEMM backends this build can use for `gemm=`: "eigen", and "blas" / "dnnl" when linked."""
    return list(_core.gemm_backends())

PathLike = Union[str, "os.PathLike[str]"]
ArrayLike = Any  # numpy array, anything np.asarray accepts, or (where noted) a .npy path

#: Tokens per batch when encoding, decoding, steering and evaluating (as `sae encode --batch`).
DEFAULT_BATCH = 4096


def _is_path(x: Any) -> bool:
    return isinstance(x, (str, os.PathLike))


def read_npy(path: PathLike) -> np.ndarray:
    """A [N, d] .npy file as a float32 array: a read-only view of its memory map (float32
    files; nothing is read until used) or a converted copy (float16). Errors name the file."""
    return _core.read_npy(os.fspath(path))


def _tokens(X: ArrayLike, what: str = "X") -> np.ndarray:
    """X as the C-contiguous float32 [N, d] array libsae reads in place (converted once if it
    is not one already; a .npy path is memory-mapped)."""
    if _is_path(X):
        return read_npy(X)
    a = np.asarray(X)
    if a.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array [tokens, d], got shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise ValueError(f"{what} must hold numbers, got dtype {a.dtype}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{what} is empty (shape {a.shape})")
    if a.dtype != np.float32 or not a.flags.c_contiguous:
        a = np.ascontiguousarray(a, dtype=np.float32)
    return a


def _batch(batch: int) -> int:
    b = int(batch)
    if b != batch or b <= 0:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    return b


def _threads(threads: Optional[int]) -> None:
    if threads is None:
        return
    if int(threads) != threads or threads < 0:
        raise ValueError(f"threads must be a non-negative integer (0: all cores), got {threads!r}")
    if threads > 0:
        _core.set_threads(int(threads))


class Sae:
    """A trained or loaded SAE (any architecture libsae reads: standard/ReLU, TopK, JumpReLU;
    BatchTopK-family models are kept in their inference form, JumpReLU with a threshold).

    Attributes (read-only; the arrays are numpy views of the SAE's own memory, SAELens shapes):
      d_in, d_sae, architecture, cfg (the cfg.json dict), format (the file format it was read from)
      W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc [d_sae], b_dec [d_in], threshold [d_sae] or None
    """

    __slots__ = ("_s", "result")

    def __init__(self, core: "_core.Sae", result: Optional[Dict[str, Any]] = None) -> None:
        self._s = core
        #: For an SAE returned by train(): the JSON result `sae train` prints (tokens_per_s, ...).
        self.result = result

    # -- description -----------------------------------------------------------------------
    @property
    def d_in(self) -> int:
        return self._s.d_in

    @property
    def d_sae(self) -> int:
        return self._s.d_sae

    @property
    def d_out(self) -> int:
        """The output's width: d_in for an SAE, the target's width for a transcoder."""
        return self._s.d_out

    @property
    def is_transcoder(self) -> bool:
        """True for a transcoder (trained with target=; SAELens's transcoder forms)."""
        return self._s.is_transcoder

    @property
    def W_skip(self) -> Optional[np.ndarray]:
        """A skip transcoder's W_skip [d_out, d_in] (output += x @ W_skip.T), else None."""
        return self._s.W_skip

    @property
    def architecture(self) -> str:
        """'standard', 'topk' or 'jumprelu' (as cfg.json names it)."""
        return self._s.architecture

    @property
    def k(self) -> Optional[int]:
        """Active latents per token (TopK), else None."""
        return self.cfg.get("k")

    @property
    def cfg(self) -> Dict[str, Any]:
        """The SAELens cfg.json of this SAE, as a dict (a fresh copy on every access)."""
        return self._s.cfg

    @property
    def format(self) -> str:
        """The format it was loaded from: saelens, gemma_scope, gemma_scope_2 or sparsify."""
        return self._s.format

    @property
    def W_enc(self) -> np.ndarray:
        return self._s.W_enc

    @property
    def W_dec(self) -> np.ndarray:
        return self._s.W_dec

    @property
    def b_enc(self) -> np.ndarray:
        return self._s.b_enc

    @property
    def b_dec(self) -> np.ndarray:
        return self._s.b_dec

    @property
    def threshold(self) -> Optional[np.ndarray]:
        return self._s.threshold

    def __repr__(self) -> str:
        k = f", k={self.k}" if self.k is not None else ""
        return f"libsae.Sae(architecture={self.architecture!r}, d_in={self.d_in}, d_sae={self.d_sae}{k})"

    # -- encoding and decoding -------------------------------------------------------------
    def encode(self, X: ArrayLike, dense: bool = False, *, batch: int = DEFAULT_BATCH,
               threads: Optional[int] = None):
        """Codes of the tokens of X [N, d_in] (array or .npy path): a scipy.sparse.csr_matrix
        [N, d_sae] float32 (nonzeros only; the same numbers as `sae encode --out codes.npz`),
        or with dense=True an ndarray [N, d_sae] (as `sae encode --out codes.npy`)."""
        A = _tokens(X)
        _threads(threads)
        if dense:
            return self._s.encode_dense(A, _batch(batch))
        import scipy.sparse

        indptr, indices, values = self._s.encode_sparse(A, _batch(batch))
        return scipy.sparse.csr_matrix((values, indices, indptr), shape=(A.shape[0], self.d_sae), copy=False)

    def decode(self, codes: Any, *, batch: int = DEFAULT_BATCH, threads: Optional[int] = None) -> np.ndarray:
        """Reconstructions W_dec^T f + b_dec [N, d_in] from codes [N, d_sae]: any scipy.sparse
        matrix (CSR used as it is; other formats converted) or a dense array. For a transcoder
        [N, d_out], without a skip transcoder's W_skip x (it needs x: reconstruct(X) adds it)."""
        _threads(threads)
        try:
            import scipy.sparse

            sparse = scipy.sparse.issparse(codes)
        except ImportError:  # pragma: no cover - scipy is a dependency
            sparse = False
        if sparse:
            if codes.shape[1] != self.d_sae:
                raise ValueError(f"codes have {codes.shape[1]} columns but the SAE has d_sae={self.d_sae}")
            csr = codes.tocsr()
            return self._s.decode_sparse(csr.indptr.astype(np.int64, copy=False),
                                         csr.indices.astype(np.int32, copy=False),
                                         csr.data.astype(np.float32, copy=False), _batch(batch))
        return self._s.decode_dense(_tokens(codes, "codes"), _batch(batch))

    def reconstruct(self, X: ArrayLike, *, batch: int = DEFAULT_BATCH, threads: Optional[int] = None) -> np.ndarray:
        """decode(encode(X)) [N, d_in], without materialising the codes; for a transcoder its output
        [N, d_out] (plus W_skip x for a skip transcoder)."""
        A = _tokens(X)
        _threads(threads)
        return self._s.reconstruct(A, _batch(batch))

    def steer(self, X: ArrayLike, latent: Optional[int] = None, *, scale: Optional[float] = None,
              clamp: Optional[float] = None, add: Optional[float] = None,
              edits: Optional[Sequence[Tuple[int, str, float]]] = None, batch: int = DEFAULT_BATCH,
              threads: Optional[int] = None) -> np.ndarray:
        """X with one latent scaled (f_j -> scale * f_j), clamped (f_j -> clamp) or added along
        (x -> x + add * W_dec[j]), keeping the SAE's reconstruction error:
        x' = x + (f'_j - f_j) W_dec[j], the algebra of `sae steer`. Give exactly one of
        scale/clamp/add with latent, or edits=[(latent, "scale"|"clamp"|"add", value), ...]
        applied in order. Returns a new array [N, d_in]."""
        A = _tokens(X)
        _threads(threads)
        modes = [(m, v) for m, v in (("scale", scale), ("clamp", clamp), ("add", add)) if v is not None]
        if edits is not None:
            if latent is not None or modes:
                raise ValueError("give either edits=[...] or latent with one of scale/clamp/add, not both")
            es = [(int(j), str(mode), float(v)) for j, mode, v in edits]
        else:
            if latent is None:
                raise ValueError("steer needs latent=j (and one of scale=, clamp=, add=)")
            if len(modes) != 1:
                raise ValueError("give exactly one of scale=S, clamp=V, add=A")
            es = [(int(latent), modes[0][0], float(modes[0][1]))]
        return self._s.steer(A, es, _batch(batch))

    # -- files -----------------------------------------------------------------------------
    def save(self, path: PathLike, dtype: str = "f32") -> None:
        """Writes an SAELens directory (cfg.json + sae_weights.safetensors) with weights stored
        as dtype f32, f16 or bf16: the bytes `sae convert --dtype` writes for the same SAE
        (`sae train --out` for a trained one). The directory changes as a whole."""
        self._s.save(os.fspath(path), str(dtype))


def load(path: PathLike) -> Sae:
    """Reads an SAE in any format the `sae` tool reads (detected): an SAELens directory, a Gemma
    Scope params.npz / params.safetensors, or a sparsify directory. FormatError names the file
    and the problem."""
    return Sae(_core.load(os.fspath(path)))


def evaluate(sae: Sae, X: ArrayLike, features: Optional[ArrayLike] = None, *, limit: int = 0,
             batch: int = DEFAULT_BATCH, threads: Optional[int] = None,
             target: Optional[ArrayLike] = None) -> Dict[str, Any]:
    """The metrics of `sae eval` on X [N, d_in] (array or .npy path), with its keys: tokens,
    l0, mse, fvu, explained_variance, dead_fraction, architecture, sae (the path it was loaded
    from, or None), data (the .npy path, or "array [N, d]"), seconds, and mmcs when the true
    features [n, d_out] are given. limit > 0 evaluates the first `limit` tokens only.
    A transcoder needs target [N, d_out], what it predicts for X (`sae eval --target`): the
    metrics then compare its output with target."""
    A = _tokens(X)
    F = None if features is None else _tokens(features, "features")
    Y = None if target is None else _tokens(target, "target")
    _threads(threads)
    if int(limit) != limit or limit < 0:
        raise ValueError(f"limit must be a non-negative integer, got {limit!r}")
    m = sae._s.evaluate(A, F, int(limit), _batch(batch), Y)
    m["data"] = os.fspath(X) if _is_path(X) else f"array [{A.shape[0]}, {A.shape[1]}]"
    if target is not None:
        m["target"] = os.fspath(target) if _is_path(target) else f"array [{Y.shape[0]}, {Y.shape[1]}]"
    return m


def _int(name: str, value: Any, minimum: int = 0) -> int:
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def report(sae: Union[Sae, PathLike], data: Union[ArrayLike, PathLike], out: PathLike, *,
           tokens: Optional[PathLike] = None, unembed: Optional[PathLike] = None, vocab: Optional[PathLike] = None,
           features: int = 24, feature_ids: Optional[Sequence[int]] = None, examples: int = 12, intervals: int = 3,
           context_before: int = 12, context_after: int = 4, limit: int = 0, title: Optional[str] = None,
           threads: Optional[int] = None, images: Optional[str] = None, labels: Optional[PathLike] = None,
           order: str = "mass", batch: int = DEFAULT_BATCH) -> Dict[str, Any]:
    """Writes the self-contained HTML report of `sae report` to `out` and returns the result
    dict the CLI prints (out, tokens, features, dead, dense, l0, fvu, train_log, text, contexts,
    logit_effects, logit_features, bytes, seconds) -- the same library call, same page.

    sae: an Sae (its train_log.jsonl is shown when it was loaded from a directory) or a path.
    data: the activations [N, d_in], a .npy path (streamed) or an array (rows = examples).
    tokens: the token table (TSV `row ctx pos token_id doc text`, docs/interpretation.md) of
    language-model activations: each example is shown as its text context (context_before /
    context_after tokens around it), shaded by the feature's activation. unembed ([vocab, d_in]
    .npy) with vocab (one escaped entry per row): each feature's top promoted / suppressed
    tokens, U @ W_dec[j]. images ("HxW") and labels are the CLI's --images and --labels; order
    is mass | frequency | max. limit > 0 analyses the first `limit` rows only. The GIL is
    released while the report is computed. FormatError names a bad or inconsistent file."""
    s = sae if isinstance(sae, Sae) else load(sae)
    a = _core.ReportArgs()
    a.out = os.fspath(out)
    for key, value in (("tokens", tokens), ("unembed", unembed), ("vocab", vocab), ("labels", labels)):
        if value is not None:
            setattr(a, key, os.fspath(value))
    a.images = "" if images is None else str(images)
    a.order = str(order)
    a.title = None if title is None else str(title)
    a.features = _int("features", features)
    a.examples = _int("examples", examples)
    a.intervals = _int("intervals", intervals)
    a.context_before = _int("context_before", context_before)
    a.context_after = _int("context_after", context_after)
    a.limit = _int("limit", limit)
    a.batch = _batch(batch)
    if feature_ids is not None:
        a.feature_ids = [_int("feature_ids[i]", j) for j in feature_ids]
    _threads(threads)
    if _is_path(data):
        return s._s.report(os.fspath(data), os.fspath(data), a)
    A = _tokens(data, "data")
    return s._s.report(A, f"array [{A.shape[0]}, {A.shape[1]}]", a)


def train(X: Union[ArrayLike, PathLike, Iterable[PathLike], None] = None, *,
          arch: Optional[str] = None, d_sae: Optional[int] = None, k: Optional[int] = None,
          steps: Optional[int] = None, batch: Optional[int] = None, lr: Optional[float] = None,
          warmup: Optional[int] = None, decay: Optional[int] = None, seed: Optional[int] = None,
          l1: Optional[float] = None, l1_warmup: Optional[int] = None,
          l0: Optional[float] = None, target_l0: Optional[float] = None, l0_warmup: Optional[int] = None,
          bandwidth: Optional[float] = None, threshold_init: Optional[float] = None,
          ortho: Optional[float] = None, chunks: Optional[int] = None,
          aux_k: Optional[int] = None, aux_coeff: Optional[float] = None, dead_tokens: Optional[int] = None,
          normalize: Optional[str] = None, shuffle_buffer: Optional[int] = None,
          threads: Optional[int] = None, gemm: Optional[str] = None, precision: Optional[str] = None,
          log_every: Optional[int] = None,
          out: Optional[PathLike] = None, checkpoint_every: Optional[int] = None,
          checkpoint_dir: Optional[PathLike] = None, resume: Optional[PathLike] = None,
          callback: Optional[Callable[[Dict[str, Any]], Any]] = None, verbose: bool = True,
          target: Union[ArrayLike, PathLike, Iterable[PathLike], None] = None, skip: bool = False) -> Sae:
    """Trains an SAE, exactly as `sae train` does with the same options (same seed, threads
    and GEMM backend: same weights), and returns it.

    X: a float32 (float16 accepted) array [N, d_in], read in place and shuffled whole each
    epoch; or a .npy path, a list of .npy paths or a directory of them (memory-mapped and
    streamed through a shuffle buffer, as `sae train --data`).

    Every `sae train` flag is a keyword with '_' for '-'; None means the library's default
    (docs/training.md): arch (relu|standard|topk|batchtopk|jumprelu|ortsae, default topk),
    d_sae (required), k (32), steps (2000), batch (1024), lr (2e-4/sqrt(d_sae/16384)),
    warmup, decay, seed (0), l1, l1_warmup, l0, target_l0, l0_warmup, bandwidth,
    threshold_init, ortho, chunks, aux_k, aux_coeff, dead_tokens, normalize
    (none|expected-norm|unit-mean-square), shuffle_buffer, threads (all cores), gemm
    (auto|eigen|blas|dnnl), precision (auto|fp32|bf16: for the TopK family the encoder product,
    with the same weights in all three, bf16 being faster on CPUs with bf16 units; for relu and
    jumprelu bf16 is mixed precision like autocast, different weights, auto = fp32), log_every (100), out (also save an SAELens directory there, with
    train_log.jsonl), checkpoint_every / checkpoint_dir (need out or checkpoint_dir), resume
    (a run directory or checkpoint file; X or the run's data must be the same tokens).

    target (`sae train --target`) trains a transcoder: the activations to predict from X's
    (e.g. an MLP's outputs for its inputs), pairing row by row with X: an array [N, d_out] when
    X is an array, else .npy paths matching X's files. skip=True (`--skip`) adds a learned
    linear term W_skip x (a skip transcoder). Saved as SAELens's transcoder forms.

    Progress lines go to sys.stderr every log_every steps (verbose=False silences them), or,
    with callback=f, f(dict) is called instead with step, steps, tokens, loss, l0, fvu,
    dead_fraction, lr, seconds, tokens_per_s, eta_seconds and each loss term. Ctrl-C stops
    training after the step in progress (writing a checkpoint when checkpointing is on) and
    raises KeyboardInterrupt. The GIL is released between these calls.
    """
    options: Dict[str, Any] = {}
    named = dict(arch=arch, d_sae=d_sae, k=k, steps=steps, batch=batch, lr=lr, warmup=warmup, decay=decay,
                 seed=seed, l1=l1, l1_warmup=l1_warmup, l0=l0, target_l0=target_l0, l0_warmup=l0_warmup,
                 bandwidth=bandwidth, threshold_init=threshold_init, ortho=ortho, chunks=chunks, aux_k=aux_k,
                 aux_coeff=aux_coeff, dead_tokens=dead_tokens, normalize=normalize, shuffle_buffer=shuffle_buffer,
                 threads=threads, gemm=gemm, precision=precision, log_every=log_every,
                 checkpoint_every=checkpoint_every)
    ints = {"d_sae", "k", "steps", "batch", "warmup", "decay", "seed", "l1_warmup", "l0_warmup", "chunks", "aux_k",
            "dead_tokens", "shuffle_buffer", "threads", "log_every", "checkpoint_every"}
    for key, value in named.items():
        if value is None:
            continue
        if key in ints:
            if isinstance(value, bool) or int(value) != value:
                raise ValueError(f"{key} must be an integer, got {value!r}")
            value = int(value)
            if key == "seed" and value < 0:
                raise ValueError(f"seed must be >= 0, got {value}")
            if key in ("aux_k", "warmup", "decay", "l1_warmup", "l0_warmup") and value < 0:
                raise ValueError(f"{key} must be >= 0, got {value}")
        elif key in ("arch", "normalize", "gemm", "precision"):
            value = str(value)
        else:
            value = float(value)
            if not np.isfinite(value):
                raise ValueError(f"{key} must be a finite number, got {value!r}")
        options[key] = value
    if out is not None:
        options["out"] = os.fspath(out)
    if checkpoint_dir is not None:
        options["checkpoint_dir"] = os.fspath(checkpoint_dir)
    if resume is not None:
        options["resume"] = os.fspath(resume)
    if callback is not None and not callable(callback):
        raise ValueError("callback must be callable")

    array = None
    name = "array"
    if X is None:
        if resume is None:
            raise ValueError("train needs X (an array, a .npy path, a list of paths or a directory)")
    elif _is_path(X):
        options["data"] = [os.fspath(X)]
    elif isinstance(X, (list, tuple)) and X and all(_is_path(p) for p in X):
        options["data"] = [os.fspath(p) for p in X]
    else:
        array = _tokens(X)
        name = f"array [{array.shape[0]}, {array.shape[1]}]"
    target_array = None
    target_name = "target"
    if target is not None:
        if _is_path(target):
            options["target"] = [os.fspath(target)]
        elif isinstance(target, (list, tuple)) and target and all(_is_path(p) for p in target):
            options["target"] = [os.fspath(p) for p in target]
        else:
            target_array = _tokens(target, "target")
            target_name = f"array [{target_array.shape[0]}, {target_array.shape[1]}]"
    if not isinstance(skip, bool):
        raise ValueError(f"skip must be a bool, got {skip!r}")
    if skip:
        options["skip"] = True
    if resume is None and d_sae is None:
        raise ValueError("train needs d_sae (the number of latents)")
    core, result = _core.train(options, array, name, callback, bool(verbose), target_array, target_name)
    return Sae(core, result)
