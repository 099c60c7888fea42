/// @file sae/core/step_state.hpp
/// StepState: the buffers of one forward/backward pass, reused from step to step.
#pragma once

#include <cstdint>
#include <optional>

#include "fused_encoder.hpp"
#include "kernels.hpp"
#include "parameters.hpp"

namespace sae {

/// What a training step computes for a batch of B tokens, and what loss terms read and add to.
/// Kept between steps so the buffers are allocated once.
///
///     codes      m x B dense matrix (ReLU) or SparseCodes (TopK family)
///     grad_codes dL/df, in the codes' structure (one value per stored code), or for dense codes
///                the loss terms' per-latent part (dense_backward adds W_dec^T G tile by tile)
///     X_hat      d x B reconstruction
///     grad_xhat  d x B, dL/dX_hat
template <class Scalar, class Codes>
struct StepState {
  Codes codes;
  kernels::code_gradient_t<Codes> grad_codes;
  Mat<Scalar> X_hat;
  Mat<Scalar> grad_xhat;
  std::int64_t step = 0;             ///< 0-based training step (for coefficient warm-up)
  double bandwidth = 0;              ///< STE kernel width of the activation (JumpReLU), read by L0 terms
  bool apply_b_dec_to_input = true;  ///< the model's setting, for terms that backpropagate to the encoder
  /// The encoder's inputs of the pass in progress (d_in x B), set by forward_backward for the
  /// terms that backpropagate to the encoder (AuxK): a loss term's X argument is the target,
  /// which is the inputs themselves for an SAE but not for a transcoder. Empty between passes.
  std::optional<Eigen::Ref<const Mat<Scalar>>> input;

  // scratch owned by the model's kernels
  Mat<Scalar> Z;                          ///< pre-activations of a block (BatchTopK inference, the plain encoder path)
  Vec<Scalar> c;                          ///< folded encoder bias, b_enc - W_enc^T b_dec
  Vec<Scalar> dz_sum;                     ///< per-latent sum of dL/dz (encoder backward)
  kernels::LatentGroups groups;           ///< sparse codes grouped by latent
  kernels::EncoderState<Scalar> encoder;  ///< TopK family: fused encoder tiles, candidates, fused on/off
  kernels::LatentList below;              ///< JumpReLU: per token, latents in the window just below the threshold
  kernels::DenseScratch<Scalar> dense;    ///< dense variants: dense_backward's tiles
  kernels::MixedPrecision mixed;          ///< dense variants: bf16 copies when training in mixed precision
};

}  // namespace sae
