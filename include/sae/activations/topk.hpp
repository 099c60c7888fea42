/// @file sae/activations/topk.hpp
/// TopK activation (Gao et al. 2024, "Scaling and evaluating sparse autoencoders"): per token,
/// keep the k largest positive pre-activations and zero the rest.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include <Eigen/Core>

#include "../config.hpp"
#include "../core/parameters.hpp"
#include "../core/policies.hpp"
#include "../core/sparse_codes.hpp"

namespace sae {

/// f_t = relu(z_t) restricted to the k largest entries of z_t (token by token).
///
/// Produces SparseCodes with at most k entries per token (fewer when fewer than k
/// pre-activations are positive), listed in increasing latent order so decoding walks W_dec
/// forwards. The selection itself is the fused encoder's (core/fused_encoder.hpp: a size-k
/// min-heap per token fed tile by tile, no m-sized scratch buffer); select_top only compacts
/// its fixed k-slot rows into SparseCodes.
///
/// Backward: dL/dz_tj = dL/df_tj for the kept entries, 0 elsewhere (the identity on the
/// stored values), so nothing is done per entry. Ties keep the lower latent index.
///
/// @code
/// @misc{gao2024scaling, title={Scaling and evaluating sparse autoencoders},
///   author={Gao, Leo and others}, year={2024}, eprint={2406.04093}}
/// @endcode
struct TopK {
  static constexpr bool sparse = true;
  static constexpr bool unit_norm_decoder = true;
  static constexpr double decoder_init_norm = 1.0;
  static constexpr bool has_threshold = false;
  static constexpr std::string_view family = "topk";
  static constexpr bool uses_k = true;

  Index k = 0;

  void configure(const SaeConfig& cfg) { k = static_cast<Index>(cfg.k); }

  /// No state of its own in a checkpoint.
  void save_state(PolicyState&) const {}
  void load_state(const PolicyState&) {}

  /// All B tokens at once: @p top_c(cap, values, indices, count) writes each token's up to cap
  /// largest positive pre-activations, sorted by latent, into fixed slots (the fused encoder,
  /// fused_encoder.hpp); they are compacted into `codes` here without further allocation once
  /// the codes have held a batch of this size.
  template <class Scalar, class TopC>
  void select_top(Index B, Index m, TopC&& top_c, SparseCodes<Scalar>& codes) const {
    if (k <= 0 || k > m)
      throw std::invalid_argument("TopK: k=" + std::to_string(k) + " outside [1, d_sae=" + std::to_string(m) + "]");
    codes.reset(m, B, k);
    codes.indices.resize(static_cast<std::size_t>(B * k));
    codes.values.resize(static_cast<std::size_t>(B * k));
    top_c(k, codes.values.data(), codes.indices.data(), codes.offsets.data() + 1);  // counts into offsets[t+1]
    Index w = 0;
    for (Index t = 0; t < B; ++t) {
      const Index r = t * k, n = codes.offsets[t + 1];
      if (w != r)
        for (Index i = 0; i < n; ++i) {
          codes.indices[w + i] = codes.indices[r + i];
          codes.values[w + i] = codes.values[r + i];
        }
      w += n;
      codes.offsets[t + 1] = w;
    }
    codes.indices.resize(static_cast<std::size_t>(w));
    codes.values.resize(static_cast<std::size_t>(w));
  }

  template <class Scalar>
  void backward(const SparseCodes<Scalar>&, std::vector<Scalar>&) const {}

  /// Nothing to do after an optimizer step.
  template <class Scalar>
  void after_update(Parameters<Scalar>&, const SparseCodes<Scalar>&) const {}
};

}  // namespace sae
