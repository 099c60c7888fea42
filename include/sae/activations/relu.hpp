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
///   static constexpr Architecture architecture = ...;   // name used in cfg.json
///   void configure(const SaeConfig&);                    // read k etc. from the config
///   template <class Scalar> void forward(Mat<Scalar>& Z) const;          // Z -> F in place
///   template <class Scalar> void backward(const Mat<Scalar>& F, Mat<Scalar>& grad) const;
///                                                        // dL/dF -> dL/dZ in place
/// };
/// @endcode
/// A sparse activation (TopK family) instead has `sparse = true` and
/// `select(const Mat<Scalar>& Zblock, Index first_token, SparseCodes<Scalar>& codes)`, see topk.hpp.
///
/// Backward: dL/dz = dL/df * 1[z > 0]; since f > 0 exactly where z > 0, the mask is read
/// from F and the pre-activations need not be kept.
struct ReLU {
  static constexpr bool sparse = false;
  static constexpr bool unit_norm_decoder = false;
  static constexpr double decoder_init_norm = 0.1;
  static constexpr Architecture architecture = Architecture::Standard;

  void configure(const SaeConfig&) {}

  template <class Scalar>
  void forward(Mat<Scalar>& Z) const {
    Z = Z.cwiseMax(Scalar(0));
  }

  template <class Scalar>
  void backward(const Mat<Scalar>& F, Mat<Scalar>& grad) const {
    grad = (F.array() > Scalar(0)).select(grad, Scalar(0));
  }
};

}  // namespace sae
