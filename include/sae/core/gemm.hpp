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
/// Results differ between the two backends in the last bits (different summation orders), so a
/// run that must be bit-reproducible across processes (a resumed checkpoint) pins the backend
/// the first run used (the `sae train` checkpoint records it).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include <Eigen/Core>

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
enum class Backend { Eigen, Blas };

inline constexpr bool blas_linked() {
#ifdef SAE_HAVE_BLAS
  return true;
#else
  return false;
#endif
}

inline const char* backend_name(Backend b) { return b == Backend::Blas ? "blas" : "eigen"; }

/// "eigen" or "blas" (the latter only when a BLAS is linked).
inline Backend parse_backend(std::string_view s) {
  if (s == "eigen") return Backend::Eigen;
  if (s == "blas") {
    if (!blas_linked()) throw std::invalid_argument("GEMM backend 'blas': libsae was built without a BLAS");
    return Backend::Blas;
  }
  throw std::invalid_argument("unknown GEMM backend '" + std::string(s) + "' (eigen, blas)");
}

/// Threads a BLAS call made outside a parallel region may use; inside one it must use 1.
inline void set_blas_threads([[maybe_unused]] int n) {
#if defined(SAE_HAVE_BLAS) && defined(SAE_BLAS_IS_OPENBLAS)
  if (n > 0 && openblas_get_num_threads() != n) openblas_set_num_threads(n);
#endif
}

/// Z = W^T X.  W: d x m (leading dimension ldw), X: d x n (ldx), Z: m x n (ldz), all column
/// major. Called inside an OpenMP parallel region it runs on the calling thread only (Eigen
/// does not nest; for a BLAS the caller sets set_blas_threads(1) before the region).
template <class Scalar>
void product_tn(Backend backend, Index d, Index m, Index n, const Scalar* W, Index ldw, const Scalar* X, Index ldx,
                Scalar* Z, Index ldz) {
  if (m == 0 || n == 0) return;
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

/// Throughput of @p backend computing the whole m x n product the way the fused encoder does,
/// without its selection: token blocks spread over the threads, each thread multiplying every
/// latent chunk of W (d x m) with its block of X (d x n) into its own tile. The bound the
/// fused encoder can reach on this shape. Random operands, allocates W, X and the tiles.
/// Used by the configure-time probe (cmake/gemm_probe.cpp) and `sae bench`.
template <class Scalar>
double measure_tiled(Backend backend, Index d, Index m, Index n, const Tiling& tiling, int reps = 2) {
  const Mat<Scalar> W = Mat<Scalar>::Random(d, m), X = Mat<Scalar>::Random(d, n);
  const Index bt = std::min(tiling.block_tokens, n), mc = std::min(tiling.chunk_latents, m);
  const Index blocks = (n + bt - 1) / bt;
  const int threads = static_cast<int>(std::min<Index>(num_threads(), blocks));
  if (backend == Backend::Blas) set_blas_threads(1);
  double seconds = 0;
  for (int r = 0; r <= reps; ++r) {  // round 0 warms up
    const double t0 = detail::now_seconds();
    SAE_OMP(parallel num_threads(threads)) {
      Mat<Scalar> Z(mc, bt);
      SAE_OMP(for schedule(dynamic, 1))
      for (Index blk = 0; blk < blocks; ++blk) {
        const Index t0b = blk * bt, b = std::min(bt, n - t0b);
        for (Index j0 = 0; j0 < m; j0 += mc)
          product_tn(backend, d, std::min(mc, m - j0), b, W.data() + j0 * d, d, X.data() + t0b * d, d, Z.data(), mc);
      }
    }
    if (r > 0) seconds += detail::now_seconds() - t0;
  }
  return 2.0 * static_cast<double>(d) * static_cast<double>(m) * static_cast<double>(n) * reps /
         std::max(seconds, 1e-9) * 1e-9;
}

/// Throughput of @p backend computing the whole m x n product at once with all threads
/// (`sae bench` reports it beside measure_tiled).
template <class Scalar>
double measure_whole(Backend backend, Index d, Index m, Index n, int reps = 2) {
  const Mat<Scalar> W = Mat<Scalar>::Random(d, m), X = Mat<Scalar>::Random(d, n);
  Mat<Scalar> Z(m, n);
  if (backend == Backend::Blas) set_blas_threads(num_threads());
  product_tn(backend, d, m, n, W.data(), d, X.data(), d, Z.data(), m);  // warm-up
  const double t0 = detail::now_seconds();
  for (int r = 0; r < reps; ++r) product_tn(backend, d, m, n, W.data(), d, X.data(), d, Z.data(), m);
  const double seconds = detail::now_seconds() - t0;
  return 2.0 * static_cast<double>(d) * static_cast<double>(m) * static_cast<double>(n) * reps /
         std::max(seconds, 1e-9) * 1e-9;
}

/// The backends this build can use.
inline std::vector<Backend> available_backends() {
  if (blas_linked()) return {Backend::Eigen, Backend::Blas};
  return {Backend::Eigen};
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
/// trained with). Throws std::invalid_argument for Blas when no BLAS is linked.
inline void set_encoder_backend(Backend b) {
  if (b == Backend::Blas && !blas_linked())
    throw std::invalid_argument("GEMM backend 'blas': libsae was built without a BLAS");
  auto& c = detail::choice();
  std::lock_guard lock(c.mutex);
  c.backend = b;
}

/// The backend this build defaults to: the faster of the two as measured when the build was
/// configured (CMake's GEMM probe defines SAE_GEMM_DEFAULT_BLAS=1 when the BLAS was more than
/// 10% faster, or SAE_GEMM_DEFAULT=blas does), Eigen without a BLAS.
inline constexpr Backend default_backend() {
#if defined(SAE_HAVE_BLAS) && defined(SAE_GEMM_DEFAULT_BLAS) && SAE_GEMM_DEFAULT_BLAS
  return Backend::Blas;
#else
  return Backend::Eigen;
#endif
}

/// The backend of the encoder product: what set_encoder_backend() fixed, else SAE_GEMM=eigen|blas
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
