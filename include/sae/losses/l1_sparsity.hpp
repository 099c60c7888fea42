/// @file sae/losses/l1_sparsity.hpp
/// L1 sparsity penalty weighted by decoder norms, with a linear coefficient warm-up.
#pragma once

#include <algorithm>
#include <cstdint>

#include <Eigen/Core>

#include "../core/kernels.hpp"
#include "../core/parameters.hpp"
#include "../core/policies.hpp"
#include "../core/step_state.hpp"
#include "../optim/schedule.hpp"

namespace sae {

/// \f[ L_1 = \frac{\lambda_s}{B} \sum_t \sum_j f_{tj} \lVert W_{dec}[:,j] \rVert_2,
///     \qquad \lambda_s = \lambda \min\left(1, \frac{s+1}{S_{warm}}\right) \f]
///
/// Weighting by the decoder norm stops the model from shrinking f while growing W_dec
/// (Bricken et al. 2023, "Towards Monosemanticity"; Anthropic's April 2024 update, which
/// SAELens v6 follows). Gradients, with n_j = ||W_dec[:, j]|| and s_j = sum_t f_tj:
///
///     dL/df_tj      = lambda_s / B * n_j
///     dL/dW_dec[:,j] = lambda_s / B * s_j * W_dec[:, j] / n_j
struct L1Sparsity : StatelessTerm {
  static constexpr const char* name = "l1_loss";

  double coefficient = 0.3;       ///< lambda (for data of mean squared norm about 1)
  std::int64_t warmup_steps = 0;  ///< S_warm: lambda ramps linearly from 0 over these steps

  /// lambda_s at 0-based step s.
  double coefficient_at(std::int64_t step) const { return linear_warmup(coefficient, step, warmup_steps); }

  template <class Scalar, class Codes, class DerivedX>
  double accumulate(const Eigen::MatrixBase<DerivedX>& X, const Parameters<Scalar>& p, StepState<Scalar, Codes>& s,
                    Parameters<Scalar>& grads) const {
    const Index B = X.cols(), m = p.d_sae();
    const Scalar lam = static_cast<Scalar>(coefficient_at(s.step) / static_cast<double>(B));
    Vec<Scalar> norms = p.W_dec.colwise().norm().transpose();
    Vec<Scalar> sums;
    kernels::latent_sums(s.codes, sums);
    kernels::add_latent_weights(s.codes, Vec<Scalar>(lam * norms), s.grad_codes);
    for (Index j = 0; j < m; ++j)
      if (norms[j] > Scalar(0)) grads.W_dec.col(j) += (lam * sums[j] / norms[j]) * p.W_dec.col(j);
    return static_cast<double>(lam) * static_cast<double>(sums.dot(norms));
  }
};

}  // namespace sae
