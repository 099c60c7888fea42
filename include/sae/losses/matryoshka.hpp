/// @file sae/losses/matryoshka.hpp
/// The inner reconstruction losses of a Matryoshka SAE (Nabeshima 2024; Bussmann et al. 2025,
/// "Learning Multi-Level Features with Matryoshka Sparse Autoencoders").
#pragma once

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include <Eigen/Core>

#include "../core/parameters.hpp"
#include "../core/policies.hpp"
#include "../core/sparse_codes.hpp"
#include "../core/step_state.hpp"
#include "../detail/omp.hpp"

namespace sae {

/// With nested prefix widths w_1 < ... < w_n = m, the prefix reconstruction of token t is
/// x_hat_t^(i) = b_dec + sum_{j < w_i} f_tj W_dec[:, j]; this term is
///
///     L = sum_{i < n} (1/B) sum_t || x_t - x_hat_t^(i) ||^2
///
/// (the outer level i = n is the Reconstruction term itself), as SAELens's
/// MatryoshkaBatchTopKTrainingSAE adds `inner_mse_loss_<w_i>` to its loss. Each prefix must
/// then reconstruct on its own, so general features settle in the first latents.
///
/// Gradients, with g_t^(i) = (2/B) (x_hat_t^(i) - x_t) and S_t^(i) = sum_{i' >= i, i' < n} g_t^(i')
/// (the levels that contain segment i = [w_{i-1}, w_i)):
///
///     dL/df_tj += W_dec[:, j] . S_t^(seg(j)),   dW_dec[:, j] += f_tj S_t^(seg(j)),
///     db_dec   += sum_t S_t^(1)
///
/// Sparse codes only (the TopK family); cost O(B (k d + n d)), no m-sized work.
struct MatryoshkaInner : StatelessTerm {
  static constexpr const char* name = "inner_mse_loss";

  std::vector<Index> widths;  ///< strictly increasing, the last = d_sae (set by the variant)

  /// std::invalid_argument unless widths are positive, strictly increasing and end at @p d_sae.
  void check(Index d_sae) const {
    if (widths.empty()) throw std::invalid_argument("matryoshka widths must not be empty");
    for (std::size_t i = 0; i < widths.size(); ++i) {
      if (widths[i] <= 0) throw std::invalid_argument("matryoshka widths must be positive");
      if (i > 0 && widths[i] <= widths[i - 1])
        throw std::invalid_argument("matryoshka widths must be strictly increasing");
    }
    if (widths.back() != d_sae)
      throw std::invalid_argument("matryoshka widths must end at d_sae=" + std::to_string(d_sae) + ", got " +
                                  std::to_string(widths.back()));
  }

  template <class Scalar, class DerivedX>
  double accumulate(const Eigen::MatrixBase<DerivedX>& X, const Parameters<Scalar>& p,
                    StepState<Scalar, SparseCodes<Scalar>>& s, Parameters<Scalar>& grads) const {
    check(p.d_sae());
    if (p.has_skip()) throw std::invalid_argument("matryoshka: skip transcoders (W_skip) are not supported");
    const Index n_in = static_cast<Index>(widths.size()) - 1;  // inner levels
    if (n_in == 0) return 0.0;
    const Index d = p.d_out(), B = X.cols();
    const auto& codes = s.codes;
    auto segment = [&](std::int32_t j) {  // index of the first width > j
      return static_cast<Index>(std::upper_bound(widths.begin(), widths.end(), static_cast<Index>(j)) - widths.begin());
    };
    // Per token: S_t^(i) for the inner levels, d x n_in each, kept for the decoder gradient.
    Mat<Scalar>& scratch = scratch_for<Scalar>();
    scratch.resize(d * n_in, B);
    double total = 0;
    const Scalar g2 = Scalar(2) / static_cast<Scalar>(B);
    // per token: its entries' decoder columns twice, and n_in residuals of d values
    const bool parallel = detail::parallel_worth(detail::streamed((2 * codes.nnz() + 3 * n_in * B) * d));
    SAE_OMP(parallel reduction(+ : total) if (parallel)) {
      Mat<Scalar> seg(d, n_in);  // seg.col(i): sum of f_tj W_dec[:, j] over segment i
      Vec<Scalar> r(d);
      SAE_OMP(for schedule(static))
      for (Index t = 0; t < B; ++t) {
        seg.setZero();
        for (Index e = codes.offsets[t]; e < codes.offsets[t + 1]; ++e) {
          const Index i = segment(codes.indices[e]);
          if (i < n_in) seg.col(i) += codes.values[e] * p.W_dec.col(codes.indices[e]);
        }
        // residual of level i: x - b_dec - sum_{i' <= i} seg_i'; g = -(2/B) residual
        Eigen::Map<Mat<Scalar>> S(scratch.col(t).data(), d, n_in);
        r = X.col(t) - p.b_dec;
        for (Index i = 0; i < n_in; ++i) {
          r -= seg.col(i);
          total += static_cast<double>(r.squaredNorm());
          S.col(i) = -g2 * r;
        }
        for (Index i = n_in - 2; i >= 0; --i) S.col(i) += S.col(i + 1);  // suffix sums
        for (Index e = codes.offsets[t]; e < codes.offsets[t + 1]; ++e) {
          const Index i = segment(codes.indices[e]);
          if (i < n_in) s.grad_codes[static_cast<std::size_t>(e)] += p.W_dec.col(codes.indices[e]).dot(S.col(i));
        }
      }
    }
    // Decoder columns are shared between tokens: added in token order, one thread.
    for (Index t = 0; t < B; ++t) {
      const Eigen::Map<const Mat<Scalar>> S(scratch.col(t).data(), d, n_in);
      grads.b_dec += S.col(0);
      for (Index e = codes.offsets[t]; e < codes.offsets[t + 1]; ++e) {
        const Index i = segment(codes.indices[e]);
        if (i < n_in) grads.W_dec.col(codes.indices[e]) += codes.values[e] * S.col(i);
      }
    }
    return total / static_cast<double>(B);
  }

 private:
  // S_t for every token between the two passes (d * n_in x B), kept between steps.
  template <class Scalar>
  Mat<Scalar>& scratch_for() const {
    if constexpr (std::is_same_v<Scalar, float>)
      return scratch_f_;
    else
      return scratch_d_;
  }
  mutable Mat<float> scratch_f_;
  mutable Mat<double> scratch_d_;
};

}  // namespace sae
