/// @file sae/activations/jumprelu.hpp
/// JumpReLU activation with a learned per-latent threshold (Rajamanoharan et al. 2024,
/// "Jumping Ahead: Improving Reconstruction Fidelity with JumpReLU Sparse Autoencoders").
#pragma once

#include <algorithm>
#include <cmath>

#include <Eigen/Core>

#include "../config.hpp"
#include "../core/parameters.hpp"
#include "../detail/omp.hpp"

namespace sae {

/// \f[ f_{tj} = z_{tj} \, H(z_{tj} - \theta_j) \f]  with theta = Parameters::threshold (m values,
/// learned directly and kept >= 0 after every step, not through log theta: under Adam a
/// log-parameterised threshold moves by about theta * lr per step and barely learns).
///
/// The step H has no useful derivative, so the threshold's gradient uses the straight-through
/// estimator with a rectangle kernel K(u) = 1[|u| < 1/2] of bandwidth epsilon:
///
///     df/dz      = H(z - theta)                         (no gradient to the input through the step)
///     df/dtheta  = -(theta / epsilon) K((z - theta) / epsilon)
///
/// L0 terms (l0_sparsity.hpp) use dH/dtheta = -(1/epsilon) K((z - theta)/epsilon) with the same
/// epsilon, which the model passes to them through StepState::bandwidth.
///
/// Defaults (measured on data of mean squared norm about 1, see docs/variants.md): epsilon =
/// 0.05 and theta_0 = 0.05. The papers' epsilon = 0.001 assumes billions of tokens: with it the
/// window |z - theta| < epsilon/2 almost never holds and theta barely moves in thousands of steps.
///
/// @code
/// @misc{rajamanoharan2024jumping, title={Jumping Ahead: Improving Reconstruction Fidelity with
///   JumpReLU Sparse Autoencoders}, author={Rajamanoharan, Senthooran and others}, year={2024},
///   eprint={2407.14435}}
/// @endcode
struct JumpReLU {
  static constexpr bool sparse = false;
  static constexpr bool unit_norm_decoder = true;
  static constexpr double decoder_init_norm = 1.0;
  static constexpr bool has_threshold = true;
  static constexpr Architecture architecture = Architecture::JumpReLU;

  double bandwidth = 0.3;           ///< epsilon, width of the STE rectangle kernel
  double initial_threshold = 0.3;   ///< theta_0 for every latent at initialisation

  void configure(const SaeConfig&) {}

  template <class Scalar>
  void forward(const Mat<Scalar>& Z, const Parameters<Scalar>& p, Mat<Scalar>& F) const {
    F.resize(Z.rows(), Z.cols());
    const Index m = Z.rows(), B = Z.cols();
    SAE_OMP(parallel for schedule(static) if (B * m > 65536))
    for (Index t = 0; t < B; ++t)
      for (Index j = 0; j < m; ++j) {
        const Scalar z = Z(j, t);
        F(j, t) = z > p.threshold[j] ? z : Scalar(0);
      }
  }

  template <class Scalar>
  void backward(const Mat<Scalar>& Z, const Mat<Scalar>& /*F*/, const Parameters<Scalar>& p, Mat<Scalar>& grad,
                Parameters<Scalar>& grads) const {
    const Index m = Z.rows(), B = Z.cols();
    const Scalar inv_eps = static_cast<Scalar>(1.0 / bandwidth);
    // dtheta_j = sum_t dL/df_tj * (-(theta_j/eps) K((z_tj - theta_j)/eps)), then dL/dz = dL/df *
    // H(z - theta). Blocks of kRows latents (rows of the column-major Z) so threads never share
    // a j and every token contributes one contiguous run; each sum runs over t in order.
    constexpr Index kRows = 64;
    SAE_OMP(parallel for schedule(static) if (B * m > 65536))
    for (Index j0 = 0; j0 < m; j0 += kRows) {
      const Index r = std::min(kRows, m - j0);
      Scalar acc[kRows] = {};
      const Scalar* th = p.threshold.data() + j0;
      for (Index t = 0; t < B; ++t) {
        const Scalar* z = Z.data() + t * m + j0;
        Scalar* g = grad.data() + t * m + j0;
        for (Index i = 0; i < r; ++i) {
          const Scalar u = (z[i] - th[i]) * inv_eps;
          if (u > Scalar(-0.5) && u < Scalar(0.5)) acc[i] += g[i];
          if (!(z[i] > th[i])) g[i] = Scalar(0);
        }
      }
      for (Index i = 0; i < r; ++i) grads.threshold[j0 + i] += -th[i] * inv_eps * acc[i];
    }
  }

  /// Keeps every threshold >= 0 after an optimizer step.
  template <class Scalar, class Codes>
  void after_update(Parameters<Scalar>& p, const Codes&) const {
    p.threshold = p.threshold.cwiseMax(Scalar(0));
  }
};

}  // namespace sae
