/// @file sae/core/parameters.hpp
/// The four tensors of an SAE in libsae's layout, also used for gradients and optimizer moments.
#pragma once

#include <Eigen/Core>

#include <cmath>
#include <stdexcept>
#include <string>
#include <utility>

namespace sae {

/// Column-major dense matrix / vector types used everywhere in libsae.
template <class Scalar>
using Mat = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;  // column-major
template <class Scalar>
using Vec = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
using Index = Eigen::Index;

/// Parameters of an SAE with d = d_in and m = d_sae.
///
/// Layout (one contiguous length-d column per latent, DESIGN.md §3):
///
///     W_enc  d x m   column j = encoder direction of latent j   (SAELens W_enc [d_in, d_sae], transposed)
///     W_dec  d x m   column j = decoder direction of latent j   (SAELens W_dec [d_sae, d_in], same bytes)
///     b_enc  m
///     b_dec  d
///     threshold  m or empty   per-latent JumpReLU threshold theta (empty for other variants)
///
/// The same struct holds gradients and Adam moments (same shapes), so an update is a walk over
/// matching tensors (see zip_tensors).
template <class Scalar>
struct Parameters {
  Mat<Scalar> W_enc;
  Mat<Scalar> W_dec;
  Vec<Scalar> b_enc;
  Vec<Scalar> b_dec;
  Vec<Scalar> threshold;

  Parameters() = default;
  /// All-zero parameters of the given shape (with a zero threshold vector if @p with_threshold).
  Parameters(Index d_in, Index d_sae, bool with_threshold = false)
      : W_enc(Mat<Scalar>::Zero(d_in, d_sae)),
        W_dec(Mat<Scalar>::Zero(d_in, d_sae)),
        b_enc(Vec<Scalar>::Zero(d_sae)),
        b_dec(Vec<Scalar>::Zero(d_in)),
        threshold(Vec<Scalar>::Zero(with_threshold ? d_sae : 0)) {}

  bool has_threshold() const { return threshold.size() > 0; }

  /// True when the shapes (including whether a threshold exists) equal @p o's.
  bool same_shape(const Parameters& o) const {
    return W_dec.rows() == o.W_dec.rows() && W_dec.cols() == o.W_dec.cols() && threshold.size() == o.threshold.size();
  }

  Index d_in() const { return W_dec.rows(); }
  Index d_sae() const { return W_dec.cols(); }

  void set_zero() {
    W_enc.setZero();
    W_dec.setZero();
    b_enc.setZero();
    b_dec.setZero();
    threshold.setZero();
  }

  /// Same parameters in another scalar type (e.g. float weights checked in double).
  template <class Other>
  Parameters<Other> cast() const {
    Parameters<Other> p;
    p.W_enc = W_enc.template cast<Other>();
    p.W_dec = W_dec.template cast<Other>();
    p.b_enc = b_enc.template cast<Other>();
    p.b_dec = b_dec.template cast<Other>();
    p.threshold = threshold.template cast<Other>();
    return p;
  }

  /// Throws std::invalid_argument unless the four tensors agree on d and m.
  void check_shapes() const {
    const Index d = W_dec.rows(), m = W_dec.cols();
    if (W_enc.rows() != d || W_enc.cols() != m || b_enc.size() != m || b_dec.size() != d ||
        (threshold.size() != 0 && threshold.size() != m))
      throw std::invalid_argument("SAE parameters have inconsistent shapes: W_enc " + std::to_string(W_enc.rows()) +
                                  "x" + std::to_string(W_enc.cols()) + ", W_dec " + std::to_string(d) + "x" +
                                  std::to_string(m) + ", b_enc " + std::to_string(b_enc.size()) + ", b_dec " +
                                  std::to_string(b_dec.size()));
  }

  /// True when every coefficient is finite.
  bool all_finite() const {
    return W_enc.allFinite() && W_dec.allFinite() && b_enc.allFinite() && b_dec.allFinite() && threshold.allFinite();
  }
};

/// Calls f(name, t0, t1, ...) for each of the five tensors (threshold may be empty), taking the matching tensor from
/// every Parameters argument (all must have the same shapes). Used by the optimizer.
template <class F, class... Ps>
void zip_tensors(F&& f, Ps&... ps) {
  f("W_enc", ps.W_enc...);
  f("W_dec", ps.W_dec...);
  f("b_enc", ps.b_enc...);
  f("b_dec", ps.b_dec...);
  f("threshold", ps.threshold...);
}

}  // namespace sae
