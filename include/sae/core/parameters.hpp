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

/// Parameters of an SAE with d = d_in and m = d_sae, or of a transcoder that reads d_in values
/// and writes d_out (Dunefsky et al. 2024, "Transcoders find interpretable LLM feature circuits").
///
/// Layout (one contiguous column per latent, DESIGN.md §3):
///
///     W_enc  d_in x m    column j = encoder direction of latent j  (SAELens W_enc [d_in, d_sae], transposed)
///     W_dec  d_out x m   column j = decoder direction of latent j  (SAELens W_dec [d_sae, d_out], same bytes)
///     b_enc  m
///     b_dec  d_out
///     threshold  m or empty          per-latent JumpReLU threshold theta (empty for other variants)
///     W_skip d_out x d_in or empty   a skip transcoder's linear term (Paulo et al. 2025,
///                                    "Transcoders beat sparse autoencoders"): y_hat += W_skip x
///
/// For an SAE d_out = d_in and W_skip is empty.
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
  Mat<Scalar> W_skip;

  Parameters() = default;
  /// All-zero parameters of the given shape (with a zero threshold vector if @p with_threshold;
  /// @p d_out < 0 means d_in; a zero d_out x d_in W_skip if @p with_skip).
  Parameters(Index d_in, Index d_sae, bool with_threshold = false, Index d_out = -1, bool with_skip = false)
      : W_enc(Mat<Scalar>::Zero(d_in, d_sae)),
        W_dec(Mat<Scalar>::Zero(d_out < 0 ? d_in : d_out, d_sae)),
        b_enc(Vec<Scalar>::Zero(d_sae)),
        b_dec(Vec<Scalar>::Zero(d_out < 0 ? d_in : d_out)),
        threshold(Vec<Scalar>::Zero(with_threshold ? d_sae : 0)),
        W_skip(Mat<Scalar>::Zero(with_skip ? (d_out < 0 ? d_in : d_out) : 0, with_skip ? d_in : 0)) {}

  /// All-zero parameters shaped like @p o (gradients, optimizer moments).
  template <class Other>
  static Parameters zeros_like(const Parameters<Other>& o) {
    return Parameters(o.d_in(), o.d_sae(), o.has_threshold(), o.d_out(), o.has_skip());
  }

  bool has_threshold() const { return threshold.size() > 0; }
  bool has_skip() const { return W_skip.size() > 0; }

  /// True when the shapes (including whether a threshold and W_skip exist) equal @p o's.
  bool same_shape(const Parameters& o) const {
    return W_enc.rows() == o.W_enc.rows() && W_dec.rows() == o.W_dec.rows() && W_dec.cols() == o.W_dec.cols() &&
           threshold.size() == o.threshold.size() && W_skip.size() == o.W_skip.size();
  }

  Index d_in() const { return W_enc.rows(); }
  Index d_out() const { return W_dec.rows(); }
  Index d_sae() const { return W_dec.cols(); }

  void set_zero() {
    W_enc.setZero();
    W_dec.setZero();
    b_enc.setZero();
    b_dec.setZero();
    threshold.setZero();
    W_skip.setZero();
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
    p.W_skip = W_skip.template cast<Other>();
    return p;
  }

  /// Throws std::invalid_argument unless the tensors agree on d_in, d_out and m.
  void check_shapes() const {
    const Index d_o = W_dec.rows(), m = W_dec.cols(), d_i = W_enc.rows();
    if (W_enc.cols() != m || b_enc.size() != m || b_dec.size() != d_o ||
        (threshold.size() != 0 && threshold.size() != m) ||
        (W_skip.size() != 0 && (W_skip.rows() != d_o || W_skip.cols() != d_i)))
      throw std::invalid_argument("SAE parameters have inconsistent shapes: W_enc " + std::to_string(d_i) + "x" +
                                  std::to_string(W_enc.cols()) + ", W_dec " + std::to_string(d_o) + "x" +
                                  std::to_string(m) + ", b_enc " + std::to_string(b_enc.size()) + ", b_dec " +
                                  std::to_string(b_dec.size()) + ", threshold " + std::to_string(threshold.size()) +
                                  ", W_skip " + std::to_string(W_skip.rows()) + "x" + std::to_string(W_skip.cols()));
  }

  /// True when every coefficient is finite.
  bool all_finite() const {
    return W_enc.allFinite() && W_dec.allFinite() && b_enc.allFinite() && b_dec.allFinite() && threshold.allFinite() &&
           W_skip.allFinite();
  }
};

/// Calls f(name, t0, t1, ...) for each of the six tensors (threshold and W_skip may be empty), taking the matching
/// tensor from every Parameters argument (all must have the same shapes). Used by the optimizer and checkpoints.
template <class F, class... Ps>
void zip_tensors(F&& f, Ps&... ps) {
  f("W_enc", ps.W_enc...);
  f("W_dec", ps.W_dec...);
  f("b_enc", ps.b_enc...);
  f("b_dec", ps.b_dec...);
  f("threshold", ps.threshold...);
  f("W_skip", ps.W_skip...);
}

}  // namespace sae
