/// @file sae/losses/orthogonality.hpp
/// OrtSAE's orthogonality penalty on decoder directions (Korznikov et al. 2025), computed over
/// random chunks of latents so its cost grows linearly in m.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include <Eigen/Core>

#include "../core/parameters.hpp"
#include "../core/policies.hpp"
#include "../core/step_state.hpp"
#include "../detail/omp.hpp"
#include "../detail/random.hpp"

namespace sae {

/// \f[ L_{orth} = \frac{\gamma}{m} \sum_i \max_{j \ne i,\; j \in C(i)} \cos(W_{dec}[:,i], W_{dec}[:,j]) \f]
///
/// Every step the m latents are split into K random chunks C (a fresh permutation per step,
/// drawn from `seed` and the step number, so runs are reproducible); within a chunk of size c
/// the c x c cosine matrix costs c^2 d, so a step costs about m^2 d / K instead of m^2 d.
/// The gradient flows through each latent's arg-max pair (i, j*):
///
///     d cos(a, b) / da = b / (|a| |b|) - cos(a, b) a / |a|^2        (and symmetrically for b)
///
/// Each latent i contributes gamma/m * cos(i, j*_i) and pushes its own direction and its
/// nearest neighbour's apart. Chunks are disjoint, so chunks are processed in parallel.
struct Orthogonality : StatelessTerm {
  static constexpr const char* name = "ortho_loss";

  double coefficient = 0.25;  ///< gamma
  Index chunks = 8;           ///< K (clamped to [1, m])
  std::uint64_t seed = 0x0f7a11ULL;
  /// Data-parallel training (sae/train/distributed.hpp) splits the chunks among the ranks: this
  /// process computes the chunks q with q % parts == part (none when part < 0).
  int part = 0;
  int parts = 1;

  template <class Scalar, class Codes, class DerivedX>
  double accumulate(const Eigen::MatrixBase<DerivedX>& /*X*/, const Parameters<Scalar>& p, StepState<Scalar, Codes>& s,
                    Parameters<Scalar>& grads) const {
    const Index m = p.d_sae();
    const Index K = std::clamp<Index>(chunks, 1, m);
    std::vector<Index> perm(static_cast<std::size_t>(m));
    std::iota(perm.begin(), perm.end(), Index{0});
    detail::Rng rng(seed ^ (0x9E3779B97F4A7C15ULL * static_cast<std::uint64_t>(s.step + 1)));
    for (std::size_t i = perm.size(); i > 1; --i) std::swap(perm[i - 1], perm[rng.below(i)]);
    const Scalar scale = static_cast<Scalar>(coefficient / static_cast<double>(m));
    double total = 0;
    const detail::SerialBelow serial(detail::product_flops(m, m / K, p.d_out()));  // the chunks' Gram matrices
    SAE_OMP(parallel for schedule(dynamic, 1) reduction(+ : total))
    for (Index q = 0; q < K; ++q) {
      if (part < 0 || q % parts != part) continue;
      const Index begin = q * m / K, end = (q + 1) * m / K, c = end - begin;
      if (c < 2) continue;
      Mat<Scalar> Wc(p.d_out(), c);
      for (Index a = 0; a < c; ++a) Wc.col(a) = p.W_dec.col(perm[begin + a]);
      Vec<Scalar> inv = Wc.colwise().norm().transpose();
      for (Index a = 0; a < c; ++a) inv[a] = inv[a] > Scalar(0) ? Scalar(1) / inv[a] : Scalar(0);
      Mat<Scalar> C;
      C.noalias() = Wc.transpose() * Wc;  // Gram matrix, then cosines
      C = inv.asDiagonal() * C * inv.asDiagonal();
      Mat<Scalar> G = Mat<Scalar>::Zero(p.d_out(), c);  // this chunk's gradient columns
      for (Index a = 0; a < c; ++a) {
        Index best = -1;
        Scalar cmax = -std::numeric_limits<Scalar>::infinity();
        for (Index b = 0; b < c; ++b)
          if (b != a && C(b, a) > cmax) {
            cmax = C(b, a);
            best = b;
          }
        total += static_cast<double>(cmax);
        // d cos / d w_a and d cos / d w_best
        G.col(a) += scale * (Wc.col(best) * (inv[a] * inv[best]) - cmax * inv[a] * inv[a] * Wc.col(a));
        G.col(best) += scale * (Wc.col(a) * (inv[a] * inv[best]) - cmax * inv[best] * inv[best] * Wc.col(best));
      }
      for (Index a = 0; a < c; ++a) grads.W_dec.col(perm[begin + a]) += G.col(a);
    }
    return coefficient * total / static_cast<double>(m);
  }
};

}  // namespace sae
