/// @file sae/interp/top_examples.hpp
/// TopActivations: for every latent, the N highest activations seen in a stream of codes,
/// with the index of the example (token) each came from.
///
/// For latent j the tracker keeps the n = `per_latent` best entries (value, example) of
///
///     { (f_tj, t) : f_tj != 0 }        over every token t added so far,
///
/// ranked by value, higher first, and on equal values by example index, lower first. That is
/// a strict total order, so the kept set is unique: the result does not depend on batch
/// sizes, on the order the batches arrive in, nor on how the stream was split among trackers
/// that were merged afterwards (merge()).
///
/// Storage: one flat array of m * n entries, a bounded min-heap per latent (the weakest kept
/// entry at the front, so a candidate that cannot enter is rejected with one comparison).
/// add() of B tokens costs O(nnz) comparisons plus O(log n) per entry that enters a heap.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include <Eigen/Core>

#include "../core/parameters.hpp"
#include "../core/sparse_codes.hpp"
#include "../detail/omp.hpp"

namespace sae::interp {

/// One kept activation: the code value and the 0-based example (token) index.
struct Activation {
  float value = 0;
  std::int64_t example = 0;
  friend bool operator==(const Activation&, const Activation&) = default;
};

/// True when @p a ranks before @p b: higher value, or equal value and lower example index.
inline bool ranks_before(const Activation& a, const Activation& b) {
  return a.value > b.value || (a.value == b.value && a.example < b.example);
}

/// The per-latent top-n tracker (see the file comment).
class TopActivations {
 public:
  TopActivations() = default;
  /// Tracks the @p per_latent highest activations of each of @p d_sae latents.
  TopActivations(Index d_sae, Index per_latent)
      : m_(d_sae),
        n_(per_latent),
        entries_(static_cast<std::size_t>(d_sae * per_latent)),
        size_(static_cast<std::size_t>(d_sae), 0) {
    if (d_sae <= 0 || per_latent <= 0)
      throw std::invalid_argument("TopActivations: d_sae and per_latent must be positive");
  }

  Index d_sae() const { return m_; }
  Index per_latent() const { return n_; }

  /// Adds one activation of latent @p j (ignored when value == 0).
  void push(Index j, float value, std::int64_t example) {
    if (value == 0.0f) return;
    Activation* h = heap(j);
    Index& s = size_[static_cast<std::size_t>(j)];
    const Activation a{value, example};
    if (s < n_) {
      h[s++] = a;
      std::push_heap(h, h + s, ranks_before);
    } else if (ranks_before(a, h[0])) {
      std::pop_heap(h, h + s, ranks_before);
      h[s - 1] = a;
      std::push_heap(h, h + s, ranks_before);
    }
  }

  /// Adds dense codes F (m x B): token t of the batch is example first_example + t. Latents
  /// are split among threads (each heap has one writer).
  template <class Scalar>
  void add(const Mat<Scalar>& F, std::int64_t first_example) {
    check_rows(F.rows());
    const Index B = F.cols();
    SAE_OMP(parallel if (sae::detail::parallel_worth(sae::detail::streamed(F.size())))) {
#ifdef _OPENMP
      const Index nt = omp_get_num_threads(), id = omp_get_thread_num();
#else
      const Index nt = 1, id = 0;
#endif
      const Index j0 = m_ * id / nt, j1 = m_ * (id + 1) / nt;
      for (Index t = 0; t < B; ++t)
        for (Index j = j0; j < j1; ++j) {
          const Scalar v = F(j, t);
          if (v != Scalar(0)) push(j, static_cast<float>(v), first_example + t);
        }
    }
  }

  /// Adds sparse codes: token t of the batch is example first_example + t.
  template <class Scalar>
  void add(const SparseCodes<Scalar>& codes, std::int64_t first_example) {
    check_rows(codes.d_sae);
    for (Index t = 0; t < codes.tokens(); ++t)
      for (Index i = codes.offsets[t]; i < codes.offsets[t + 1]; ++i)
        push(codes.indices[static_cast<std::size_t>(i)], static_cast<float>(codes.values[static_cast<std::size_t>(i)]),
             first_example + t);
  }

  /// Folds another tracker of the same shape into this one (e.g. one per thread or per shard
  /// of the data, with disjoint example indices). The result equals one tracker that saw both
  /// streams.
  void merge(const TopActivations& o) {
    if (o.m_ != m_ || o.n_ != n_)
      throw std::invalid_argument("TopActivations::merge: shapes differ (" + std::to_string(m_) + "x" +
                                  std::to_string(n_) + " vs " + std::to_string(o.m_) + "x" + std::to_string(o.n_) +
                                  ")");
    SAE_OMP(parallel for schedule(static) if (sae::detail::parallel_worth(sae::detail::streamed(m_ * n_))))
    for (Index j = 0; j < m_; ++j) {
      const Activation* src = o.heap(j);
      for (Index i = 0; i < o.size_[static_cast<std::size_t>(j)]; ++i) push(j, src[i].value, src[i].example);
    }
  }

  /// Number of activations kept for latent @p j (min(n, times it fired)).
  Index count(Index j) const { return size_[static_cast<std::size_t>(j)]; }

  /// The kept activations of latent @p j, best first.
  std::vector<Activation> top(Index j) const {
    const Activation* h = heap(j);
    std::vector<Activation> v(h, h + size_[static_cast<std::size_t>(j)]);
    std::sort(v.begin(), v.end(), ranks_before);
    return v;
  }

  /// Highest activation of latent @p j seen so far (0 if it never fired). O(n).
  float max_value(Index j) const {
    const Activation* h = heap(j);
    float best = 0;
    for (Index i = 0; i < size_[static_cast<std::size_t>(j)]; ++i) best = std::max(best, h[i].value);
    return best;
  }

 private:
  Activation* heap(Index j) { return entries_.data() + j * n_; }
  const Activation* heap(Index j) const { return entries_.data() + j * n_; }
  void check_rows(Index m) const {
    if (m != m_)
      throw std::invalid_argument("TopActivations: codes have d_sae=" + std::to_string(m) + ", tracker has " +
                                  std::to_string(m_));
  }

  Index m_ = 0, n_ = 0;
  std::vector<Activation> entries_;
  std::vector<Index> size_;
};

}  // namespace sae::interp
