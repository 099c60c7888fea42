/// @file sae/optim/adam.hpp
/// Adam (Kingma & Ba 2015): hyperparameters in AdamOptions, per-run moments in Adam<Scalar>.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "../core/parameters.hpp"
#include "../detail/omp.hpp"

namespace sae {

/// Adam's hyperparameters (the learning rate comes from the schedule at each step).
struct AdamOptions {
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
};

/// Adam state for one SAE: first and second moments with the parameters' shapes, and the
/// step count t. One fused pass per tensor, coefficient by coefficient (PyTorch's form):
///
///     m <- b1 m + (1 - b1) g
///     v <- b2 v + (1 - b2) g^2
///     theta <- theta - (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
///
/// @code
/// @inproceedings{kingma2015adam, title={Adam: A Method for Stochastic Optimization},
///   author={Kingma, Diederik P. and Ba, Jimmy}, booktitle={ICLR}, year={2015}}
/// @endcode
template <class Scalar>
class Adam {
 public:
  Adam() = default;
  /// Zero moments shaped like @p like (including its threshold and W_skip, if any).
  Adam(const AdamOptions& opts, const Parameters<Scalar>& like)
      : opts_(opts), m_(Parameters<Scalar>::zeros_like(like)), v_(m_) {}

  const AdamOptions& options() const { return opts_; }
  std::int64_t steps_taken() const { return t_; }
  const Parameters<Scalar>& first_moment() const { return m_; }
  const Parameters<Scalar>& second_moment() const { return v_; }
  Parameters<Scalar>& first_moment() { return m_; }
  Parameters<Scalar>& second_moment() { return v_; }
  void set_steps_taken(std::int64_t t) { t_ = t; }

  /// The constants of one step: b1, b2, lr / (1 - b1^t), 1 / sqrt(1 - b2^t) and eps.
  struct StepConstants {
    Scalar b1, b2, step_size, inv_sqrt_bc2, eps;
  };

  /// Advances the step count t and returns the step's constants (what step() applies; a
  /// data-parallel step applies them to the ranges each rank owns, train/distributed.hpp).
  StepConstants begin_step(double lr) {
    ++t_;
    const double bc1 = 1.0 - std::pow(opts_.beta1, static_cast<double>(t_));
    const double bc2 = 1.0 - std::pow(opts_.beta2, static_cast<double>(t_));
    StepConstants c;
    c.b1 = static_cast<Scalar>(opts_.beta1);
    c.b2 = static_cast<Scalar>(opts_.beta2);
    c.step_size = static_cast<Scalar>(lr / bc1);
    c.inv_sqrt_bc2 = static_cast<Scalar>(1.0 / std::sqrt(bc2));
    // eps that underflowed to 0 in Scalar would divide by zero for never-updated coefficients.
    c.eps = static_cast<Scalar>(opts_.eps);
    if (!(c.eps > Scalar(0))) c.eps = Scalar(10) * std::numeric_limits<Scalar>::epsilon();
    return c;
  }

  /// Adam's update of coefficients [i0, i1) of one tensor p with gradient g and moments m, v:
  ///     m = b1 m + (1 - b1) g,  v = b2 v + (1 - b2) g^2,  p -= step_size m / (sqrt(v) inv_sqrt_bc2 + eps)
  static void update_range(const StepConstants& c, Scalar* __restrict pp, const Scalar* __restrict gp,
                           Scalar* __restrict mp, Scalar* __restrict vp, Index i0, Index i1) {
    SAE_OMP(parallel for simd schedule(static) if (detail::parallel_worth(detail::streamed(i1 - i0))))
    for (Index i = i0; i < i1; ++i) {
      const Scalar gi = gp[i];
      const Scalar mi = c.b1 * mp[i] + (Scalar(1) - c.b1) * gi;
      const Scalar vi = c.b2 * vp[i] + (Scalar(1) - c.b2) * gi * gi;
      mp[i] = mi;
      vp[i] = vi;
      pp[i] -= c.step_size * mi / (std::sqrt(vi) * c.inv_sqrt_bc2 + c.eps);
    }
  }

  /// One update of @p params with gradients @p grads at learning rate @p lr.
  void step(Parameters<Scalar>& params, const Parameters<Scalar>& grads, double lr) {
    const StepConstants c = begin_step(lr);
    zip_tensors([&](const char*, auto& p, const auto& g, auto& m,
                    auto& v) { update_range(c, p.data(), g.data(), m.data(), v.data(), 0, p.size()); },
                params, grads, m_, v_);
  }

 private:
  AdamOptions opts_;
  Parameters<Scalar> m_, v_;
  std::int64_t t_ = 0;
};

}  // namespace sae
