/// @file sae/core/gemm.hpp
/// The encoder product Z = W^T X and the choice of the library that computes it.
///
/// The encoder product is the only O(B d m) work of a TopK-family step (DESIGN.md §3), so its
/// speed is the speed of training. Which GEMM is fastest depends on the CPU: with 2 threads an
/// AVX-512 EPYC runs Eigen's product at ~300 GFLOP/s and OpenBLAS at ~245, an AVX2 EPYC the
/// other way round (~95 vs ~175). So when libsae is built with a BLAS (CMake option
/// SAE_USE_BLAS, on by default, defines SAE_HAVE_BLAS when one is found) CMake measures both
/// when it configures the build tree: cmake/gemm_probe.cpp times the fused encoder's tiles
/// (measure_tiled at d = 768, m = 4096, B = 2048) with each, and the BLAS becomes the compiled-in
/// default (SAE_GEMM_DEFAULT_BLAS=1, default_backend()) only when it is more than 10% faster.
/// The result is cached in the build tree (SAE_GEMM_DEFAULT_MEASURED); the cache option
/// SAE_GEMM_DEFAULT=eigen|blas skips the measurement. Nothing is measured at run time:
/// encoder_backend() is what set_encoder_backend() fixed, else the environment variable
/// SAE_GEMM=eigen|blas, else that default.
///
/// With oneDNN linked (CMake option SAE_USE_DNNL, Debian's libdnnl-dev; defines SAE_HAVE_DNNL)
/// it is a third backend, measured by the same probe, and the only one with a bfloat16
/// product (product_tn_bf16: bf16 operands, fp32 accumulation, on AVX512-BF16 or AMX units
/// when the CPU has them, bf16_hardware()). Without them product_tn_bf16 widens the operands to
/// fp32 and multiplies those: the same products (a bf16 x bf16 product is exact in fp32) and
/// the same error bound, at fp32 speed; tests use it to run the bf16 paths on every machine.
///
/// Results differ between the backends in the last bits (different summation orders). The
/// TopK family's codes do not depend on it (their values are recomputed in one canonical
/// order, canonical_dot.hpp); the dense variants' and AuxK's do, so a run that must be
/// bit-reproducible across processes (a resumed checkpoint) pins the backend the first run
/// used (the `sae train` checkpoint records it).
#pragma once

#include <algorithm>
#include <bit>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include <Eigen/Core>

#ifdef SAE_HAVE_DNNL
#include <oneapi/dnnl/dnnl.hpp>
#endif

#include "../detail/omp.hpp"
#include "parameters.hpp"

#ifdef SAE_HAVE_BLAS
extern "C" {
// Fortran BLAS (every BLAS exports these; no header needed). Column-major.
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc);
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc);
#ifdef SAE_BLAS_IS_OPENBLAS
void openblas_set_num_threads(int);
int openblas_get_num_threads(void);
#endif
}
#endif

namespace sae::gemm {

/// Which library computes a dense product.
enum class Backend { Eigen, Blas, Dnnl };

inline constexpr bool blas_linked() {
#ifdef SAE_HAVE_BLAS
  return true;
#else
  return false;
#endif
}

inline constexpr bool dnnl_linked() {
#ifdef SAE_HAVE_DNNL
  return true;
#else
  return false;
#endif
}

inline const char* backend_name(Backend b) {
  return b == Backend::Blas ? "blas" : b == Backend::Dnnl ? "dnnl" : "eigen";
}

/// Throws std::invalid_argument when @p b is not linked into this build.
inline void require_linked(Backend b) {
  if (b == Backend::Blas && !blas_linked())
    throw std::invalid_argument("GEMM backend 'blas': libsae was built without a BLAS");
  if (b == Backend::Dnnl && !dnnl_linked())
    throw std::invalid_argument("GEMM backend 'dnnl': libsae was built without oneDNN (Debian: libdnnl-dev)");
}

/// "eigen", "blas" or "dnnl" (the latter two only when linked).
inline Backend parse_backend(std::string_view s) {
  Backend b;
  if (s == "eigen")
    b = Backend::Eigen;
  else if (s == "blas")
    b = Backend::Blas;
  else if (s == "dnnl" || s == "onednn")
    b = Backend::Dnnl;
  else
    throw std::invalid_argument("unknown GEMM backend '" + std::string(s) + "' (eigen, blas, dnnl)");
  require_linked(b);
  return b;
}

/// True when oneDNN is linked and the CPU has bfloat16 dot-product units (AVX512-BF16 or
/// AMX-BF16, as oneDNN detects them, OS support included): product_tn_bf16 then runs at bf16
/// speed. Never decides a result, only a speed.
inline bool bf16_hardware() {
#ifdef SAE_HAVE_DNNL
  static const bool has = [] {
    const auto isa = static_cast<unsigned>(dnnl::get_effective_cpu_isa());
    constexpr auto bf16 = static_cast<unsigned>(dnnl_cpu_isa_avx512_core_bf16);
    return (isa & bf16) == bf16;
  }();
  return has;
#else
  return false;
#endif
}

#ifdef SAE_HAVE_DNNL
namespace detail {
/// oneDNN matmul primitives of one thread, one per shape (a few per run: the full tile and the
/// partial ones at the edges), each with its memory objects and its own scratchpad, so threads
/// never share anything (the fused encoder calls products from inside its parallel region,
/// where oneDNN's OpenMP runtime runs them on the calling thread).
struct DnnlProduct {
  Index M, N, K, a_i, a_k, b_k, b_j, ldc;
  bool bf16, accumulate;
  dnnl::matmul prim;
  dnnl::memory src, wei, dst, scratch;
};
inline dnnl::engine& dnnl_engine() {
  static dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}
struct DnnlThread {
  dnnl::stream stream{dnnl_engine()};
  std::vector<DnnlProduct> products;
};
inline DnnlThread& dnnl_thread() {
  thread_local DnnlThread t;
  return t;
}
/// C (M x N, column-major, ldc) = A B (or += with @p accumulate), A (M x K) with element (i, k)
/// at A[i a_i + k a_k], B (K x N) with (k, j) at B[k b_k + j b_j]. As oneDNN sees it, row-major:
/// dst[N, M] = src[N, K] x weights[K, M] with src = B^T (strides {b_j, b_k}), weights = A^T
/// (strides {a_k, a_i}), dst = C^T (strides {ldc, 1}); += is a sum post-op.
inline DnnlProduct& dnnl_product(Index M, Index N, Index K, Index a_i, Index a_k, Index b_k, Index b_j, Index ldc,
                                 bool bf16, bool accumulate) {
  auto& t = dnnl_thread();
  for (auto& p : t.products)
    if (p.M == M && p.N == N && p.K == K && p.a_i == a_i && p.a_k == a_k && p.b_k == b_k && p.b_j == b_j &&
        p.ldc == ldc && p.bf16 == bf16 && p.accumulate == accumulate)
      return p;
  using dt = dnnl::memory::data_type;
  const dt in = bf16 ? dt::bf16 : dt::f32;
  const dnnl::memory::desc src({N, K}, in, dnnl::memory::dims{b_j, b_k});
  const dnnl::memory::desc wei({K, M}, in, dnnl::memory::dims{a_k, a_i});
  const dnnl::memory::desc dst({N, M}, dt::f32, dnnl::memory::dims{ldc, 1});
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  attr.set_fpmath_mode(dnnl::fpmath_mode::strict);  // f32 stays f32 (no implicit down-conversion)
  if (accumulate) {
    dnnl::post_ops ops;
    ops.append_sum(1.0f);
    attr.set_post_ops(ops);
  }
  const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(src, wei, dst), attr, dnnl_engine());
  auto& eng = dnnl_engine();
  t.products.push_back({M, N, K, a_i, a_k, b_k, b_j, ldc, bf16, accumulate, dnnl::matmul(pd),
                        dnnl::memory(src, eng, DNNL_MEMORY_NONE), dnnl::memory(wei, eng, DNNL_MEMORY_NONE),
                        dnnl::memory(dst, eng, DNNL_MEMORY_NONE), dnnl::memory(pd.scratchpad_desc(), eng)});
  return t.products.back();
}
inline void dnnl_run(DnnlProduct& p, const void* A, const void* B, float* C) {
  p.src.set_data_handle(const_cast<void*>(B));
  p.wei.set_data_handle(const_cast<void*>(A));
  p.dst.set_data_handle(C);
  auto& t = dnnl_thread();
  p.prim.execute(
      t.stream,
      {{DNNL_ARG_SRC, p.src}, {DNNL_ARG_WEIGHTS, p.wei}, {DNNL_ARG_DST, p.dst}, {DNNL_ARG_SCRATCHPAD, p.scratch}});
  t.stream.wait();
}
}  // namespace detail
#endif

/// Threads a BLAS call made outside a parallel region may use; inside one it must use 1.
inline void set_blas_threads([[maybe_unused]] int n) {
#if defined(SAE_HAVE_BLAS) && defined(SAE_BLAS_IS_OPENBLAS)
  if (n > 0 && openblas_get_num_threads() != n) openblas_set_num_threads(n);
#endif
}

/// Z = W^T X.  W: d x m (leading dimension ldw), X: d x n (ldx), Z: m x n (ldz), all column
/// major. Called inside an OpenMP parallel region it runs on the calling thread only (Eigen
/// and oneDNN do not nest; for a BLAS the caller sets set_blas_threads(1) before the region).
/// oneDNN computes float only; double goes to the BLAS or Eigen.
template <class Scalar>
void product_tn(Backend backend, Index d, Index m, Index n, const Scalar* W, Index ldw, const Scalar* X, Index ldx,
                Scalar* Z, Index ldz) {
  if (m == 0 || n == 0) return;
#ifdef SAE_HAVE_DNNL
  if constexpr (std::is_same_v<Scalar, float>) {
    if (backend == Backend::Dnnl) {
      detail::dnnl_run(detail::dnnl_product(m, n, d, ldw, 1, 1, ldx, ldz, false, false), W, X, Z);
      return;
    }
  }
#endif
#ifdef SAE_HAVE_BLAS
  if constexpr (std::is_same_v<Scalar, float> || std::is_same_v<Scalar, double>) {
    if (backend == Backend::Blas) {
      const int mi = static_cast<int>(m), ni = static_cast<int>(n), ki = static_cast<int>(d);
      const int lda = static_cast<int>(ldw), ldb = static_cast<int>(ldx), ldc = static_cast<int>(ldz);
      const Scalar one = 1, zero = 0;
      if constexpr (std::is_same_v<Scalar, float>)
        sgemm_("T", "N", &mi, &ni, &ki, &one, W, &lda, X, &ldb, &zero, Z, &ldc);
      else
        dgemm_("T", "N", &mi, &ni, &ki, &one, W, &lda, X, &ldb, &zero, Z, &ldc);
      return;
    }
  }
#endif
  (void)backend;
  using Stride = Eigen::OuterStride<>;
  Eigen::Map<const Mat<Scalar>, 0, Stride> Wm(W, d, m, Stride(ldw));
  Eigen::Map<const Mat<Scalar>, 0, Stride> Xm(X, d, n, Stride(ldx));
  Eigen::Map<Mat<Scalar>, 0, Stride> Zm(Z, m, n, Stride(ldz));
  Zm.noalias() = Wm.transpose() * Xm;
}

/// Z = Ŵ^T X̂ for bfloat16 operands (bit patterns, layout as product_tn's), fp32 accumulation:
/// oneDNN's bf16 matmul when @p backend is Dnnl and bf16_hardware(); otherwise each operand is
/// widened to fp32 (exact) into @p wide_w (d x m) and @p wide_x (d x n), grown as needed, and
/// multiplied with product_tn<float> on @p backend (the software product the tests use to run
/// the bf16 paths on every machine). Either way every product ŵ_i x̂_i is exact and only the
/// fp32 summation rounds, which is what fused_encoder.hpp's error bound assumes.
inline void product_tn_bf16(Backend backend, Index d, Index m, Index n, const std::uint16_t* W, Index ldw,
                            const std::uint16_t* X, Index ldx, float* Z, Index ldz, std::vector<float>& wide_w,
                            std::vector<float>& wide_x) {
  if (m == 0 || n == 0) return;
#ifdef SAE_HAVE_DNNL
  if (backend == Backend::Dnnl && bf16_hardware()) {
    detail::dnnl_run(detail::dnnl_product(m, n, d, ldw, 1, 1, ldx, ldz, true, false), W, X, Z);
    return;
  }
#endif
  auto widen = [d](const std::uint16_t* src, Index ld, Index cols, std::vector<float>& dst) {
    if (static_cast<Index>(dst.size()) < d * cols) dst.resize(static_cast<std::size_t>(d * cols));
    for (Index j = 0; j < cols; ++j)
      for (Index i = 0; i < d; ++i)
        dst[static_cast<std::size_t>(j * d + i)] = std::bit_cast<float>(std::uint32_t(src[j * ld + i]) << 16);
  };
  widen(W, ldw, m, wide_w);
  widen(X, ldx, n, wide_x);
  product_tn<float>(backend, d, m, n, wide_w.data(), d, wide_x.data(), d, Z, ldz);
}

/// C (M x N, column-major, ldc) = A B, or C += A B with @p accumulate, for bfloat16 operands
/// with any strides: element (i, k) of A at A[i a_i + k a_k], (k, j) of B at B[k b_k + j b_j];
/// fp32 accumulation. The mixed-precision products of the dense variants (`--precision
/// bf16`). oneDNN's bf16 matmul when @p backend is Dnnl and bf16_hardware(); otherwise both
/// operands are widened to fp32 (exact) into @p wide_a / @p wide_b and multiplied by Eigen.
inline void product_bf16(Backend backend, Index M, Index N, Index K, const std::uint16_t* A, Index a_i, Index a_k,
                         const std::uint16_t* B, Index b_k, Index b_j, float* C, Index ldc, bool accumulate,
                         std::vector<float>& wide_a, std::vector<float>& wide_b) {
  if (M == 0 || N == 0) return;
#ifdef SAE_HAVE_DNNL
  if (backend == Backend::Dnnl && bf16_hardware()) {
    detail::dnnl_run(detail::dnnl_product(M, N, K, a_i, a_k, b_k, b_j, ldc, true, accumulate), A, B, C);
    return;
  }
#endif
  (void)backend;
  auto widen = [](const std::uint16_t* src, Index rows, Index cols, Index sr, Index sc, std::vector<float>& dst) {
    if (static_cast<Index>(dst.size()) < rows * cols) dst.resize(static_cast<std::size_t>(rows * cols));
    for (Index c = 0; c < cols; ++c)
      for (Index r = 0; r < rows; ++r)
        dst[static_cast<std::size_t>(c * rows + r)] = std::bit_cast<float>(std::uint32_t(src[r * sr + c * sc]) << 16);
  };
  widen(A, M, K, a_i, a_k, wide_a);
  widen(B, K, N, b_k, b_j, wide_b);
  using Stride = Eigen::OuterStride<>;
  Eigen::Map<const Mat<float>> Am(wide_a.data(), M, K), Bm(wide_b.data(), K, N);
  Eigen::Map<Mat<float>, 0, Stride> Cm(C, M, N, Stride(ldc));
  if (accumulate)
    Cm.noalias() += Am * Bm;
  else
    Cm.noalias() = Am * Bm;
}

/// Rounds n floats to bfloat16 (to nearest, ties to even), in parallel when called outside a
/// parallel region with enough of them (sae::detail::min_parallel_flops).
inline void to_bf16(const float* src, std::uint16_t* dst, Index n) {
  SAE_OMP(parallel for schedule(static) if (sae::detail::parallel_worth(sae::detail::streamed(n))))
  for (Index i = 0; i < n; ++i) {
    std::uint32_t bits = std::bit_cast<std::uint32_t>(src[i]);
    if ((bits & 0x7FFFFFFFu) > 0x7F800000u) {
      dst[i] = static_cast<std::uint16_t>((bits >> 16) | 0x0040u);  // NaN stays NaN
      continue;
    }
    bits += 0x7FFFu + ((bits >> 16) & 1u);
    dst[i] = static_cast<std::uint16_t>(bits >> 16);
  }
}

/// Tiles of the fused encoder (fused_encoder.hpp): blocks of tokens times chunks of latents.
/// A thread computes one chunk x block tile of pre-activations with a single-threaded product
/// and selects from it while it is in cache. 512 tokens x 1024 latents (2 MiB of floats) was the
/// fastest of the shapes tried at d = 768, m = 16384 on an AVX-512 EPYC (one thread, B = 1024:
/// 160 ms with the selection vs 177 ms for the plain 16384 x 1024 x 768 product alone; 256 x
/// 2048: 172 ms, 128 x 4096: 189 ms): wide token blocks repack W_enc's chunk less often.
struct Tiling {
  Index block_tokens = 512;
  Index chunk_latents = 1024;
};

namespace detail {
inline double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
}  // namespace detail

namespace detail {
/// GFLOP/s of 2 d m n flops per round, @p reps timed rounds after one warm-up round.
template <class Round>
double rate(Index d, Index m, Index n, int reps, Round&& round) {
  round();  // warm-up
  const double t0 = now_seconds();
  for (int r = 0; r < reps; ++r) round();
  const double seconds = now_seconds() - t0;
  return 2.0 * static_cast<double>(d) * static_cast<double>(m) * static_cast<double>(n) * reps /
         std::max(seconds, 1e-9) * 1e-9;
}

/// The fused encoder's tile loop without its selection: token blocks spread over the threads,
/// each thread calling tile(j0, w, t0, b, Z) for every latent chunk into its own mc x bt tile.
template <class Tile>
double rate_tiled(Index d, Index m, Index n, const Tiling& tiling, int reps, Tile&& tile) {
  const Index bt = std::min(tiling.block_tokens, n), mc = std::min(tiling.chunk_latents, m);
  const Index blocks = (n + bt - 1) / bt;
  const sae::detail::SerialBelow serial(sae::detail::product_flops(m, n, d));  // as fused_top_c
  const int threads = static_cast<int>(std::min<Index>(num_threads(), blocks));
  return rate(d, m, n, reps, [&] {
    SAE_OMP(parallel num_threads(threads)) {
      std::vector<float> Z(static_cast<std::size_t>(mc * bt));
      SAE_OMP(for schedule(dynamic, 1))
      for (Index blk = 0; blk < blocks; ++blk)
        for (Index j0 = 0; j0 < m; j0 += mc) tile(j0, std::min(mc, m - j0), blk * bt, std::min(bt, n - blk * bt), Z);
    }
  });
}
}  // namespace detail

/// Throughput of @p backend computing the whole m x n product the way the fused encoder does,
/// without its selection: token blocks spread over the threads, each thread multiplying every
/// latent chunk of W (d x m) with its block of X (d x n) into its own tile. The bound the
/// fused encoder can reach on this shape. Random float operands, allocates W, X and the tiles.
/// Used by the configure-time probe (cmake/gemm_probe.cpp) and `sae bench`.
inline double measure_tiled(Backend backend, Index d, Index m, Index n, const Tiling& tiling, int reps = 2) {
  const Mat<float> W = Mat<float>::Random(d, m), X = Mat<float>::Random(d, n);
  const Index mc = std::min(tiling.chunk_latents, m);  // the tiles' leading dimension
  if (backend == Backend::Blas) set_blas_threads(1);
  return detail::rate_tiled(d, m, n, tiling, reps, [&](Index j0, Index w, Index t0, Index b, std::vector<float>& Z) {
    product_tn<float>(backend, d, w, b, W.data() + j0 * d, d, X.data() + t0 * d, d, Z.data(), mc);
  });
}

/// measure_tiled for oneDNN's bf16 product (bf16 operands, fp32 tiles); 0 without bf16 units.
inline double measure_tiled_bf16(Index d, Index m, Index n, const Tiling& tiling, int reps = 2) {
  if (!bf16_hardware()) return 0;
  const std::vector<std::uint16_t> W(static_cast<std::size_t>(d * m), 0x3f80),
      X(static_cast<std::size_t>(d * n), 0x3f80);
  const Index mc = std::min(tiling.chunk_latents, m);
  return detail::rate_tiled(d, m, n, tiling, reps, [&](Index j0, Index w, Index t0, Index b, std::vector<float>& Z) {
    thread_local std::vector<float> ww, wx;  // unused: the oneDNN path does not widen
    product_tn_bf16(Backend::Dnnl, d, w, b, W.data() + j0 * d, d, X.data() + t0 * d, d, Z.data(), mc, ww, wx);
  });
}

/// Throughput of @p backend computing the whole m x n product at once with all threads
/// (`sae bench` reports it beside measure_tiled).
inline double measure_whole(Backend backend, Index d, Index m, Index n, int reps = 2) {
  const Mat<float> W = Mat<float>::Random(d, m), X = Mat<float>::Random(d, n);
  Mat<float> Z(m, n);
  if (backend == Backend::Blas) set_blas_threads(num_threads());
  return detail::rate(d, m, n, reps,
                      [&] { product_tn<float>(backend, d, m, n, W.data(), d, X.data(), d, Z.data(), m); });
}

/// measure_whole for oneDNN's bf16 product; 0 without bf16 units.
inline double measure_whole_bf16(Index d, Index m, Index n, int reps = 2) {
  if (!bf16_hardware()) return 0;
  const std::vector<std::uint16_t> W(static_cast<std::size_t>(d * m), 0x3f80),
      X(static_cast<std::size_t>(d * n), 0x3f80);
  std::vector<float> Z(static_cast<std::size_t>(m * n)), ww, wx;
  return detail::rate(d, m, n, reps,
                      [&] { product_tn_bf16(Backend::Dnnl, d, m, n, W.data(), d, X.data(), d, Z.data(), m, ww, wx); });
}

/// The backends this build can use.
inline std::vector<Backend> available_backends() {
  std::vector<Backend> v{Backend::Eigen};
  if (blas_linked()) v.push_back(Backend::Blas);
  if (dnnl_linked()) v.push_back(Backend::Dnnl);
  return v;
}

namespace detail {
struct Choice {
  std::mutex mutex;
  std::optional<Backend> backend;  ///< fixed by set_encoder_backend, SAE_GEMM or the default
};
inline Choice& choice() {
  static Choice c;
  return c;
}
}  // namespace detail

/// Fixes the encoder backend for the rest of the process (e.g. the one a checkpoint was
/// trained with). Throws std::invalid_argument for a backend that is not linked.
inline void set_encoder_backend(Backend b) {
  require_linked(b);
  auto& c = detail::choice();
  std::lock_guard lock(c.mutex);
  c.backend = b;
}

/// The backend this build defaults to: the fastest as measured when the build was configured
/// (CMake's GEMM probe defines SAE_GEMM_DEFAULT_BLAS=1 or SAE_GEMM_DEFAULT_DNNL=1 when that
/// library was more than 10% faster than Eigen and the faster of the two, or
/// SAE_GEMM_DEFAULT=blas|dnnl does), Eigen otherwise.
inline constexpr Backend default_backend() {
#if defined(SAE_HAVE_DNNL) && defined(SAE_GEMM_DEFAULT_DNNL) && SAE_GEMM_DEFAULT_DNNL
  return Backend::Dnnl;
#elif defined(SAE_HAVE_BLAS) && defined(SAE_GEMM_DEFAULT_BLAS) && SAE_GEMM_DEFAULT_BLAS
  return Backend::Blas;
#else
  return Backend::Eigen;
#endif
}

/// The backend of the encoder product: what set_encoder_backend() fixed, else SAE_GEMM=eigen|blas|dnnl
/// from the environment, else default_backend(). The same for every run of one build (no
/// measurement at run time), so runs with the same seed give the same weights.
inline Backend encoder_backend() {
  auto& c = detail::choice();
  std::lock_guard lock(c.mutex);
  if (c.backend) return *c.backend;
  if (const char* env = std::getenv("SAE_GEMM"); env && *env && std::string_view(env) != "auto")
    c.backend = parse_backend(env);
  else
    c.backend = default_backend();
  return *c.backend;
}

}  // namespace sae::gemm
