/// @file sae/variants/topk.hpp
/// TopK SAE (Gao et al. 2024): the k largest pre-activations per token, AuxK for dead latents.
#pragma once

#include <array>
#include <string_view>
#include <vector>

#include "../activations/topk.hpp"
#include "../losses/aux_k.hpp"
#include "../losses/reconstruction.hpp"
#include "variant.hpp"

namespace sae {

/// TopK SAE (Gao et al. 2024), unit-norm decoder, with the AuxK dead-latent loss.
template <class Scalar = float>
using TopKSae = SparseAutoencoder<TopK, CombinedLoss<Reconstruction, AuxK>, Scalar>;

struct TopKVariant : AuxKOnlyVariant<TopKSae> {
  static constexpr std::string_view name = TopKSae<float>::architecture();
  static constexpr std::array<std::string_view, 0> aliases{};
  static constexpr std::string_view summary = "the k largest pre-activations of each token, AuxK (Gao et al. 2024)";
  template <class Scalar>
  using Model = TopKSae<Scalar>;
  static constexpr bool saved_as_itself = true;
  static constexpr double code_bytes_per_bm = 0.25;  // the fused encoder keeps tiles only
};

}  // namespace sae
