/// @file sae/activations/topk.hpp
/// TopK activation (Gao et al. 2024, "Scaling and evaluating sparse autoencoders"): per token,
/// keep the k largest positive pre-activations and zero the rest.
#pragma once

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "../config.hpp"
#include "../core/parameters.hpp"
#include "../core/sparse_codes.hpp"
#include "../detail/omp.hpp"

namespace sae {

/// f_t = relu(z_t) restricted to the k largest entries of z_t (token by token).
///
/// Produces SparseCodes with at most k entries per token (fewer when fewer than k
/// pre-activations are positive), listed in increasing latent order so decoding walks W_dec
/// forwards. The selection keeps a size-k min-heap per token: one pass over the m
/// pre-activations, O(m + k log k log(m/k)) on average, no m-sized scratch buffer.
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
  static constexpr Architecture architecture = Architecture::TopK;

  Index k = 0;

  void configure(const SaeConfig& cfg) { k = static_cast<Index>(cfg.k); }

  /// Appends the codes of tokens [first_token, first_token + Z.cols()) to `codes`, whose
  /// offsets must already hold room for them (codes.reset(m, B, k)). Tokens must be
  /// selected in order, block after block. (A block of ready pre-activations; the model itself
  /// uses select_top with the fused encoder.)
  template <class Scalar>
  void select(const Mat<Scalar>& Z, Index first_token, SparseCodes<Scalar>& codes,
              const Parameters<Scalar>& /*p*/ = {}) const {
    if (k <= 0 || k > Z.rows())
      throw std::invalid_argument("TopK: k=" + std::to_string(k) + " outside [1, d_sae=" +
                                  std::to_string(Z.rows()) + "]");
    const Index b = Z.cols(), base = codes.nnz();
    codes.indices.resize(static_cast<std::size_t>(base + b * k));
    codes.values.resize(static_cast<std::size_t>(base + b * k));
    std::vector<Index> count(static_cast<std::size_t>(b));
    SAE_OMP(parallel)
    {
      std::vector<std::pair<Scalar, std::int32_t>> heap;
      heap.reserve(static_cast<std::size_t>(k));
      SAE_OMP(for schedule(static))
      for (Index t = 0; t < b; ++t) {
        top_k_of(Z.col(t), heap);
        std::sort(heap.begin(), heap.end(),
                  [](const auto& a, const auto& c) { return a.second < c.second; });
        const Index out = base + t * k;
        for (std::size_t i = 0; i < heap.size(); ++i) {
          codes.indices[out + i] = heap[i].second;
          codes.values[out + i] = heap[i].first;
        }
        count[t] = static_cast<Index>(heap.size());
      }
    }
    // Compact the fixed k-slot rows (tokens with fewer than k positive values leave gaps).
    Index w = base;
    for (Index t = 0; t < b; ++t) {
      const Index r = base + t * k;
      if (w != r)
        for (Index i = 0; i < count[t]; ++i) {
          codes.indices[w + i] = codes.indices[r + i];
          codes.values[w + i] = codes.values[r + i];
        }
      w += count[t];
      codes.offsets[first_token + t + 1] = w;
    }
    codes.indices.resize(static_cast<std::size_t>(w));
    codes.values.resize(static_cast<std::size_t>(w));
  }

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

 private:
  /// heap <- the (up to) k largest positive entries of z as (value, index), unordered.
  template <class Scalar, class Col>
  void top_k_of(const Col& z, std::vector<std::pair<Scalar, std::int32_t>>& heap) const {
    heap.clear();
    // Min-heap on value; on equal values the larger index is "smaller" so it is evicted first.
    auto greater = [](const auto& a, const auto& c) {
      return a.first > c.first || (a.first == c.first && a.second < c.second);
    };
    const Index m = z.size();
    for (Index j = 0; j < m; ++j) {
      const Scalar v = z[j];
      if (!(v > Scalar(0))) continue;
      if (static_cast<Index>(heap.size()) < k) {
        heap.emplace_back(v, static_cast<std::int32_t>(j));
        std::push_heap(heap.begin(), heap.end(), greater);
      } else if (v > heap.front().first) {
        std::pop_heap(heap.begin(), heap.end(), greater);
        heap.back() = {v, static_cast<std::int32_t>(j)};
        std::push_heap(heap.begin(), heap.end(), greater);
      }
    }
  }
};

}  // namespace sae
