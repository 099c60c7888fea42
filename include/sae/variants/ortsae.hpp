/// @file sae/variants/ortsae.hpp
/// OrtSAE (Korznikov et al. 2025): BatchTopK + AuxK + a chunked decoder orthogonality penalty;
/// saved as JumpReLU with its learned global threshold.
#pragma once

#include <algorithm>
#include <array>
#include <string_view>
#include <vector>

#include "../activations/batch_topk.hpp"
#include "../losses/aux_k.hpp"
#include "../losses/orthogonality.hpp"
#include "../losses/reconstruction.hpp"
#include "variant.hpp"

namespace sae {

template <>
inline constexpr std::string_view architecture_name_of<BatchTopK, CombinedLoss<Reconstruction, AuxK, Orthogonality>> =
    "ortsae";

/// OrtSAE (Korznikov et al. 2025): BatchTopK + AuxK + chunked decoder orthogonality penalty.
template <class Scalar = float>
using OrtSae = SparseAutoencoder<BatchTopK, CombinedLoss<Reconstruction, AuxK, Orthogonality>, Scalar>;

struct OrtSaeVariant {
  static constexpr std::string_view name = OrtSae<float>::architecture();
  static constexpr std::array<std::string_view, 0> aliases{};
  static constexpr std::string_view summary =
      "BatchTopK + penalty on decoder cosine similarity within random chunks; saved as jumprelu (Korznikov et al. "
      "2025)";
  template <class Scalar>
  using Model = OrtSae<Scalar>;
  static constexpr bool saved_as_itself = false;
  static constexpr double code_bytes_per_bm = 2.2;

  static std::vector<OptionSpec> options() {
    const Orthogonality d{};
    std::vector<OptionSpec> o = AuxKOptions::options();
    o.push_back(
        {"ortho", OptionType::Real, d.coefficient, OptionCheck::NonNegative, "Orthogonality coefficient gamma"});
    o.push_back({"chunks", OptionType::Integer, d.chunks, OptionCheck::Positive,
                 "Random chunks of latents per step (cost m^2 d / chunks)"});
    return o;
  }
  /// One c x c Gram matrix per thread, c = m / chunks.
  static double extra_bytes(const OptionValues& o, Index, Index d_sae, Index, int threads) {
    const double c = static_cast<double>(d_sae) / static_cast<double>(std::clamp<Index>(o.integer("chunks"), 1, d_sae));
    return 4.0 * c * c * std::max(1, threads);
  }
  static void check(const OptionValues&, const TrainSettings&) {}

  template <class F>
  static decltype(auto) with_model(const SaeConfig& cfg, const TrainSettings& a, const OptionValues& o,
                                   nlohmann::json& tr, F&& f) {
    Model<float> model(cfg);
    AuxKOptions::apply(model, a, o, tr);
    auto& orth = model.loss().template get<Orthogonality>();
    orth.coefficient = o.real("ortho");
    orth.chunks = o.integer("chunks");
    tr["ortho"] = orth.coefficient;
    tr["chunks"] = orth.chunks;
    return f(model);
  }
};

}  // namespace sae
