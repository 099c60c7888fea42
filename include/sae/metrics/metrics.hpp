/// @file sae/metrics/metrics.hpp
/// Evaluation metrics as `sae eval` reports them (DESIGN.md §4): l0, mse, fvu,
/// explained_variance, dead_fraction, and mmcs against ground-truth features.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <Eigen/Core>
#include <nlohmann/json.hpp>

#include "../core/finite.hpp"
#include "../core/kernels.hpp"
#include "../core/parameters.hpp"
#include "../core/sparse_codes.hpp"

namespace sae {

/// Metrics over N evaluated tokens x_t (d values each), codes f_t and reconstructions x_hat_t:
///
///     l0                 = (1/N) sum_t #{j : f_tj != 0}
///     mse                = (1/(N d)) sum_t ||x_t - x_hat_t||^2
///     fvu                = sum_t ||x_t - x_hat_t||^2 / sum_t ||x_t - mean(x)||^2
///     explained_variance = 1 - fvu
///     dead_fraction      = #{j : f_tj = 0 for every t} / m
///     mmcs               = (1/n) sum_i max_j cos(u_i, W_dec[:, j])   (n true features u_i)
struct EvalMetrics {
  std::int64_t tokens = 0;
  double l0 = 0;
  double mse = 0;
  double fvu = 0;
  double explained_variance = 0;
  double dead_fraction = 0;
  std::optional<double> mmcs;

  nlohmann::json to_json() const {
    nlohmann::json j = {{"tokens", tokens},
                        {"l0", l0},
                        {"mse", mse},
                        {"fvu", fvu},
                        {"explained_variance", explained_variance},
                        {"dead_fraction", dead_fraction}};
    if (mmcs) j["mmcs"] = *mmcs;
    return j;
  }
};

/// Streaming accumulator for EvalMetrics: add batches, then finish(). Sums are kept in double;
/// the variance about the running mean is merged batch by batch (Chan et al.'s pairwise
/// update), so no second pass over the data and no cancellation from large means.
class MetricsAccumulator {
 public:
  explicit MetricsAccumulator(Index d_in, Index d_sae)
      : mean_(Eigen::VectorXd::Zero(d_in)), fired_(static_cast<std::size_t>(d_sae), 0) {}

  /// Adds a batch: X and X_hat d x B, codes in either form.
  template <class Derived, class Codes>
  void add(const Eigen::MatrixBase<Derived>& X, const Mat<typename Derived::Scalar>& X_hat, const Codes& codes) {
    const Index B = X.cols();
    if (B == 0) return;
    const Eigen::MatrixXd Xd = X.template cast<double>();
    err_ += (Xd - X_hat.template cast<double>()).squaredNorm();
    const Eigen::VectorXd bmean = Xd.rowwise().mean();
    const double bm2 = (Xd.colwise() - bmean).squaredNorm();
    const double n = static_cast<double>(n_), nb = static_cast<double>(B);
    m2_ += bm2 + (bmean - mean_).squaredNorm() * n * nb / (n + nb);
    mean_ += (bmean - mean_) * (nb / (n + nb));
    n_ += B;
    active_ += static_cast<double>(kernels::count_active(codes));
    mark_fired(codes);
  }

  EvalMetrics finish() const {
    if (n_ == 0) throw std::invalid_argument("metrics: no tokens evaluated");
    EvalMetrics r;
    r.tokens = n_;
    const double n = static_cast<double>(n_);
    r.l0 = active_ / n;
    r.mse = err_ / (n * static_cast<double>(mean_.size()));
    r.fvu = m2_ > 0 ? err_ / m2_ : (err_ > 0 ? std::numeric_limits<double>::infinity() : 0.0);
    r.explained_variance = 1.0 - r.fvu;
    std::size_t dead = 0;
    for (char f : fired_) dead += (f == 0);
    r.dead_fraction = static_cast<double>(dead) / static_cast<double>(fired_.size());
    return r;
  }

 private:
  template <class S>
  void mark_fired(const Mat<S>& F) {
    for (Index j = 0; j < F.rows(); ++j)
      if (!fired_[j] && (F.row(j).array() != S(0)).any()) fired_[j] = 1;
  }
  template <class S>
  void mark_fired(const SparseCodes<S>& c) {
    for (Index i = 0; i < c.nnz(); ++i)
      if (c.values[i] != S(0)) fired_[c.indices[i]] = 1;
  }

  Eigen::VectorXd mean_;
  double m2_ = 0, err_ = 0, active_ = 0;
  std::int64_t n_ = 0;
  std::vector<char> fired_;
};

/// Evaluates @p model on the first @p limit tokens of X (d x N float; limit <= 0: all),
/// in batches of @p batch tokens. NumericalError naming the row if X holds NaN or Inf there
/// (a non-finite token would make every metric meaningless). SAEs only: a transcoder is
/// evaluated against its targets (the overload below).
template <class Model>
EvalMetrics evaluate(const Model& model, const Eigen::Ref<const Mat<float>>& X, Index limit = 0, Index batch = 4096) {
  if (model.config().is_transcoder())
    throw std::invalid_argument(
        "a transcoder is evaluated against targets (the activations it predicts), not its inputs");
  return evaluate(model, X, X, limit, batch);
}

/// Evaluates @p model's output for the inputs X (d_in x N) against the targets Y (d_out x N:
/// X itself for an SAE, what a transcoder predicts): the metrics' x_t is y_t, x_hat_t the output.
template <class Model>
EvalMetrics evaluate(const Model& model, const Eigen::Ref<const Mat<float>>& X, const Eigen::Ref<const Mat<float>>& Y,
                     Index limit = 0, Index batch = 4096) {
  using Scalar = typename Model::scalar_type;
  if (X.rows() != model.d_in())
    throw std::invalid_argument("data has d_in=" + std::to_string(X.rows()) +
                                ", the SAE has d_in=" + std::to_string(model.d_in()));
  if (Y.rows() != model.d_out())
    throw std::invalid_argument("targets have d_out=" + std::to_string(Y.rows()) +
                                ", the transcoder has d_out=" + std::to_string(model.d_out()));
  if (Y.cols() != X.cols())
    throw std::invalid_argument("targets have " + std::to_string(Y.cols()) + " tokens, the inputs " +
                                std::to_string(X.cols()) + ": every input token needs its target");
  const bool paired = Y.data() != X.data();
  const Index N = limit > 0 ? std::min(limit, X.cols()) : X.cols();
  MetricsAccumulator acc(model.d_out(), model.d_sae());
  typename Model::State s;
  typename Model::Codes codes;
  Mat<Scalar> Xb, Yb, Y_hat;
  for (Index t0 = 0; t0 < N; t0 += batch) {
    const Index b = std::min(batch, N - t0);
    Xb = X.middleCols(t0, b).template cast<Scalar>();
    check_finite_tokens(X.middleCols(t0, b), t0, "");
    if (paired) {
      check_finite_tokens(Y.middleCols(t0, b), t0, "targets");
      Yb = Y.middleCols(t0, b).template cast<Scalar>();
    }
    model.encode(Xb, codes, s);
    model.output(Xb, codes, Y_hat);
    acc.add(paired ? Yb : Xb, Y_hat, codes);
  }
  return acc.finish();
}

/// Mean max cosine similarity: for each true feature (column of @p features, d x n), the best
/// cosine with any decoder column of @p W_dec (d x m), averaged over features.
template <class Scalar>
double mmcs(const Mat<Scalar>& W_dec, const Eigen::Ref<const Mat<float>>& features) {
  if (features.rows() != W_dec.rows())
    throw std::invalid_argument("features have dimension " + std::to_string(features.rows()) +
                                ", the decoder's columns have " + std::to_string(W_dec.rows()));
  if (features.cols() == 0) throw std::invalid_argument("mmcs: no features");
  Eigen::MatrixXd U = features.template cast<double>();
  Eigen::MatrixXd W = W_dec.template cast<double>();
  for (Index i = 0; i < U.cols(); ++i)
    if (const double n = U.col(i).norm(); n > 0) U.col(i) /= n;
  for (Index j = 0; j < W.cols(); ++j)
    if (const double n = W.col(j).norm(); n > 0) W.col(j) /= n;
  const Eigen::MatrixXd C = W.transpose() * U;  // m x n cosines
  return C.colwise().maxCoeff().mean();
}

}  // namespace sae
