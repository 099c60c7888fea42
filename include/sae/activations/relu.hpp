/// @file sae/activations/relu.hpp
/// ReLU activation (the "standard" SAE of Bricken et al. 2023), and the Activation policy
/// interface every activation implements.
#pragma once

#include <Eigen/Core>

#include "../config.hpp"
#include "../core/kernels.hpp"
#include "../core/parameters.hpp"
#include "../core/policies.hpp"

namespace sae {

/// f = max(z, 0), applied to the dense m x B pre-activations.
///
/// ## The Activation policy (what SparseAutoencoder needs from its first template parameter)
///
/// A dense activation (codes are an m x B matrix, computed in the pre-activations' buffer):
/// @code
/// struct MyDenseActivation {
///   static constexpr bool sparse = false;               // codes are Mat<Scalar>, m x B
///   static constexpr bool unit_norm_decoder = false;    // keep ||W_dec[:, j]|| = 1 during training?
///   static constexpr double decoder_init_norm = 0.1;    // norm of the initial decoder columns
///   static constexpr bool has_threshold = false;        // owns Parameters::threshold (JumpReLU)?
///   static constexpr std::string_view family = "...";  // cfg.json name of the family
///   static constexpr bool uses_k = false;               // reads SaeConfig::k?
///   void configure(const SaeConfig&);                    // read k etc. from the config
///   // F = act(Z) in place, tile by tile (or, with a third argument, over the whole matrix,
///   // recording what backward needs in a kernels::LatentList, as JumpReLU does)
///   template <class Block, class Scalar> void forward_in_place(Block&& ZF, const Parameters<Scalar>& p) const;
///   // dL/df -> dL/dz on a tile (rows j0.., columns t0..), given the codes' tile; acc holds
///   // the tile's latents' accumulators for finish_backward (zeroed before the first tile);
///   // `below` is what the three-argument forward_in_place recorded (else empty)
///   template <class FTile, class DTile, class Scalar>
///   void backward_tile(Index j0, Index t0, const FTile& F, DTile& D, Scalar* acc,
///                      const Parameters<Scalar>& p, const kernels::LatentList& below) const;
///   // after the last tile of latents [j0, j0 + n): add the activation's parameter gradients
///   template <class Scalar>
///   void finish_backward(Index j0, Index n, const Scalar* acc, const Parameters<Scalar>& p,
///                        Parameters<Scalar>& grads) const;
/// };
/// @endcode
/// kernels::dense_backward() calls backward_tile for every latents x tokens tile.
/// A sparse activation (TopK family) instead has `sparse = true`,
/// `select_top(B, m, top_c, codes)` (topk.hpp) or `select(Zblock, first_token, codes, p)`, and
/// `backward(codes, grad_values)`, and optionally `select_batch(...)` for a training-time
/// selection across the batch (batch_topk.hpp). Both kinds have
/// `after_update(Parameters&, const Codes&)`, called by the trainer after every optimizer step
/// (to keep a threshold positive, or to track one), and `save_state(PolicyState&) const` /
/// `load_state(const PolicyState&)` for what a checkpoint must keep (an empty body when
/// nothing). The concepts in core/policies.hpp check all of it where the model is declared.
///
/// Backward: dL/dz = dL/df * 1[z > 0].
struct ReLU {
  static constexpr bool sparse = false;
  static constexpr bool unit_norm_decoder = false;
  static constexpr double decoder_init_norm = 0.1;
  static constexpr bool has_threshold = false;
  static constexpr std::string_view family = "standard";
  static constexpr bool uses_k = false;

  void configure(const SaeConfig&) {}

  /// No state of its own in a checkpoint.
  void save_state(PolicyState&) const {}
  void load_state(const PolicyState&) {}

  /// F = max(Z, 0) in Z's own buffer. @p ZF is a tile of the m x B matrix (the model calls it
  /// tile by tile, inside the encoder's tile loop, while the tile is in cache).
  template <class Block, class Scalar>
  void forward_in_place(Block&& ZF, const Parameters<Scalar>& /*p*/) const {
    ZF = ZF.cwiseMax(Scalar(0));
  }

  /// dL/dz = dL/df * 1[f > 0] on a tile of latents [j0, j0 + rows) x tokens [t0, t0 + cols)
  /// (z > 0 exactly where f > 0).
  template <class FTile, class DTile, class Scalar>
  void backward_tile(Index /*j0*/, Index /*t0*/, const FTile& F, DTile& D, Scalar* /*acc*/,
                     const Parameters<Scalar>& /*p*/, const kernels::LatentList& /*below*/) const {
    D = (F.array() > Scalar(0)).select(D, Scalar(0));
  }

  /// Nothing to add after a chunk of latents (ReLU has no parameters of its own).
  template <class Scalar>
  void finish_backward(Index, Index, const Scalar*, const Parameters<Scalar>&, Parameters<Scalar>&) const {}

  /// Nothing to do after an optimizer step.
  template <class Scalar, class Codes>
  void after_update(Parameters<Scalar>&, const Codes&) const {}
};

}  // namespace sae
