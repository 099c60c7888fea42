/// @file sae/core/score_bounds.hpp
/// A rigorous bound on how far a pre-activation computed by the encoder GEMM, in fp32 or from
/// bfloat16-rounded operands, can lie from its canonical value (canonical_dot.hpp), per token
/// and latent, from norms alone. The fused encoder (fused_encoder.hpp) rescores a latent only
/// when its upper bound could enter the token's top-c, which makes its selection exact.
///
/// Notation, for latent j and token t: w = W_enc[:, j], x = x_t (d values), ŵ and x̂ the
/// operands the GEMM saw (w itself in fp32, its bf16 rounding in bf16), r_w = w - ŵ and
/// r_x = x - x̂ (exact in fp32: a rounding residual is representable), and
///     a = |ŵ|, b = |r_w|, α = |x̂|, β = |r_x|     (2-norms),
/// u the unit roundoff of the accumulation type, γ = d u / (1 - d u).
/// The GEMM gives ŝ = fl(ŵ·x̂) with |ŝ - ŵ·x̂| <= γ aα (any summation order, exact products:
/// a bf16 x bf16 product fits in fp32); the canonical dot gives s' with |s' - w·x| <= γ|w||x|;
/// and w·x - ŵ·x̂ = ŵ·r_x + r_w·x̂ + r_w·r_x (exactly), so by Cauchy-Schwarz
///     |ŝ - s'| <= D = a(β + 2γ(α+β)) + b(α+β)(1 + 2γ) + τ_j + τ_t.
/// τ covers flushed subnormals (bf16 units treat subnormal inputs and outputs as zero):
/// τ = 2 min_normal (√d |·| + d/2 + 1) per side. Adding the bias rounds both values once more
/// (relative u each), and forming ẑ ± E rounds again, so with ẑ = fl(ŝ + c_j):
///     |ẑ - z_canonical| <= E = (a K1_t + b K2_t + T_j + T_t + 4u|ẑ|) (1 + 64u),
/// where the per-token K1, K2, T and per-latent a, b, T hold the factors above, rounded up and
/// inflated by (1 + 64u) beforehand; the float evaluation of E (four non-negative fused
/// operations) stays inside the slack.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "../detail/half.hpp"
#include "../detail/omp.hpp"
#include "parameters.hpp"

namespace sae::kernels {

/// What the encoder product multiplies: the fp32 (or double) operands themselves, or their
/// bfloat16 roundings (float models only). The selected codes are the same either way.
enum class Precision { Native, BFloat16 };

namespace detail {
/// @p v (computed in double, relative error far below 1e-9) rounded up into Scalar.
template <class Scalar>
Scalar round_up(double v) {
  v *= 1.0 + 1e-9;
  auto s = static_cast<Scalar>(v);
  if (static_cast<double>(s) < v) s = std::nextafter(s, std::numeric_limits<Scalar>::infinity());
  return s;
}

/// Column norms |ŵ_j| and |w_j - ŵ_j| of a d x cols matrix (leading dimension ld), and, when
/// @p out is not null, ŵ_j = bf16(w_j) written there (d x cols, contiguous); without it
/// ŵ = w and the residual norm is 0.
template <class Scalar>
void column_norms(const Scalar* src, Index d, Index cols, Index ld, std::uint16_t* out, double* a, double* b) {
  SAE_OMP(parallel for schedule(static) if (sae::detail::parallel_worth(sae::detail::streamed(d * cols))))
  for (Index j = 0; j < cols; ++j) {
    const Scalar* w = src + j * ld;
    double sa = 0, sb = 0;
    if (out == nullptr) {
      for (Index i = 0; i < d; ++i) sa += static_cast<double>(w[i]) * static_cast<double>(w[i]);
    } else {
      std::uint16_t* o = out + j * d;
      for (Index i = 0; i < d; ++i) {
        const float f = static_cast<float>(w[i]);
        o[i] = sae::detail::float_to_bf16_bits(f);
        const double hat = static_cast<double>(sae::detail::bf16_bits_to_float(o[i]));
        const double r = static_cast<double>(w[i]) - hat;  // exact (a rounding residual)
        sa += hat * hat;
        sb += r * r;
      }
    }
    a[j] = std::sqrt(sa);
    b[j] = std::sqrt(sb);
  }
}
}  // namespace detail

/// The bound's terms for one encoder call: per latent (length m) and per token (length B),
/// plus the bf16 operands when the product is bf16. Buffers are reused across calls.
template <class Scalar>
struct ScoreBounds {
  std::vector<Scalar> a, b, T;             ///< per latent: |ŵ_j|, |r_w|, T_j (all inflated)
  std::vector<Scalar> K1, K2, Tt;          ///< per token
  std::vector<Scalar> C;                   ///< per token: a_max K1 + b_max K2 + Tt + T_max (Sieve::scan)
  double a_max = 0, b_max = 0, T_max = 0;  ///< over the latents
  Scalar r = 0;                            ///< coefficient of |ẑ|
  std::vector<std::uint16_t> W16;          ///< bf16 W_enc, d x m (BFloat16 only)
  std::vector<std::uint16_t> X16;          ///< bf16 inputs, d x B (BFloat16 only)
  std::vector<double> na, nb;              ///< scratch (double norms)

  /// Unit roundoff of the accumulation (fp32 for bf16 products).
  static constexpr double unit_roundoff() { return std::numeric_limits<Scalar>::epsilon() / 2; }

  /// Latent terms from W_enc (d x m); converts W_enc to bf16 when @p precision is BFloat16.
  void prepare_latents(const Mat<Scalar>& W, Precision precision) {
    const Index d = W.rows(), m = W.cols();
    const bool bf = precision == Precision::BFloat16;
    if (bf) W16.resize(static_cast<std::size_t>(d * m));
    na.resize(static_cast<std::size_t>(m));
    nb.resize(static_cast<std::size_t>(m));
    detail::column_norms(W.data(), d, m, d, bf ? W16.data() : nullptr, na.data(), nb.data());
    gamma(d);  // refuses a d_in too large for the bound
    const double F = inflation(), u = unit_roundoff(),
                 tiny = 2.0 * static_cast<double>(std::numeric_limits<Scalar>::min());
    const double sd = std::sqrt(static_cast<double>(d));
    a.resize(static_cast<std::size_t>(m));
    b.resize(static_cast<std::size_t>(m));
    T.resize(static_cast<std::size_t>(m));
    for (Index j = 0; j < m; ++j) {
      const auto s = static_cast<std::size_t>(j);
      a[s] = detail::round_up<Scalar>(na[s]);
      b[s] = detail::round_up<Scalar>(nb[s]);
      T[s] = detail::round_up<Scalar>(tiny * (sd * (na[s] + nb[s]) + static_cast<double>(d) / 2 + 1) * F);
    }
    a_max = b_max = T_max = 0;
    for (Index j = 0; j < m; ++j) {
      const auto s = static_cast<std::size_t>(j);
      a_max = std::max(a_max, static_cast<double>(a[s]));
      b_max = std::max(b_max, static_cast<double>(b[s]));
      T_max = std::max(T_max, static_cast<double>(T[s]));
    }
    r = detail::round_up<Scalar>(4 * u * F);
  }

  /// Token terms from X (d x B, leading dimension ldx); converts X to bf16 when BFloat16. After
  /// prepare_latents (C uses the latents' maxima).
  void prepare_tokens(const Scalar* X, Index d, Index B, Index ldx, Precision precision) {
    const bool bf = precision == Precision::BFloat16;
    if (bf) X16.resize(static_cast<std::size_t>(d * B));
    na.resize(static_cast<std::size_t>(B));
    nb.resize(static_cast<std::size_t>(B));
    detail::column_norms(X, d, B, ldx, bf ? X16.data() : nullptr, na.data(), nb.data());
    const double F = inflation(), g = gamma(d), tiny = 2.0 * static_cast<double>(std::numeric_limits<Scalar>::min());
    const double sd = std::sqrt(static_cast<double>(d));
    K1.resize(static_cast<std::size_t>(B));
    K2.resize(static_cast<std::size_t>(B));
    Tt.resize(static_cast<std::size_t>(B));
    C.resize(static_cast<std::size_t>(B));
    for (Index t = 0; t < B; ++t) {
      const auto s = static_cast<std::size_t>(t);
      const double al = na[s], be = nb[s];
      K1[s] = detail::round_up<Scalar>((be + 2 * g * (al + be)) * F);
      K2[s] = detail::round_up<Scalar>((al + be) * (1 + 2 * g) * F);
      Tt[s] = detail::round_up<Scalar>(tiny * (sd * (al + be) + static_cast<double>(d) / 2 + 1) * F);
      C[s] = detail::round_up<Scalar>(a_max * static_cast<double>(K1[s]) + b_max * static_cast<double>(K2[s]) +
                                      static_cast<double>(Tt[s]) + T_max);
    }
  }

  static double inflation() { return 1 + 64 * unit_roundoff(); }

  /// γ_d = d u / (1 - d u); refuses d so large that the bound is meaningless.
  static double gamma(Index d) {
    const double du = static_cast<double>(d) * unit_roundoff();
    if (!(du < 0.01))
      throw std::invalid_argument("fused encoder: d_in " + std::to_string(d) +
                                  " is too large for a rounding-error bound in this precision");
    return du / (1 - du);
  }
};

}  // namespace sae::kernels
