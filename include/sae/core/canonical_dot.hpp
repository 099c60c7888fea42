/// @file sae/core/canonical_dot.hpp
/// The one summation order that defines a TopK-family pre-activation, on every CPU.
///
/// A GEMM's result depends on its summation order (Eigen, OpenBLAS and oneDNN differ in the
/// last bits, and so does one library between AVX2 and AVX-512). The TopK family's codes are
/// therefore not taken from the GEMM: the encoder product only proposes candidates, with a
/// rigorous error bound (fused_encoder.hpp), and every candidate's value is recomputed here:
///
///     s = sum_i w_i x_i   with 16 partial sums:  acc[i mod 16] = fma(w_i, x_i, acc[i mod 16])
///                         in increasing i (lanes past d add fma(0, 0, .)), then the tree
///                         acc[l] += acc[l + 8], += acc[l + 4], += acc[l + 2], += acc[l + 1]
///     z = fl(s + c_j)
///
/// AVX-512 (one 16-lane register), AVX2 (two 8-lane registers) and the scalar loop perform
/// the same IEEE operations in the same order (fused multiply-adds, round to nearest), so z
/// is bit-identical on every machine, whichever GEMM or precision proposed the candidate.
/// Error: |s - sum_i w_i x_i| <= gamma_d sum_i |w_i x_i|, gamma_d = d u / (1 - d u), u the
/// unit roundoff of Scalar (Higham, Accuracy and Stability of Numerical Algorithms, §3.1).
#pragma once

#include <cmath>
#include <type_traits>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "parameters.hpp"

namespace sae::kernels {

/// Number of partial sums of canonical_dot (fixed: it defines the result).
inline constexpr Index kCanonicalLanes = 16;

namespace detail {
/// acc[l] += acc[l + 8], then + 4, + 2, + 1: the fixed reduction tree.
template <class Scalar>
Scalar reduce_lanes(Scalar* acc) {
  for (Index h = kCanonicalLanes / 2; h >= 1; h /= 2)
    for (Index l = 0; l < h; ++l) acc[l] = acc[l] + acc[l + h];
  return acc[0];
}
}  // namespace detail

/// sum_i w[i] * x[i] for i < d, in the canonical order above.
template <class Scalar>
Scalar canonical_dot(const Scalar* w, const Scalar* x, Index d) {
  alignas(64) Scalar acc[kCanonicalLanes] = {};
  const Index full = d - d % kCanonicalLanes;
  if constexpr (std::is_same_v<Scalar, float>) {
#if defined(__AVX512F__)
    __m512 a = _mm512_setzero_ps();
    for (Index i = 0; i < full; i += 16) a = _mm512_fmadd_ps(_mm512_loadu_ps(w + i), _mm512_loadu_ps(x + i), a);
    if (full < d) {
      const __mmask16 k = static_cast<__mmask16>((1u << (d - full)) - 1u);
      a = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, w + full), _mm512_maskz_loadu_ps(k, x + full), a);
    }
    _mm512_store_ps(acc, a);
    return detail::reduce_lanes(acc);
#elif defined(__AVX2__) && defined(__FMA__)
    __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
    for (Index i = 0; i < full; i += 16) {
      lo = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), lo);
      hi = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 8), _mm256_loadu_ps(x + i + 8), hi);
    }
    _mm256_store_ps(acc, lo);
    _mm256_store_ps(acc + 8, hi);
    for (Index i = full; i < d; ++i) acc[i - full] = std::fma(w[i], x[i], acc[i - full]);
    for (Index l = d - full; l < kCanonicalLanes && full < d; ++l) acc[l] = std::fma(Scalar(0), Scalar(0), acc[l]);
    return detail::reduce_lanes(acc);
#endif
  }
  for (Index i = 0; i < full; i += kCanonicalLanes)
    for (Index l = 0; l < kCanonicalLanes; ++l) acc[l] = std::fma(w[i + l], x[i + l], acc[l]);
  if (full < d)
    for (Index l = 0; l < kCanonicalLanes; ++l)
      acc[l] = full + l < d ? std::fma(w[full + l], x[full + l], acc[l]) : std::fma(Scalar(0), Scalar(0), acc[l]);
  return detail::reduce_lanes(acc);
}

/// The canonical pre-activation of latent j for input x: fl(canonical_dot(W_enc[:, j], x) + c_j).
template <class Scalar>
Scalar canonical_score(const Mat<Scalar>& W_enc, const Scalar* x, Index j, Scalar c_j) {
  return canonical_dot(W_enc.data() + j * W_enc.rows(), x, W_enc.rows()) + c_j;
}

}  // namespace sae::kernels
