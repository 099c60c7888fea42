/// @file sae/losses/l0_sparsity.hpp
/// L0 sparsity penalties for JumpReLU SAEs: plain lambda * L0, or a target-L0 penalty.
#pragma once

#include <algorithm>
#include <cstdint>

#include <Eigen/Core>

#include "../core/parameters.hpp"
#include "../core/policies.hpp"
#include "../core/step_state.hpp"
#include "../optim/schedule.hpp"
#include "../detail/omp.hpp"

namespace sae {

namespace detail {

/// L0 = (1/B) sum_t sum_j H(z_tj - theta_j), and into @p dl0 (m values, overwritten) its
/// straight-through gradient with respect to theta:
///     dL0/dtheta_j = -(1/(B eps)) #{t : |z_tj - theta_j| < eps/2}
/// from the JumpReLU codes F (z = f where f != 0, i.e. above the threshold) and the list of
/// entries just below the threshold that JumpReLU::forward_in_place recorded (@p below).
template <class Scalar>
double l0_and_threshold_gradient(const Mat<Scalar>& F, const kernels::LatentList& below, const Vec<Scalar>& theta,
                                 double eps, Vec<Scalar>& dl0) {
  const Index m = F.rows(), B = F.cols();
  dl0.resize(m);
  const Scalar half = static_cast<Scalar>(eps / 2);
  double active = 0;
  // Blocks of kRows latents (rows of the column-major F): each token contributes one contiguous
  // run of kRows values, so the walk over tokens reads whole cache lines. Counts are integers,
  // so the result does not depend on the order.
  constexpr Index kRows = 64;
  const bool parallel = parallel_worth(streamed(B * m));
  SAE_OMP(parallel for schedule(static) reduction(+ : active) if (parallel))
  for (Index j0 = 0; j0 < m; j0 += kRows) {
    const Index r = std::min(kRows, m - j0);
    Index on[kRows] = {}, near[kRows] = {};
    const Scalar* th = theta.data() + j0;
    for (Index t = 0; t < B; ++t) {
      const Scalar* f = F.data() + t * m + j0;
      for (Index i = 0; i < r; ++i) {
        const bool fired = f[i] != Scalar(0);
        on[i] += fired;
        near[i] += fired && (f[i] - th[i] < half);
      }
    }
    for (Index i = 0; i < r; ++i) {
      active += static_cast<double>(on[i]);
      dl0[j0 + i] = static_cast<Scalar>(near[i]);  // completed below
    }
  }
  for (const std::int32_t j : below.latents) dl0[j] += Scalar(1);
  for (Index j = 0; j < m; ++j)
    dl0[j] = static_cast<Scalar>(-static_cast<double>(dl0[j]) / (static_cast<double>(B) * eps));
  return active / static_cast<double>(B);
}

}  // namespace detail

/// \f[ L = \lambda_s \, \frac{1}{B} \sum_t \sum_j H(z_{tj} - \theta_j) \f]
/// (the number of active latents per token, Rajamanoharan et al. 2024), with lambda ramped up
/// linearly over `warmup_steps`. Gradient only to the thresholds, through the STE (the step has
/// no gradient with respect to the input). Needs a JumpReLU model (reads its codes, s.below, theta and s.bandwidth).
///
/// Under Adam the update size does not grow with lambda, so large lambdas saturate
/// (SAELens#719); TargetL0 below gives a knob that moves L0 directly.
struct L0Sparsity : StatelessTerm {
  static constexpr const char* name = "l0_loss";

  double coefficient = 1e-2;      ///< lambda
  std::int64_t warmup_steps = 0;  ///< linear ramp of lambda from 0

  double coefficient_at(std::int64_t step) const { return linear_warmup(coefficient, step, warmup_steps); }

  template <class Scalar, class Codes, class DerivedX>
  double accumulate(const Eigen::MatrixBase<DerivedX>& /*X*/, const Parameters<Scalar>& p, StepState<Scalar, Codes>& s,
                    Parameters<Scalar>& grads) const {
    Vec<Scalar> dl0;
    const double l0 = detail::l0_and_threshold_gradient(s.codes, s.below, p.threshold, s.bandwidth, dl0);
    const double lam = coefficient_at(s.step);
    grads.threshold.noalias() += static_cast<Scalar>(lam) * dl0;
    return lam * l0;
  }
};

/// \f[ L = \lambda_s \left( \frac{L_0}{L_0^{target}} - 1 \right)^2 \f]
/// pulls the batch L0 (as in L0Sparsity) towards a target from either side, so the knob moves
/// L0 even where Adam's normalisation makes lambda * L0 saturate (the dictionary_learning
/// JumpReLU trainer's form). dL/dtheta = 2 lambda (L0/T - 1)/T * dL0/dtheta.
struct TargetL0 : StatelessTerm {
  static constexpr const char* name = "target_l0_loss";

  double coefficient = 1.0;  ///< lambda
  double target = 20.0;      ///< L0_target, active latents per token
  std::int64_t warmup_steps = 0;

  double coefficient_at(std::int64_t step) const { return linear_warmup(coefficient, step, warmup_steps); }

  template <class Scalar, class Codes, class DerivedX>
  double accumulate(const Eigen::MatrixBase<DerivedX>& /*X*/, const Parameters<Scalar>& p, StepState<Scalar, Codes>& s,
                    Parameters<Scalar>& grads) const {
    Vec<Scalar> dl0;
    const double l0 = detail::l0_and_threshold_gradient(s.codes, s.below, p.threshold, s.bandwidth, dl0);
    const double lam = coefficient_at(s.step);
    const double r = l0 / target - 1.0;
    grads.threshold.noalias() += static_cast<Scalar>(lam * 2.0 * r / target) * dl0;
    return lam * r * r;
  }
};

}  // namespace sae
