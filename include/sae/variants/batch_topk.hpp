/// @file sae/variants/batch_topk.hpp
/// BatchTopK SAE (Bussmann et al. 2024): the k*B largest pre-activations of the batch, AuxK;
/// saved as JumpReLU with its learned global threshold.
#pragma once

#include <array>
#include <string_view>
#include <vector>

#include "../activations/batch_topk.hpp"
#include "../losses/aux_k.hpp"
#include "../losses/reconstruction.hpp"
#include "variant.hpp"

namespace sae {

/// BatchTopK SAE (Bussmann et al. 2024) with AuxK; saved as JumpReLU with its threshold.
template <class Scalar = float>
using BatchTopKSae = SparseAutoencoder<BatchTopK, CombinedLoss<Reconstruction, AuxK>, Scalar>;

struct BatchTopKVariant : AuxKOnlyVariant<BatchTopKSae> {
  static constexpr std::string_view name = BatchTopKSae<float>::architecture();
  static constexpr std::array<std::string_view, 0> aliases{};
  static constexpr std::string_view summary =
      "the k*B largest pre-activations of the batch, AuxK; saved as jumprelu (Bussmann et al. 2024)";
  template <class Scalar>
  using Model = BatchTopKSae<Scalar>;
  static constexpr bool saved_as_itself = false;
  static constexpr double code_bytes_per_bm = 2.2;  // candidates of every token of the batch
};

}  // namespace sae
