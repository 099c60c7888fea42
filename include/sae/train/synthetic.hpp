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

}  // namespace sae
