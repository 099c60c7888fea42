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
#include "../core/collectives.hpp"
#include "../core/fused_encoder.hpp"
#include "../core/parameters.hpp"
#include "../core/policies.hpp"
#include "../core/sparse_codes.hpp"
#include "../detail/omp.hpp"

namespace sae {

/// Training: f = relu(z) restricted to the k*B largest values of the batch, so tokens get
/// varying numbers of latents with mean k. Inference: one global threshold theta,
/// f_tj = z_tj 1[z_tj > theta], where theta tracks the smallest kept activation of each
/// training batch (theta <- theta + rate (min_kept - theta), the first batch's value copied),
/// so a token needs no batch; saved as a "jumprelu" SAE with theta for every latent.
///
/// Selection never sorts all B*m values. The fused encoder keeps each token's
/// c = min(m, 2k + 8) largest positive values as candidates; one nth_element over the
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
  static constexpr std::string_view family = "batchtopk";
  static constexpr bool uses_k = true;

  Index k = 0;                   ///< mean active latents per token
  double threshold = 0.0;        ///< theta, inference threshold (0 until the first training step)
  double threshold_rate = 0.01;  ///< EMA rate of theta
  bool threshold_started = false;
  /// Data-parallel training (sae/train/distributed.hpp sets it for the run): the batch is split
  /// over the ranks, and the selection and the threshold are taken over the whole batch.
  Collectives* collectives = nullptr;

  void configure(const SaeConfig& cfg) { k = static_cast<Index>(cfg.k); }

  /// The inference threshold and whether it has started, in the checkpoint's "activation".
  void save_state(PolicyState& s) const {
    s.put("threshold", threshold);
    s.values["threshold_started"] = threshold_started;
  }
  void load_state(const PolicyState& s) {
    threshold = s.get("threshold");
    threshold_started = s.values.at("threshold_started").get<bool>();
  }

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

  /// Training selection over the whole batch of B tokens. @p top_c(cap, values, indices, count)
  /// writes every token's cap largest positive pre-activations (sorted by latent) into fixed
  /// slots (the fused encoder); @p preactivations(t, z) computes all m pre-activations of token t
  /// (for the rare tokens whose candidates may hide more); @p buf holds the candidate buffers
  /// between steps.
  template <class Scalar, class TopC, class Preact>
  void select_batch(Index B, Index m, TopC&& top_c, Preact&& preactivations, SparseCodes<Scalar>& codes,
                    kernels::EncoderState<Scalar>& buf) const {
    if (k <= 0) throw std::invalid_argument("BatchTopK: k must be positive");
    const Index c = std::min<Index>(std::max<Index>(1, 2 * k + 8), m);
    buf.cand_values.resize(static_cast<std::size_t>(B * c));
    buf.cand_indices.resize(static_cast<std::size_t>(B * c));
    buf.cand_count.resize(static_cast<std::size_t>(B));
    const Scalar* cv = buf.cand_values.data();
    const std::int32_t* ci = buf.cand_indices.data();
    const Index* cn = buf.cand_count.data();
    top_c(c, buf.cand_values.data(), buf.cand_indices.data(), buf.cand_count.data());

    // Tokens whose candidate list is full and entirely >= tau may hide more values >= tau: those
    // get all their positive values (redo), and the cut is taken again. Data-parallel: B is this
    // rank's share, and the cut is taken over every rank's values (global_cut).
    const bool split = collectives != nullptr && collectives->size() > 1;
    const Index want = k * (split ? global_tokens(B) : B);
    Index ties_for_me = -1;  // data-parallel: the ties at tau this rank may keep
    std::vector<std::vector<std::pair<Scalar, std::int32_t>>> redo;  // (token's values), rare
    std::vector<Index> redo_token;
    auto cut_now = [&]() {
      buf.cut.clear();
      std::size_t r = 0;
      for (Index t = 0; t < B; ++t) {
        if (r < redo_token.size() && redo_token[r] == t) {
          for (const auto& e : redo[r]) buf.cut.push_back(e.first);
          ++r;
        } else {
          buf.cut.insert(buf.cut.end(), cv + t * c, cv + t * c + cn[t]);
        }
      }
      if (split) return global_cut(buf.cut, want, ties_for_me);
      return cut(buf.cut, want);
    };
    Scalar tau = cut_now();
    if (c < m) {
      Vec<Scalar> z;
      for (Index t = 0; t < B; ++t) {
        if (cn[t] != c) continue;
        const Scalar lowest = *std::min_element(cv + t * c, cv + t * c + c);
        if (!(lowest >= tau)) continue;
        preactivations(t, z);
        auto& all = redo.emplace_back();
        for (Index j = 0; j < m; ++j)
          if (z[j] > Scalar(0)) all.emplace_back(z[j], static_cast<std::int32_t>(j));
        redo_token.push_back(t);
      }
      std::uint8_t again = !redo_token.empty();
      if (split) collectives->any(&again, 1);  // every rank takes part in the second cut
      if (again) tau = cut_now();
    }

    // Keep values > tau, plus as many values == tau as needed to reach exactly kB, in token and
    // latent order.
    Index above = 0;
    for (const Scalar v : buf.cut) above += v > tau;
    Index ties_left = split ? ties_for_me : std::max<Index>(0, want - above);
    codes.reset(m, B, k);
    std::size_t r = 0;
    auto keep = [&](Scalar val, std::int32_t j) {
      const bool kept = val > tau || (val == tau && ties_left > 0);
      if (!kept) return;
      if (!(val > tau)) --ties_left;
      codes.indices.push_back(j);
      codes.values.push_back(val);
    };
    for (Index t = 0; t < B; ++t) {
      if (r < redo_token.size() && redo_token[r] == t) {
        for (const auto& [val, j] : redo[r]) keep(val, j);
        ++r;
      } else {
        for (Index i = 0; i < cn[t]; ++i) keep(cv[t * c + i], ci[t * c + i]);
      }
      codes.offsets[t + 1] = codes.nnz();
    }
  }

  template <class Scalar>
  void backward(const SparseCodes<Scalar>&, std::vector<Scalar>&) const {}

  /// Tracks theta from the smallest activation kept in this training step.
  template <class Scalar>
  void after_update(Parameters<Scalar>&, const SparseCodes<Scalar>& codes) {
    double mn = codes.values.empty() ? HUGE_VAL
                                     : static_cast<double>(*std::min_element(codes.values.begin(), codes.values.end()));
    if (collectives != nullptr && collectives->size() > 1) {  // the smallest kept value of the whole batch
      std::vector<double> all(static_cast<std::size_t>(collectives->size()));
      collectives->allgather(&mn, 1, all.data());
      mn = *std::min_element(all.begin(), all.end());
    }
    if (!(mn < HUGE_VAL)) return;
    if (!threshold_started) {
      threshold = mn;
      threshold_started = true;
    } else {
      threshold += threshold_rate * (mn - threshold);
    }
  }

 private:
  /// Tokens of the whole batch: the sum of every rank's share.
  Index global_tokens(Index B) const {
    std::vector<double> all(static_cast<std::size_t>(collectives->size()));
    const double mine = static_cast<double>(B);
    collectives->allgather(&mine, 1, all.data());
    double total = 0;
    for (const double v : all) total += v;
    return static_cast<Index>(total);
  }

  /// The cut over every rank's values (@p mine: this rank's, in token order), and in
  /// @p ties_for_me how many values equal to it this rank keeps: of the want - (values above
  /// the cut) ties the batch keeps, in token order, those left after the ranks before this one.
  template <class Scalar>
  Scalar global_cut(const std::vector<Scalar>& mine, Index want, Index& ties_for_me) const {
    std::vector<Scalar> all, sorted;
    std::vector<std::size_t> counts;
    collectives->allgatherv(mine.data(), mine.size(), all, counts);
    sorted = all;
    const Scalar tau = cut(sorted, want);
    Index above = 0, ties_before = 0;
    std::size_t before = 0;
    for (int q = 0; q < collectives->rank(); ++q) before += counts[static_cast<std::size_t>(q)];
    for (std::size_t i = 0; i < all.size(); ++i) {
      above += all[i] > tau;
      if (i < before) ties_before += all[i] == tau;
    }
    ties_for_me = std::max<Index>(0, std::max<Index>(0, want - above) - ties_before);
    return tau;
  }

  /// The want-th largest of @p all (reordered), or 0 if there are no more than want values.
  template <class Scalar>
  static Scalar cut(std::vector<Scalar>& all, Index want) {
    if (static_cast<Index>(all.size()) <= want) return Scalar(0);
    std::nth_element(all.begin(), all.begin() + (want - 1), all.end(), std::greater<Scalar>());
    return all[static_cast<std::size_t>(want - 1)];
  }
};

}  // namespace sae
