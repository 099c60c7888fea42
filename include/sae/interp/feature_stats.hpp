/// @file sae/interp/feature_stats.hpp
/// Streaming per-latent statistics of codes: firing frequency (feature density), dead and dense
/// latents, and activation quantiles from a fixed-size uniform sample of each latent's
/// activations (the histogram and "quantile interval" examples feature dashboards show).
///
/// Over N tokens with codes f_tj (m latents):
///
///     count_j      = #{t : f_tj != 0}
///     frequency_j  = count_j / N                          (feature density, in [0, 1])
///     mean_j       = (1/count_j) sum_t f_tj               (mean activation when firing)
///     dead         = {j : count_j = 0}
///     dense        = {j : frequency_j > threshold}        (SAELens-style, e.g. threshold 0.1)
///     histogram    = counts of log10(frequency_j) in equal bins, dead latents counted apart
///
/// Quantiles: ActivationSampler keeps for each latent a uniform random sample (without
/// replacement) of R of its nonzero activations with their example index (reservoir sampling,
/// Vitter's algorithm R). The q-quantile is read from the sorted sample with linear
/// interpolation between order statistics (NumPy's default "linear" method):
///
///     s_0 <= ... <= s_{n-1},  h = q (n - 1),  Q(q) = s_floor(h) + (h - floor(h)) (s_ceil(h) - s_floor(h))
///
/// which is exact while a latent has fired at most R times. The replacement decision for the
/// c-th activation of latent j is a hash of (seed, j, c), so the sample does not depend on batch
/// sizes or on how latents were split among threads. Both classes merge(): counts add; two
/// samples of sizes a, b of streams with c_a, c_b activations merge into a uniform sample of
/// the union by drawing each of the min(R, c_a + c_b) slots from stream A with probability
/// (activations of A not yet drawn) / (activations of both not yet drawn).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include <Eigen/Core>

#include "../core/parameters.hpp"
#include "../core/sparse_codes.hpp"
#include "../detail/omp.hpp"
#include "../detail/random.hpp"
#include "top_examples.hpp"

namespace sae::interp {

namespace detail::stats {

/// Splits latents [0, m) among the threads of a parallel region: calls f(j0, j1) once per
/// thread with its contiguous range (so per-latent state has one writer).
template <class F>
void for_latent_ranges(Index m, bool parallel, F&& f) {
  SAE_OMP(parallel if (parallel)) {
#ifdef _OPENMP
    const Index nt = omp_get_num_threads(), id = omp_get_thread_num();
#else
    const Index nt = 1, id = 0;
#endif
    f(m * id / nt, m * (id + 1) / nt);
  }
}

/// A 64-bit hash of three integers (splitmix64 finalisers).
inline std::uint64_t hash3(std::uint64_t a, std::uint64_t b, std::uint64_t c) {
  std::uint64_t x = a ^ (b * 0x9E3779B97F4A7C15ULL);
  std::uint64_t h = sae::detail::splitmix64(x);
  x = h ^ (c * 0xD1B54A32D192ED03ULL);
  return sae::detail::splitmix64(x);
}

/// Calls f(j, value, t) for every nonzero code (dense: latents split among threads).
template <class Scalar, class F>
void for_each_active(const Mat<Scalar>& F_, F&& f) {
  const Index B = F_.cols();
  for_latent_ranges(F_.rows(), sae::detail::parallel_worth(sae::detail::streamed(F_.size())), [&](Index j0, Index j1) {
    for (Index t = 0; t < B; ++t)
      for (Index j = j0; j < j1; ++j) {
        const Scalar v = F_(j, t);
        if (v != Scalar(0)) f(j, v, t);
      }
  });
}
template <class Scalar, class F>
void for_each_active(const SparseCodes<Scalar>& c, F&& f) {
  for (Index t = 0; t < c.tokens(); ++t)
    for (Index i = c.offsets[t]; i < c.offsets[t + 1]; ++i) {
      const Scalar v = c.values[static_cast<std::size_t>(i)];
      if (v != Scalar(0)) f(static_cast<Index>(c.indices[static_cast<std::size_t>(i)]), v, t);
    }
}

template <class Scalar>
Index code_rows(const SparseCodes<Scalar>& c) {
  return c.d_sae;
}
template <class Scalar>
Index code_rows(const Mat<Scalar>& F) {
  return F.rows();
}
template <class Scalar>
Index code_tokens(const SparseCodes<Scalar>& c) {
  return c.tokens();
}
template <class Scalar>
Index code_tokens(const Mat<Scalar>& F) {
  return F.cols();
}

}  // namespace detail::stats

/// Histogram of log10(feature density) over the latents that fired; dead latents apart.
struct DensityHistogram {
  double log10_lo = 0, log10_hi = 0;  ///< range of the bins (log10 of frequency)
  std::vector<std::int64_t> counts;   ///< latents per bin; bin i = [lo + i w, lo + (i+1) w)
  std::int64_t dead = 0;              ///< latents that never fired (not in any bin)

  double bin_width() const { return counts.empty() ? 0 : (log10_hi - log10_lo) / static_cast<double>(counts.size()); }
  double bin_lo(std::size_t i) const { return log10_lo + static_cast<double>(i) * bin_width(); }
};

/// Firing counts and activation sums per latent (see the file comment).
class FeatureDensity {
 public:
  FeatureDensity() = default;
  explicit FeatureDensity(Index d_sae)
      : count_(static_cast<std::size_t>(d_sae), 0), sum_(static_cast<std::size_t>(d_sae), 0.0) {
    if (d_sae <= 0) throw std::invalid_argument("FeatureDensity: d_sae must be positive");
  }

  Index d_sae() const { return static_cast<Index>(count_.size()); }
  std::int64_t tokens() const { return tokens_; }

  /// Adds a batch of codes (dense m x B or sparse).
  template <class Codes>
  void add(const Codes& codes) {
    if (detail::stats::code_rows(codes) != d_sae())
      throw std::invalid_argument(
          "FeatureDensity: codes have d_sae=" + std::to_string(detail::stats::code_rows(codes)) + ", expected " +
          std::to_string(d_sae()));
    detail::stats::for_each_active(codes, [&](Index j, auto v, Index) {
      ++count_[static_cast<std::size_t>(j)];
      sum_[static_cast<std::size_t>(j)] += static_cast<double>(v);
    });
    tokens_ += detail::stats::code_tokens(codes);
  }

  void merge(const FeatureDensity& o) {
    if (o.d_sae() != d_sae()) throw std::invalid_argument("FeatureDensity::merge: d_sae differs");
    for (std::size_t j = 0; j < count_.size(); ++j) {
      count_[j] += o.count_[j];
      sum_[j] += o.sum_[j];
    }
    tokens_ += o.tokens_;
  }

  std::int64_t count(Index j) const { return count_[static_cast<std::size_t>(j)]; }
  /// Sum of latent j's activations over all tokens.
  double sum(Index j) const { return sum_[static_cast<std::size_t>(j)]; }
  /// count_j / N (0 before any token).
  double frequency(Index j) const {
    return tokens_ > 0 ? static_cast<double>(count(j)) / static_cast<double>(tokens_) : 0.0;
  }
  /// Mean activation over the tokens where latent j fired (0 if it never fired).
  double mean_when_active(Index j) const { return count(j) > 0 ? sum(j) / static_cast<double>(count(j)) : 0.0; }

  /// Latents that never fired, in increasing order.
  std::vector<Index> dead_latents() const {
    std::vector<Index> v;
    for (Index j = 0; j < d_sae(); ++j)
      if (count(j) == 0) v.push_back(j);
    return v;
  }
  /// Latents whose frequency exceeds @p threshold, in increasing order.
  std::vector<Index> dense_latents(double threshold = 0.1) const {
    std::vector<Index> v;
    for (Index j = 0; j < d_sae(); ++j)
      if (frequency(j) > threshold) v.push_back(j);
    return v;
  }

  /// Histogram of log10(frequency) of the latents that fired, @p bins equal bins over
  /// [log10_lo, log10_hi]; values outside are clamped into the first / last bin. Defaults
  /// (NaN): lo = floor(log10(1/N)) (the rarest possible nonzero frequency), hi = 0.
  DensityHistogram log10_histogram(int bins = 40, double log10_lo = std::numeric_limits<double>::quiet_NaN(),
                                   double log10_hi = std::numeric_limits<double>::quiet_NaN()) const {
    if (bins <= 0) throw std::invalid_argument("log10_histogram: bins must be positive");
    DensityHistogram h;
    h.log10_lo = std::isnan(log10_lo)
                     ? std::floor(std::log10(1.0 / static_cast<double>(std::max<std::int64_t>(tokens_, 1))))
                     : log10_lo;
    h.log10_hi = std::isnan(log10_hi) ? 0.0 : log10_hi;
    if (!(h.log10_hi > h.log10_lo)) h.log10_hi = h.log10_lo + 1;
    h.counts.assign(static_cast<std::size_t>(bins), 0);
    const double w = h.bin_width();
    for (Index j = 0; j < d_sae(); ++j) {
      if (count(j) == 0) {
        ++h.dead;
        continue;
      }
      const double x = std::log10(frequency(j));
      const auto b = static_cast<std::ptrdiff_t>(std::floor((x - h.log10_lo) / w));
      ++h.counts[static_cast<std::size_t>(std::clamp<std::ptrdiff_t>(b, 0, bins - 1))];
    }
    return h;
  }

 private:
  std::vector<std::int64_t> count_;
  std::vector<double> sum_;
  std::int64_t tokens_ = 0;
};

/// One quantile interval of a latent's activations with sampled examples in it.
struct QuantileInterval {
  double q_lo = 0, q_hi = 0;         ///< quantile range, e.g. 0.5 .. 0.75
  float value_lo = 0, value_hi = 0;  ///< activation range of the sampled values in it
  std::vector<Activation> examples;  ///< up to the requested number, evenly spread, highest first
};

/// Fixed-size uniform sample of every latent's nonzero activations (see the file comment).
class ActivationSampler {
 public:
  ActivationSampler() = default;
  /// Samples up to @p capacity activations per latent of @p d_sae latents.
  ActivationSampler(Index d_sae, Index capacity, std::uint64_t seed = 0)
      : m_(d_sae),
        r_(capacity),
        seed_(seed),
        samples_(static_cast<std::size_t>(d_sae * capacity)),
        size_(static_cast<std::size_t>(d_sae), 0),
        seen_(static_cast<std::size_t>(d_sae), 0) {
    if (d_sae <= 0 || capacity <= 0)
      throw std::invalid_argument("ActivationSampler: d_sae and capacity must be positive");
  }

  Index d_sae() const { return m_; }
  Index capacity() const { return r_; }

  /// Offers one activation of latent @p j (ignored when value == 0).
  void push(Index j, float value, std::int64_t example) {
    if (value == 0.0f) return;
    const auto uj = static_cast<std::size_t>(j);
    const std::int64_t c = ++seen_[uj];
    Activation* s = slot(j);
    if (size_[uj] < r_) {
      s[size_[uj]++] = {value, example};
      return;
    }
    const std::uint64_t r = detail::stats::hash3(seed_, static_cast<std::uint64_t>(j), static_cast<std::uint64_t>(c)) %
                            static_cast<std::uint64_t>(c);
    if (r < static_cast<std::uint64_t>(r_)) s[r] = {value, example};
  }

  /// Adds a batch of codes; token t is example first_example + t.
  template <class Codes>
  void add(const Codes& codes, std::int64_t first_example) {
    if (detail::stats::code_rows(codes) != m_)
      throw std::invalid_argument("ActivationSampler: codes have d_sae=" +
                                  std::to_string(detail::stats::code_rows(codes)) + ", expected " + std::to_string(m_));
    detail::stats::for_each_active(
        codes, [&](Index j, auto v, Index t) { push(j, static_cast<float>(v), first_example + t); });
  }

  /// Merges a sampler of the same shape that saw a disjoint stream (see the file comment).
  void merge(const ActivationSampler& o) {
    if (o.m_ != m_ || o.r_ != r_) throw std::invalid_argument("ActivationSampler::merge: shapes differ");
    std::vector<Activation> a, b, out;
    for (Index j = 0; j < m_; ++j) {
      const auto uj = static_cast<std::size_t>(j);
      std::int64_t ca = seen_[uj], cb = o.seen_[uj];
      if (cb == 0) continue;
      a.assign(slot(j), slot(j) + size_[uj]);
      b.assign(o.slot(j), o.slot(j) + o.size_[uj]);
      out.clear();
      if (ca + cb <= r_) {
        out = a;
        out.insert(out.end(), b.begin(), b.end());
      } else {
        sae::detail::Rng rng(
            detail::stats::hash3(seed_ ^ 0x6d657267ULL, static_cast<std::uint64_t>(j),
                                 static_cast<std::uint64_t>(ca) * 0x100000001B3ULL + static_cast<std::uint64_t>(cb)));
        // Draw from A or B without replacement, then take that many random items of each sample.
        Index from_a = 0, from_b = 0;
        std::int64_t ra = ca, rb = cb;
        for (Index i = 0; i < r_; ++i) {
          const std::uint64_t u = rng.below(static_cast<std::uint64_t>(ra + rb));
          if (u < static_cast<std::uint64_t>(ra))
            ++from_a, --ra;
          else
            ++from_b, --rb;
        }
        take_random(a, from_a, rng, out);
        take_random(b, from_b, rng, out);
      }
      std::copy(out.begin(), out.end(), slot(j));
      size_[uj] = static_cast<Index>(out.size());
      seen_[uj] = ca + cb;
    }
  }

  /// Activations of latent j seen so far (nonzero ones).
  std::int64_t seen(Index j) const { return seen_[static_cast<std::size_t>(j)]; }
  /// True when the sample holds every activation of latent j (then quantiles are exact).
  bool exact(Index j) const { return seen(j) <= r_; }

  /// The sample of latent j sorted by value, highest first (ties: lower example first).
  std::vector<Activation> sample(Index j) const {
    std::vector<Activation> v(slot(j), slot(j) + size_[static_cast<std::size_t>(j)]);
    std::sort(v.begin(), v.end(), ranks_before);
    return v;
  }

  /// The q-quantile (q in [0, 1]) of latent j's nonzero activations (linear interpolation,
  /// see the file comment); NaN if the latent never fired.
  double quantile(Index j, double q) const {
    std::vector<float> v(static_cast<std::size_t>(size_[static_cast<std::size_t>(j)]));
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = slot(j)[i].value;
    return sorted_quantile(v, q, /*sorted=*/false);
  }

  /// Several quantiles of latent j at once (one sort).
  std::vector<double> quantiles(Index j, const std::vector<double>& qs) const {
    std::vector<float> v(static_cast<std::size_t>(size_[static_cast<std::size_t>(j)]));
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = slot(j)[i].value;
    std::sort(v.begin(), v.end());
    std::vector<double> out;
    for (double q : qs) out.push_back(sorted_quantile(v, q, /*sorted=*/true));
    return out;
  }

  /// Splits latent j's sample into @p intervals equal-count quantile intervals (highest
  /// first) and returns up to @p per_interval examples from each, evenly spread in value.
  std::vector<QuantileInterval> intervals(Index j, int intervals, Index per_interval) const {
    std::vector<QuantileInterval> out;
    const std::vector<Activation> s = sample(j);  // highest first
    const auto n = static_cast<Index>(s.size());
    if (n == 0 || intervals <= 0) return out;
    for (int k = 0; k < intervals; ++k) {
      // Interval k covers quantiles [1 - (k+1)/K, 1 - k/K]: sorted-descending positions [a, b).
      const Index a = n * k / intervals, b = n * (k + 1) / intervals;
      QuantileInterval qi;
      qi.q_hi = 1.0 - static_cast<double>(k) / intervals;
      qi.q_lo = 1.0 - static_cast<double>(k + 1) / intervals;
      if (b > a) {
        qi.value_hi = s[static_cast<std::size_t>(a)].value;
        qi.value_lo = s[static_cast<std::size_t>(b - 1)].value;
        const Index take = std::min(per_interval, b - a);
        for (Index i = 0; i < take; ++i) {
          const Index p = a + (take == 1 ? (b - a) / 2 : i * (b - a - 1) / (take - 1));
          qi.examples.push_back(s[static_cast<std::size_t>(p)]);
        }
      }
      out.push_back(std::move(qi));
    }
    return out;
  }

  /// Quantile of values @p v (sorted ascending if @p sorted, else sorted here).
  static double sorted_quantile(std::vector<float>& v, double q, bool sorted) {
    if (v.empty()) return std::numeric_limits<double>::quiet_NaN();
    if (!sorted) std::sort(v.begin(), v.end());
    q = std::clamp(q, 0.0, 1.0);
    const double h = q * static_cast<double>(v.size() - 1);
    const auto lo = static_cast<std::size_t>(std::floor(h));
    const std::size_t hi = std::min(lo + 1, v.size() - 1);
    return static_cast<double>(v[lo]) +
           (h - static_cast<double>(lo)) * (static_cast<double>(v[hi]) - static_cast<double>(v[lo]));
  }

 private:
  Activation* slot(Index j) { return samples_.data() + j * r_; }
  const Activation* slot(Index j) const { return samples_.data() + j * r_; }

  /// Appends @p k items of @p src chosen uniformly without replacement (partial Fisher-Yates).
  static void take_random(std::vector<Activation>& src, Index k, sae::detail::Rng& rng, std::vector<Activation>& out) {
    const auto n = static_cast<Index>(src.size());
    k = std::min(k, n);
    for (Index i = 0; i < k; ++i) {
      const Index r = i + static_cast<Index>(rng.below(static_cast<std::uint64_t>(n - i)));
      std::swap(src[static_cast<std::size_t>(i)], src[static_cast<std::size_t>(r)]);
      out.push_back(src[static_cast<std::size_t>(i)]);
    }
  }

  Index m_ = 0, r_ = 0;
  std::uint64_t seed_ = 0;
  std::vector<Activation> samples_;
  std::vector<Index> size_;
  std::vector<std::int64_t> seen_;
};

}  // namespace sae::interp
