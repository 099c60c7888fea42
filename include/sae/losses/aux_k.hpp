/// @file sae/losses/aux_k.hpp
/// AuxK dead-latent loss (Gao et al. 2024, appendix A.2) for TopK-family SAEs.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "../core/kernels.hpp"
#include "../core/parameters.hpp"
#include "../core/policies.hpp"
#include "../core/sparse_codes.hpp"
#include "../core/step_state.hpp"
#include "../detail/omp.hpp"

namespace sae {

/// A latent is dead when it has not fired for `dead_tokens` training tokens. With e = x - x_hat
/// (the main reconstruction's residual, held constant; for a transcoder e = y - y_hat, while the
/// pre-activations come from its inputs, StepState::input) and z_aux the k_aux largest positive
/// pre-activations among dead latents of each token,
///
/// \f[ \hat e_t = \sum_{j \in aux(t)} z_{tj} W_{dec}[:,j], \qquad
///     L_{aux} = \alpha \frac{\sum_t \lVert e_t - \hat e_t \rVert^2}{\sum_t \lVert e_t \rVert^2} \f]
///
/// (no bias in e_hat), which gives dead latents a gradient towards the error the live ones
/// leave. Defaults: dead after 10M tokens, k_aux = d_out / 2 (d_in / 2 for an SAE), alpha = 1/32.
///
/// The dead latents' pre-activations are computed here with one product over the dead columns
/// of W_enc only (n_dead x d x B, nothing when no latent is dead). Gradients, with
/// g_t = 2 alpha (e_hat_t - e_t) / sum ||e||^2:
///
///     dW_dec[:,j] += sum_t g_t z_tj,   dz_tj = g_t . W_dec[:,j]   (for the aux entries)
///     dW_enc[:,j] += sum_t dz_tj (x_t - b_dec),  db_enc[j] += sum_t dz_tj,
///     db_dec     -= sum_j W_enc[:,j] sum_t dz_tj                  (when b_dec is subtracted)
///
/// State: tokens since each latent last fired, updated by after_update() from each step's codes
/// (so the term must be used by one model, in one training run at a time).
struct AuxK {
  static constexpr const char* name = "auxk_loss";

  double coefficient = 1.0 / 32.0;  ///< alpha
  Index k_aux = 0;                  ///< 0: d_out / 2
  std::int64_t dead_tokens = 10'000'000;
  std::vector<std::int64_t> since_fired;  ///< per latent, tokens since it last fired

  /// Number of latents that count as dead now.
  Index dead_count() const {
    return static_cast<Index>(
        std::count_if(since_fired.begin(), since_fired.end(), [&](std::int64_t v) { return v >= dead_tokens; }));
  }

  template <class Scalar, class DerivedX>
  double accumulate(const Eigen::MatrixBase<DerivedX>& X, const Parameters<Scalar>& p,
                    StepState<Scalar, SparseCodes<Scalar>>& s, Parameters<Scalar>& grads) const {
    const Index m = p.d_sae(), d = p.d_out(), B = X.cols();
    std::vector<Index> dead;
    if (static_cast<Index>(since_fired.size()) == m)
      for (Index j = 0; j < m; ++j)
        if (since_fired[j] >= dead_tokens) dead.push_back(j);
    if (dead.empty()) return 0.0;
    const Index nd = static_cast<Index>(dead.size());
    const Index ka = std::min<Index>(k_aux > 0 ? k_aux : std::max<Index>(1, d / 2), nd);

    if (!s.input)
      throw std::logic_error("AuxK: the step's encoder inputs are not set (call it through forward_backward)");
    const auto& In = *s.input;  // the encoder's inputs (d_in x B): X itself for an SAE
    Mat<Scalar> We(p.d_in(), nd), Wd(d, nd);
    Vec<Scalar> cd(nd);
    for (Index a = 0; a < nd; ++a) {
      We.col(a) = p.W_enc.col(dead[a]);
      Wd.col(a) = p.W_dec.col(dead[a]);
      cd[a] = s.c[dead[a]];
    }
    // five products of nd x B x d (d_in for two of them) on one thread when small
    const detail::SerialBelow serial(detail::product_flops(nd, B, 2 * p.d_in() + 3 * d));
    Mat<Scalar> Zd;
    Zd.noalias() = We.transpose() * In;
    Zd.colwise() += cd;
    // Keep the ka largest positive entries of each column (zero the rest); one scratch
    // vector per thread, not per token.
    SAE_OMP(parallel) {
      std::vector<Scalar> v;
      if (ka < nd) v.reserve(static_cast<std::size_t>(nd));
      SAE_OMP(for schedule(static))
      for (Index t = 0; t < B; ++t) {
        auto z = Zd.col(t);
        if (ka < nd) {
          v.assign(z.data(), z.data() + nd);
          std::nth_element(v.begin(), v.begin() + (ka - 1), v.end(), std::greater<Scalar>());
          const Scalar cut = v[static_cast<std::size_t>(ka - 1)];
          Index kept = 0;
          for (Index a = 0; a < nd; ++a) {
            const bool keep = z[a] > Scalar(0) && (z[a] > cut || (z[a] == cut && kept < ka));
            if (keep)
              ++kept;
            else
              z[a] = Scalar(0);
          }
        } else {
          z = z.cwiseMax(Scalar(0));
        }
      }
    }
    // e = x - x_hat, the residual, held constant (no d x B copy: read from X and s.X_hat)
    const double denom = static_cast<double>((X - s.X_hat).squaredNorm());
    if (!(denom > 0)) return 0.0;
    Mat<Scalar> R;
    R.noalias() = Wd * Zd;  // e_hat
    R += s.X_hat - X;       // e_hat - e
    const double value = coefficient * static_cast<double>(R.squaredNorm()) / denom;
    R *= static_cast<Scalar>(2.0 * coefficient / denom);  // g_t
    Mat<Scalar> dZ;
    dZ.noalias() = Wd.transpose() * R;
    dZ = (Zd.array() > Scalar(0)).select(dZ, Scalar(0));
    const Mat<Scalar> gWd = R * Zd.transpose();
    const Vec<Scalar> dz_sum = dZ.rowwise().sum();
    Mat<Scalar> gWe;
    gWe.noalias() = In * dZ.transpose();
    for (Index a = 0; a < nd; ++a) {
      const Index j = dead[a];
      grads.W_dec.col(j) += gWd.col(a);
      grads.W_enc.col(j) += gWe.col(a);
      if (s.apply_b_dec_to_input) {
        grads.W_enc.col(j) -= dz_sum[a] * p.b_dec;
        grads.b_dec -= dz_sum[a] * p.W_enc.col(j);
      }
      grads.b_enc[j] += dz_sum[a];
    }
    return value;
  }

  /// Counts tokens since each latent last fired, from the step's codes.
  template <class Scalar>
  void after_update(const SparseCodes<Scalar>& codes) {
    kernels::update_since_fired(codes, since_fired);
  }

  /// since_fired, as the checkpoint tensor loss.auxk_loss.since_fired.
  void save_state(PolicyState& s) const {
    if (!since_fired.empty()) s.counts["since_fired"] = since_fired;
  }
  void load_state(const PolicyState& s) {
    auto it = s.counts.find("since_fired");
    since_fired = it == s.counts.end() ? std::vector<std::int64_t>{} : it->second;
  }
};

}  // namespace sae
