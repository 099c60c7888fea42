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

/// Draws n unit directions uniformly on the sphere in R^d, then every sample
///
///     x = sum_i a_i c_i u_i,   a_i ~ Bernoulli(p) independently,  c_i ~ Uniform(0, 1]
///
/// (so a sample has n p active features on average). Active features are found by geometric
/// skips (gap ~ Geometric(p)), which draws exactly the same Bernoulli process in O(n p) per
/// sample. The same options and seed give bit-identical data on every machine.
inline SyntheticData make_superposition(const SyntheticOptions& o) {
  if (o.d_in <= 0 || o.features <= 0 || o.samples <= 0)
    throw std::invalid_argument("synthetic data: d_in, features and samples must be positive");
  if (!(o.active_prob > 0.0 && o.active_prob <= 1.0))
    throw std::invalid_argument("synthetic data: active probability must be in (0, 1], got " +
                                std::to_string(o.active_prob));
  detail::Rng rng(o.seed);
  SyntheticData out;
  out.features.resize(o.d_in, o.features);
  for (Index i = 0; i < o.features; ++i) {
    Eigen::VectorXd u(o.d_in);
    do {
      for (Index r = 0; r < o.d_in; ++r) u[r] = rng.normal();
    } while (u.norm() == 0.0);
    out.features.col(i) = (u / u.norm()).cast<float>();
  }
  out.X.setZero(o.d_in, o.samples);
  const bool all = o.active_prob >= 1.0;
  const double log_q = all ? 0.0 : std::log1p(-o.active_prob);
  Eigen::VectorXd x(o.d_in);
  for (Index t = 0; t < o.samples; ++t) {
    x.setZero();
    for (Index i = 0;; ++i) {
      if (!all) {
        // number of inactive features before the next active one ~ Geometric(p)
        const double gap = std::floor(std::log(rng.uniform_open0()) / log_q);
        if (gap >= static_cast<double>(o.features - i)) break;
        i += static_cast<Index>(gap);
      }
      if (i >= o.features) break;
      x += rng.uniform_open0() * out.features.col(i).cast<double>();
    }
    out.X.col(t) = x.cast<float>();
  }
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

/// Every sample as in make_superposition plus optional dense input noise g,
/// x = sum_i a_i c_i u_i + g (g ~ N(0, input_noise^2) per coordinate), and its target
///
///     y = sum_i a_i c_i v_i + M x + noise,   noise ~ N(0, noise^2) per coordinate
///
/// with v_i unit directions in R^{d_out} (a transcoder's decoder should find them) and M a
/// dense d_out x d_in map with N(0, linear_scale^2 / d_in) entries. Without g, M x = sum c_i M u_i
/// is absorbed into the features' output directions (v_i + M u_i), so M is not identifiable;
/// with g, only a skip transcoder's W_skip can carry M g, and W_skip = M is the exact fit. The same options and seed give bit-identical data on every machine.
inline SyntheticPairs make_transcoder_pairs(const SyntheticOptions& o, Index d_out, double linear_scale = 0.0,
                                            double noise = 0.0, double input_noise = 0.0) {
  if (d_out <= 0) throw std::invalid_argument("synthetic pairs: d_out must be positive");
  if (!(linear_scale >= 0.0) || !(noise >= 0.0) || !(input_noise >= 0.0))
    throw std::invalid_argument("synthetic pairs: linear scale and noise must be >= 0");
  SyntheticData in = make_superposition(o);
  SyntheticPairs out;
  detail::Rng rng(o.seed ^ 0x7a11c0de5eedULL);
  if (input_noise > 0)  // a dense part of x no feature explains: only W_skip can carry M g to y
    for (Index t = 0; t < o.samples; ++t)
      for (Index r = 0; r < o.d_in; ++r) in.X(r, t) += static_cast<float>(input_noise * rng.normal());
  out.out_features.resize(d_out, o.features);
  for (Index i = 0; i < o.features; ++i) {
    Eigen::VectorXd v(d_out);
    do {
      for (Index r = 0; r < d_out; ++r) v[r] = rng.normal();
    } while (v.norm() == 0.0);
    out.out_features.col(i) = (v / v.norm()).cast<float>();
  }
  out.linear.setZero(d_out, o.d_in);
  if (linear_scale > 0)
    for (Index j = 0; j < o.d_in; ++j)
      for (Index r = 0; r < d_out; ++r)
        out.linear(r, j) = static_cast<float>(linear_scale / std::sqrt(double(o.d_in)) * rng.normal());
  // Each sample's active features and coefficients a_i c_i, replayed from make_superposition's
  // random stream (same seed): y uses exactly the draw that made x.
  detail::Rng replay(o.seed);
  for (Index i = 0; i < o.features; ++i) {  // the directions' draws, skipped
    Eigen::VectorXd u(o.d_in);
    do {
      for (Index r = 0; r < o.d_in; ++r) u[r] = replay.normal();
    } while (u.norm() == 0.0);
  }
  const bool all = o.active_prob >= 1.0;
  const double log_q = all ? 0.0 : std::log1p(-o.active_prob);
  out.Y.setZero(d_out, o.samples);
  Eigen::VectorXd y(d_out);
  for (Index t = 0; t < o.samples; ++t) {
    y.setZero();
    for (Index i = 0;; ++i) {
      if (!all) {
        const double gap = std::floor(std::log(replay.uniform_open0()) / log_q);
        if (gap >= static_cast<double>(o.features - i)) break;
        i += static_cast<Index>(gap);
      }
      if (i >= o.features) break;
      y += replay.uniform_open0() * out.out_features.col(i).cast<double>();
    }
    if (linear_scale > 0) y += out.linear.cast<double>() * in.X.col(t).cast<double>();
    if (noise > 0)
      for (Index r = 0; r < d_out; ++r) y[r] += noise * rng.normal();
    out.Y.col(t) = y.cast<float>();
  }
  out.X = std::move(in.X);
  out.features = std::move(in.features);
  return out;
}

}  // namespace sae
