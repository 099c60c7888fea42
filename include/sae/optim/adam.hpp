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

  /// One update of @p params with gradients @p grads at learning rate @p lr.
  void step(Parameters<Scalar>& params, const Parameters<Scalar>& grads, double lr) {
    ++t_;
    const double bc1 = 1.0 - std::pow(opts_.beta1, static_cast<double>(t_));
    const double bc2 = 1.0 - std::pow(opts_.beta2, static_cast<double>(t_));
    const Scalar b1 = static_cast<Scalar>(opts_.beta1), b2 = static_cast<Scalar>(opts_.beta2);
    const Scalar step_size = static_cast<Scalar>(lr / bc1);
    const Scalar inv_sqrt_bc2 = static_cast<Scalar>(1.0 / std::sqrt(bc2));
    // eps that underflowed to 0 in Scalar would divide by zero for never-updated coefficients.
    Scalar eps = static_cast<Scalar>(opts_.eps);
    if (!(eps > Scalar(0))) eps = Scalar(10) * std::numeric_limits<Scalar>::epsilon();
    zip_tensors(
        [&](const char*, auto& p, const auto& g, auto& m, auto& v) {
          Scalar* __restrict pp = p.data();
          const Scalar* __restrict gp = g.data();
          Scalar* __restrict mp = m.data();
          Scalar* __restrict vp = v.data();
          const Index n = p.size();
          SAE_OMP(parallel for simd schedule(static) if (n > 65536))
          for (Index i = 0; i < n; ++i) {
            const Scalar gi = gp[i];
            const Scalar mi = b1 * mp[i] + (Scalar(1) - b1) * gi;
            const Scalar vi = b2 * vp[i] + (Scalar(1) - b2) * gi * gi;
            mp[i] = mi;
            vp[i] = vi;
            pp[i] -= step_size * mi / (std::sqrt(vi) * inv_sqrt_bc2 + eps);
          }
        },
        params, grads, m_, v_);
  }

 private:
  AdamOptions opts_;
  Parameters<Scalar> m_, v_;
  std::int64_t t_ = 0;
};

}  // namespace sae
