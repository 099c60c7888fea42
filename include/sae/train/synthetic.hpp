/// @file sae/train/synthetic.hpp
/// Synthetic superposition data with known ground-truth features (toy models of
/// superposition, Elhage et al. 2022), for checking that an SAE recovers what is there.
#pragma once

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include <Eigen/Core>

#include "../core/parameters.hpp"
#include "../detail/random.hpp"

namespace sae {

/// Settings of make_superposition (defaults are `sae synth`'s).
struct SyntheticOptions {
  Index d_in = 64;             ///< d, dimension of each sample
  Index features = 256;        ///< n, number of ground-truth unit directions
  Index samples = 100000;      ///< N
  double active_prob = 0.016;  ///< p, probability that a feature is active in a sample
  std::uint64_t seed = 7;
};

/// X (d x N, one sample per column) and the true feature directions (d x n, unit columns).
struct SyntheticData {
  Mat<float> X;
  Mat<float> features;
};

namespace detail {

/// n unit directions uniformly on the sphere in R^d (d x n, one per column).
inline Mat<float> unit_directions(Index d, Index n, Rng& rng) {
  Mat<float> out(d, n);
  Eigen::VectorXd u(d);
  for (Index i = 0; i < n; ++i) {
    do {
      for (Index r = 0; r < d; ++r) u[r] = rng.normal();
    } while (u.norm() == 0.0);
    out.col(i) = (u / u.norm()).cast<float>();
  }
  return out;
}

/// The samples of make_superposition: each feature active with probability p (found by
/// geometric skips), with a coefficient c ~ Uniform(0, 1]; X gets sum c u_i (columns of U) and,
/// when @p V is given, Y gets sum c v_i with the same features and coefficients.
inline void superpose(const SyntheticOptions& o, Rng& rng, const Mat<float>& U, Mat<float>& X, const Mat<float>* V,
                      Mat<float>* Y) {
  X.setZero(U.rows(), o.samples);
  if (V) Y->setZero(V->rows(), o.samples);
  const bool all = o.active_prob >= 1.0;
  const double log_q = all ? 0.0 : std::log1p(-o.active_prob);
  Eigen::VectorXd x(U.rows()), y(V ? V->rows() : 0);
  for (Index t = 0; t < o.samples; ++t) {
    x.setZero();
    y.setZero();
    for (Index i = 0;; ++i) {
      if (!all) {
        // number of inactive features before the next active one ~ Geometric(p)
        const double gap = std::floor(std::log(rng.uniform_open0()) / log_q);
        if (gap >= static_cast<double>(o.features - i)) break;
        i += static_cast<Index>(gap);
      }
      if (i >= o.features) break;
      const double c = rng.uniform_open0();
      x += c * U.col(i).cast<double>();
      if (V) y += c * V->col(i).cast<double>();
    }
    X.col(t) = x.cast<float>();
    if (V) Y->col(t) = y.cast<float>();
  }
}

inline void check_options(const SyntheticOptions& o) {
  if (o.d_in <= 0 || o.features <= 0 || o.samples <= 0)
    throw std::invalid_argument("synthetic data: d_in, features and samples must be positive");
  if (!(o.active_prob > 0.0 && o.active_prob <= 1.0))
    throw std::invalid_argument("synthetic data: active probability must be in (0, 1], got " +
                                std::to_string(o.active_prob));
}

}  // namespace detail

/// Draws n unit directions uniformly on the sphere in R^d, then every sample
///
///     x = sum_i a_i c_i u_i,   a_i ~ Bernoulli(p) independently,  c_i ~ Uniform(0, 1]
///
/// (so a sample has n p active features on average). Active features are found by geometric
/// skips (gap ~ Geometric(p)), which draws exactly the same Bernoulli process in O(n p) per
/// sample. The same options and seed give bit-identical data on every machine.
inline SyntheticData make_superposition(const SyntheticOptions& o) {
  detail::check_options(o);
  detail::Rng rng(o.seed);
  SyntheticData out;
  out.features = detail::unit_directions(o.d_in, o.features, rng);
  detail::superpose(o, rng, out.features, out.X, nullptr, nullptr);
  return out;
}

/// Paired data for transcoders: inputs X as make_superposition draws them and targets Y.
struct SyntheticPairs {
  Mat<float> X;             ///< d_in x N
  Mat<float> Y;             ///< d_out x N
  Mat<float> features;      ///< d_in x n, the input directions u_i (unit)
  Mat<float> out_features;  ///< d_out x n, the output directions v_i = A's columns (unit)
  Mat<float> linear;        ///< d_out x d_in, M (zero unless linear_scale > 0)
};

/// Every sample as in make_superposition (the same X for the same options, before the input
/// noise) plus optional dense input noise g, x = sum_i a_i c_i u_i + g (g ~ N(0, input_noise^2)
/// per coordinate), and its target
///
///     y = sum_i a_i c_i v_i + M x + noise,   noise ~ N(0, noise^2) per coordinate
///
/// with v_i unit directions in R^{d_out} (a transcoder's decoder should find them) and M a
/// dense d_out x d_in map with N(0, linear_scale^2 / d_in) entries. Without g, M x = sum c_i M u_i
/// is absorbed into the features' output directions (v_i + M u_i), so M is not identifiable;
/// with g, only a skip transcoder's W_skip can carry M g, and W_skip = M is the exact fit.
/// The same options and seed give bit-identical data on every machine.
inline SyntheticPairs make_transcoder_pairs(const SyntheticOptions& o, Index d_out, double linear_scale = 0.0,
                                            double noise = 0.0, double input_noise = 0.0) {
  detail::check_options(o);
  if (d_out <= 0) throw std::invalid_argument("synthetic pairs: d_out must be positive");
  if (!(linear_scale >= 0.0) || !(noise >= 0.0) || !(input_noise >= 0.0))
    throw std::invalid_argument("synthetic pairs: linear scale and noise must be >= 0");
  SyntheticPairs out;
  detail::Rng rng(o.seed), extra(o.seed ^ 0x7a11c0de5eedULL);
  out.features = detail::unit_directions(o.d_in, o.features, rng);
  out.out_features = detail::unit_directions(d_out, o.features, extra);
  detail::superpose(o, rng, out.features, out.X, &out.out_features, &out.Y);
  out.linear.setZero(d_out, o.d_in);
  if (linear_scale > 0)
    for (Index j = 0; j < o.d_in; ++j)
      for (Index r = 0; r < d_out; ++r)
        out.linear(r, j) = static_cast<float>(linear_scale / std::sqrt(double(o.d_in)) * extra.normal());
  if (input_noise > 0)  // a dense part of x no feature explains: only W_skip can carry M g to y
    for (Index t = 0; t < o.samples; ++t)
      for (Index r = 0; r < o.d_in; ++r) out.X(r, t) += static_cast<float>(input_noise * extra.normal());
  if (linear_scale > 0) out.Y += out.linear * out.X;
  if (noise > 0)
    for (Index t = 0; t < o.samples; ++t)
      for (Index r = 0; r < d_out; ++r) out.Y(r, t) += static_cast<float>(noise * extra.normal());
  return out;
}

}  // namespace sae
