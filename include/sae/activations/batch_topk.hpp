/// @file sae/activations/batch_topk.hpp
/// BatchTopK activation (Bussmann et al. 2024, "BatchTopK Sparse Autoencoders"): keep the k*B
/// largest positive pre-activations of the whole batch of B tokens.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "../config.hpp"
#include "../core/parameters.hpp"
#include "../core/sparse_codes.hpp"
#include "../detail/omp.hpp"

namespace sae {

/// Training: f = relu(z) restricted to the k*B largest values of the batch, so tokens get
/// varying numbers of latents with mean k. Inference: one global threshold theta,
/// f_tj = z_tj 1[z_tj > theta], where theta tracks the smallest kept activation of each
/// training batch (theta <- theta + rate (min_kept - theta), the first batch's value copied),
/// so a token needs no batch; saved as a "jumprelu" SAE with theta for every latent.
///
/// Selection never sorts all B*m values. Each 256-token block of pre-activations keeps its
/// c = min(m, 2k + 8) largest positive values per token as candidates; one nth_element over the
/// B*c candidates gives the global cut tau (the (kB)-th largest). A token whose c candidates
/// are all >= tau might have lost values above tau, so its pre-activations are recomputed in
/// full and the cut is taken again, which makes the selection exact (tests compare it with a
/// full sort).
///
/// @code
/// @misc{bussmann2024batchtopk, title={BatchTopK Sparse Autoencoders},
///   author={Bussmann, Bart and Leask, Patrick and Nanda, Neel}, year={2024}, eprint={2412.06410}}
/// @endcode
struct BatchTopK {
  static constexpr bool sparse = true;
  static constexpr bool unit_norm_decoder = true;
  static constexpr double decoder_init_norm = 1.0;
  static constexpr bool has_threshold = false;
  static constexpr Architecture architecture = Architecture::BatchTopK;

  Index k = 0;                 ///< mean active latents per token
  double threshold = 0.0;      ///< theta, inference threshold (0 until the first training step)
  double threshold_rate = 0.01;  ///< EMA rate of theta
  bool threshold_started = false;

  void configure(const SaeConfig& cfg) { k = static_cast<Index>(cfg.k); }

  /// Inference on one block: every latent with z > max(theta, 0), in latent order.
  template <class Scalar>
  void select(const Mat<Scalar>& Z, Index first_token, SparseCodes<Scalar>& codes,
              const Parameters<Scalar>& /*p*/ = {}) const {
    const Scalar th = static_cast<Scalar>(std::max(threshold, 0.0));
    const Index b = Z.cols(), m = Z.rows();
    for (Index t = 0; t < b; ++t) {
      for (Index j = 0; j < m; ++j)
        if (Z(j, t) > th) {
          codes.indices.push_back(static_cast<std::int32_t>(j));
          codes.values.push_back(Z(j, t));
        }
      codes.offsets[first_token + t + 1] = codes.nnz();
    }
  }

  /// Training selection over the whole batch of B tokens. @p block(t0, b, Z) computes the
  /// m x b pre-activations of tokens [t0, t0 + b); @p Z is scratch.
  template <class Scalar, class Block>
  void select_batch(Index B, Index block_tokens, Block&& block, SparseCodes<Scalar>& codes, Mat<Scalar>& Z) const {
    if (k <= 0) throw std::invalid_argument("BatchTopK: k must be positive");
    using Cand = std::pair<Scalar, std::int32_t>;
    const Index m_guess = std::max<Index>(1, 2 * k + 8);
    Index c = m_guess;
    std::vector<std::vector<Cand>> cand(static_cast<std::size_t>(B));
    for (Index t0 = 0; t0 < B; t0 += block_tokens) {
      const Index b = std::min(block_tokens, B - t0);
      block(t0, b, Z);
      c = std::min<Index>(m_guess, Z.rows());
      SAE_OMP(parallel for schedule(static))
      for (Index t = 0; t < b; ++t) top_positive(Z.col(t), c, cand[t0 + t]);
    }
    const Index want = k * B;
    Scalar tau = cut(cand, want);
    // Tokens whose candidate list is full and entirely >= tau may hide more values >= tau.
    std::vector<Index> redo;
    for (Index t = 0; t < B; ++t)
      if (static_cast<Index>(cand[t].size()) == c && c < Z.rows() && !cand[t].empty() &&
          std::min_element(cand[t].begin(), cand[t].end())->first >= tau)
        redo.push_back(t);
    if (!redo.empty()) {
      Mat<Scalar> z;
      for (Index t : redo) {
        block(t, 1, z);
        top_positive(z.col(0), z.rows(), cand[t]);  // all positive values of the token
      }
      tau = cut(cand, want);
    }
    // Keep values > tau, plus as many values == tau as needed to reach exactly kB.
    Index above = 0;
    for (const auto& v : cand)
      for (const auto& [val, j] : v) above += val > tau;
    Index ties_left = std::max<Index>(0, want - above);
    codes.reset(Z.rows(), B, k);
    for (Index t = 0; t < B; ++t) {
      auto& v = cand[t];
      std::sort(v.begin(), v.end(), [](const Cand& a, const Cand& b2) { return a.second < b2.second; });
      for (const auto& [val, j] : v) {
        const bool keep = val > tau || (val == tau && ties_left > 0);
        if (!keep) continue;
        if (!(val > tau)) --ties_left;
        codes.indices.push_back(j);
        codes.values.push_back(val);
      }
      codes.offsets[t + 1] = codes.nnz();
    }
  }

  template <class Scalar>
  void backward(const SparseCodes<Scalar>&, std::vector<Scalar>&) const {}

  /// Tracks theta from the smallest activation kept in this training step.
  template <class Scalar>
  void after_update(Parameters<Scalar>&, const SparseCodes<Scalar>& codes) {
    if (codes.values.empty()) return;
    const double mn = static_cast<double>(*std::min_element(codes.values.begin(), codes.values.end()));
    if (!threshold_started) {
      threshold = mn;
      threshold_started = true;
    } else {
      threshold += threshold_rate * (mn - threshold);
    }
  }

 private:
  /// out <- the (up to) c largest positive entries of z as (value, index).
  template <class Scalar, class Col>
  static void top_positive(const Col& z, Index c, std::vector<std::pair<Scalar, std::int32_t>>& out) {
    out.clear();
    auto greater = [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); };
    for (Index j = 0; j < z.size(); ++j) {
      const Scalar v = z[j];
      if (!(v > Scalar(0))) continue;
      if (static_cast<Index>(out.size()) < c) {
        out.emplace_back(v, static_cast<std::int32_t>(j));
        std::push_heap(out.begin(), out.end(), greater);
      } else if (v > out.front().first) {
        std::pop_heap(out.begin(), out.end(), greater);
        out.back() = {v, static_cast<std::int32_t>(j)};
        std::push_heap(out.begin(), out.end(), greater);
      }
    }
  }

  /// The want-th largest candidate value (0 if there are fewer candidates than want).
  template <class Scalar>
  static Scalar cut(const std::vector<std::vector<std::pair<Scalar, std::int32_t>>>& cand, Index want) {
    std::vector<Scalar> all;
    for (const auto& v : cand)
      for (const auto& [val, j] : v) all.push_back(val);
    if (static_cast<Index>(all.size()) <= want) return Scalar(0);
    std::nth_element(all.begin(), all.begin() + (want - 1), all.end(), std::greater<Scalar>());
    return all[static_cast<std::size_t>(want - 1)];
  }
};

}  // namespace sae
