/// @file sae/activations/relu.hpp
/// ReLU activation (the "standard" SAE of Bricken et al. 2023), and the Activation policy
/// interface every activation implements.
#pragma once

#include <Eigen/Core>

#include "../config.hpp"
#include "../core/parameters.hpp"

namespace sae {

/// f = max(z, 0), applied to the dense m x B pre-activations.
///
/// ## The Activation policy (what SparseAutoencoder needs from its first template parameter)
///
/// A dense activation (codes are an m x B matrix):
/// @code
/// struct MyDenseActivation {
///   static constexpr bool sparse = false;               // codes are Mat<Scalar>, m x B
///   static constexpr bool unit_norm_decoder = false;    // keep ||W_dec[:, j]|| = 1 during training?
///   static constexpr double decoder_init_norm = 0.1;    // norm of the initial decoder columns
///   static constexpr bool has_threshold = false;        // owns Parameters::threshold (JumpReLU)?
///   static constexpr Architecture architecture = ...;   // name used in cfg.json
///   void configure(const SaeConfig&);                    // read k etc. from the config
///   // F = act(Z), both m x B
///   template <class Scalar>
///   void forward(const Mat<Scalar>& Z, const Parameters<Scalar>& p, Mat<Scalar>& F) const;
///   // optional: F = act(Z) in Z's buffer, when backward needs F only (then Z is F there)
///   template <class Scalar> void forward_in_place(Mat<Scalar>& ZF, const Parameters<Scalar>& p) const;
///   // grad: dL/dF in, dL/dZ out; may add to grads (e.g. the threshold's gradient)
///   template <class Scalar>
///   void backward(const Mat<Scalar>& Z, const Mat<Scalar>& F, const Parameters<Scalar>& p,
///                 Mat<Scalar>& grad, Parameters<Scalar>& grads) const;
/// };
/// @endcode
/// A sparse activation (TopK family) instead has `sparse = true`,
/// `select(Zblock, first_token, codes, p)` and `backward(codes, grad_values)` (see topk.hpp),
/// and optionally `select_batch(...)` for a training-time selection across the batch
/// (batch_topk.hpp). Either kind may define `after_update(Parameters&, const Codes&)`, called
/// by the trainer after every optimizer step (to keep a threshold positive, or to track one).
///
/// Backward: dL/dz = dL/df * 1[z > 0].
struct ReLU {
  static constexpr bool sparse = false;
  static constexpr bool unit_norm_decoder = false;
  static constexpr double decoder_init_norm = 0.1;
  static constexpr bool has_threshold = false;
  static constexpr Architecture architecture = Architecture::Standard;

  void configure(const SaeConfig&) {}

  template <class Scalar>
  void forward(const Mat<Scalar>& Z, const Parameters<Scalar>& /*p*/, Mat<Scalar>& F) const {
    F = Z.cwiseMax(Scalar(0));
  }

  /// F = max(Z, 0) in Z's own buffer: the model then keeps one m x B matrix instead of two
  /// (backward only needs F, since z > 0 exactly where f > 0).
  /// @p ZF is the m x B matrix or a block of it (the model calls it tile by tile, while the
  /// encoder's tile is in cache).
  template <class Block, class Scalar>
  void forward_in_place(Block&& ZF, const Parameters<Scalar>& /*p*/) const {
    ZF = ZF.cwiseMax(Scalar(0));
  }

  template <class Scalar>
  void backward(const Mat<Scalar>& /*Z*/, const Mat<Scalar>& F, const Parameters<Scalar>& /*p*/,
                Mat<Scalar>& grad, Parameters<Scalar>& /*grads*/) const {
    grad = (F.array() > Scalar(0)).select(grad, Scalar(0));
  }
};

}  // namespace sae
