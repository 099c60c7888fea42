/// @file sae/activations/jumprelu.hpp
/// JumpReLU activation with a learned per-latent threshold (Rajamanoharan et al. 2024,
/// "Jumping Ahead: Improving Reconstruction Fidelity with JumpReLU Sparse Autoencoders").
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include <Eigen/Core>

#include "../config.hpp"
#include "../core/kernels.hpp"
#include "../core/parameters.hpp"
#include "../core/policies.hpp"
#include "../detail/omp.hpp"

namespace sae {

/// \f[ f_{tj} = \mathrm{relu}(z_{tj}) \, H(z_{tj} - \theta_j) \f]  with theta = Parameters::threshold
/// (m values, learned directly and kept >= 0 after every step, not through log theta: under
/// Adam a log-parameterised threshold moves by about theta * lr per step and barely learns).
/// With theta >= 0 the relu changes nothing; it matters for a loaded SAE whose file holds a
/// negative threshold, where SAELens and Gemma Scope compute relu(z) 1[z > theta] too, so the
/// codes are never negative.
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
/// theta_0 = 0.3. The papers' epsilon = 0.001 assumes billions of tokens: with it the window
/// |z - theta| < epsilon/2 almost never holds and theta barely moves in thousands of steps.
///
/// Memory: the codes overwrite the pre-activations (forward_in_place); of z the gradients then
/// still need only which entries lie in the window just below the threshold, which the forward
/// pass lists per token (StepState::below). Above the threshold z = f.
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
  static constexpr std::string_view family = "jumprelu";
  static constexpr bool uses_k = false;

  double bandwidth = 0.3;          ///< epsilon, width of the STE rectangle kernel
  double initial_threshold = 0.3;  ///< theta_0 for every latent at initialisation

  void configure(const SaeConfig&) {}

  /// No state of its own in a checkpoint.
  void save_state(PolicyState&) const {}
  void load_state(const PolicyState&) {}

  /// F = relu(Z) H(Z - theta) in Z's own buffer (m x B), recording in @p below each token's latents
  /// with theta - eps/2 < z <= theta: the straight-through window below the threshold, whose
  /// pre-activations the codes no longer hold (above it, z = f). Two passes per token (count,
  /// then fill), so the list reuses its storage from step to step.
  template <class Scalar>
  void forward_in_place(Mat<Scalar>& ZF, const Parameters<Scalar>& p, kernels::LatentList& below) const {
    const Index m = ZF.rows(), B = ZF.cols();
    const Scalar half = static_cast<Scalar>(bandwidth / 2);
    const Scalar* th = p.threshold.data();
    below.offsets.assign(static_cast<std::size_t>(B) + 1, 0);
    // z - theta > 0 exactly when z > theta (IEEE subtraction, no flush-to-zero), so one
    // difference decides both tests; the loops stay branch-free where most values go.
    const bool parallel = sae::detail::parallel_worth(sae::detail::streamed(B * m));
    SAE_OMP(parallel for schedule(static) if (parallel))
    for (Index t = 0; t < B; ++t) {
      const Scalar* z = ZF.data() + t * m;
      Index n = 0;
      for (Index j = 0; j < m; ++j) {
        const Scalar u = z[j] - th[j];
        n += static_cast<Index>((u > -half) & !(u > Scalar(0)));
      }
      below.offsets[static_cast<std::size_t>(t) + 1] = n;
    }
    for (Index t = 0; t < B; ++t) below.offsets[t + 1] += below.offsets[t];
    below.latents.resize(static_cast<std::size_t>(below.offsets[B]));
    SAE_OMP(parallel for schedule(static) if (parallel))
    for (Index t = 0; t < B; ++t) {
      Scalar* z = ZF.data() + t * m;
      std::int32_t* out = below.latents.data() + below.offsets[t];
      for (Index j = 0; j < m; ++j) {
        const Scalar u = z[j] - th[j];
        if ((u > -half) & !(u > Scalar(0))) *out++ = static_cast<std::int32_t>(j);
      }
      for (Index j = 0; j < m; ++j) z[j] = z[j] > std::max(th[j], Scalar(0)) ? z[j] : Scalar(0);
    }
  }

  /// On a tile of latents [j0, j0 + rows) x tokens [t0, t0 + cols) with f = F, dL/df = D:
  /// acc_j += sum_t D_tj K((z_tj - theta_j)/eps) (the window: above the threshold from f,
  /// below it from @p below), then D <- D H(z - theta). Tokens are walked in order, so each
  /// acc_j sums over t in order.
  template <class FTile, class DTile, class Scalar>
  void backward_tile(Index j0, Index t0, const FTile& F, DTile& D, Scalar* acc, const Parameters<Scalar>& p,
                     const kernels::LatentList& below) const {
    const Scalar half = static_cast<Scalar>(bandwidth / 2);
    const Index rows = F.rows();
    const Scalar* th = p.threshold.data() + j0;
    for (Index t = 0; t < F.cols(); ++t) {
      // below the threshold: in the window only where listed; f = 0 there
      const auto [first, last] = below.range(t0 + t, j0, j0 + rows);
      for (Index e = first; e < last; ++e) {
        const Index i = below.latents[static_cast<std::size_t>(e)] - j0;
        acc[i] += D(i, t);
      }
      const Scalar* f = &F.coeffRef(0, t);
      Scalar* g = &D.coeffRef(0, t);
      for (Index i = 0; i < rows; ++i) {  // branch-free: about half the codes fire
        const bool fired = f[i] != Scalar(0);
        acc[i] += (fired & (f[i] - th[i] < half)) ? g[i] : Scalar(0);
        g[i] = fired ? g[i] : Scalar(0);
      }
    }
  }

  /// dtheta_j += -(theta_j / eps) acc_j for the latents [j0, j0 + n).
  template <class Scalar>
  void finish_backward(Index j0, Index n, const Scalar* acc, const Parameters<Scalar>& p,
                       Parameters<Scalar>& grads) const {
    const Scalar inv_eps = static_cast<Scalar>(1.0 / bandwidth);
    for (Index i = 0; i < n; ++i) grads.threshold[j0 + i] += -p.threshold[j0 + i] * inv_eps * acc[i];
  }

  /// Keeps every threshold >= 0 after an optimizer step.
  template <class Scalar, class Codes>
  void after_update(Parameters<Scalar>& p, const Codes&) const {
    p.threshold = p.threshold.cwiseMax(Scalar(0));
  }
};

}  // namespace sae
