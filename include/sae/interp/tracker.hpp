/// @file sae/interp/tracker.hpp
/// FeatureTracker: everything a feature dashboard needs from one pass over the data — the
/// top-activating examples (TopActivations), firing frequencies (FeatureDensity) and a
/// quantile sample (ActivationSampler) of every latent — and analyze(), which runs a model
/// over a batch source (encode.hpp) once and fills a tracker plus the evaluation metrics.
///
/// Trackers are mergeable: give each thread (or each shard of a dataset) its own, with the
/// true example indices, and merge() them; top examples and densities come out identical to
/// a single pass, the quantile sample is again a uniform sample of the union.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <type_traits>

#include <Eigen/Core>

#include "../core/parameters.hpp"
#include "../metrics/metrics.hpp"
#include "encode.hpp"
#include "feature_stats.hpp"
#include "top_examples.hpp"

namespace sae::interp {

/// Sizes of a FeatureTracker.
struct TrackerOptions {
  Index top_n = 16;         ///< top-activating examples kept per latent
  Index sample_size = 256;  ///< activations sampled per latent for quantiles (R)
  std::uint64_t seed = 0;   ///< seed of the quantile sample
};

/// The three per-latent statistics, fed together (see the file comment).
class FeatureTracker {
 public:
  FeatureTracker() = default;
  FeatureTracker(Index d_sae, const TrackerOptions& o = {})
      : top_(d_sae, o.top_n), density_(d_sae), sampler_(d_sae, o.sample_size, o.seed) {}

  /// Adds a batch of codes (dense m x B or SparseCodes); token t is example first_example + t.
  template <class Codes>
  void add(const Codes& codes, std::int64_t first_example) {
    top_.add(codes, first_example);
    density_.add(codes);
    sampler_.add(codes, first_example);
  }

  void merge(const FeatureTracker& o) {
    top_.merge(o.top_);
    density_.merge(o.density_);
    sampler_.merge(o.sampler_);
  }

  Index d_sae() const { return density_.d_sae(); }
  std::int64_t tokens() const { return density_.tokens(); }
  const TopActivations& top() const { return top_; }
  const FeatureDensity& density() const { return density_; }
  const ActivationSampler& sampler() const { return sampler_; }

 private:
  TopActivations top_;
  FeatureDensity density_;
  ActivationSampler sampler_;
};

/// Options of analyze().
struct AnalyzeOptions {
  TrackerOptions tracker;
  Index batch = 4096;  ///< tokens per encoded batch
  Index limit = 0;     ///< analyse only the first `limit` tokens (0: all)
  /// Called after every batch with (tokens done, tokens total), e.g. for progress on stderr.
  std::function<void(Index, Index)> on_progress;
};

/// Result of analyze(): the tracker and the usual metrics (l0, mse, fvu, dead fraction).
struct Analysis {
  FeatureTracker tracker;
  EvalMetrics metrics;
  double seconds = 0;
};

/// Encodes (and decodes, for the metrics) the first `limit` tokens of @p source in batches,
/// feeding every batch's codes to a FeatureTracker. Memory: one batch of codes and
/// reconstructions plus the tracker (m * (top_n + sample_size) entries).
template <class Model, class Source>
Analysis analyze(const Model& model, const Source& source, const AnalyzeOptions& opt = {}) {
  using Scalar = typename Model::scalar_type;
  const auto t_start = std::chrono::steady_clock::now();
  const Index N = opt.limit > 0 ? std::min(opt.limit, source.tokens()) : source.tokens();
  if (N <= 0) throw std::invalid_argument("analyze: no tokens");
  Analysis out{FeatureTracker(model.d_sae(), opt.tracker), {}, 0};
  MetricsAccumulator metrics(model.d_in(), model.d_sae());
  Mat<Scalar> X_hat;
  Mat<Scalar> Xs;
  encode_batches(
      model, source, opt.batch,
      [&](Index t0, const auto& codes, const Eigen::Map<const Mat<float>>& X) {
        out.tracker.add(codes, t0);
        model.decode(codes, X_hat);
        if constexpr (std::is_same_v<Scalar, float>) {
          metrics.add(X, X_hat, codes);
        } else {
          Xs = X.template cast<Scalar>();
          metrics.add(Xs, X_hat, codes);
        }
        if (opt.on_progress) opt.on_progress(t0 + X.cols(), N);
      },
      0, N);
  out.metrics = metrics.finish();
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  return out;
}

}  // namespace sae::interp
