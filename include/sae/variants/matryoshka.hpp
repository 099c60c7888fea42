/// @file sae/variants/matryoshka.hpp
/// Matryoshka BatchTopK SAE (Nabeshima 2024; Bussmann et al. 2025): BatchTopK codes, and every
/// nested prefix of the dictionary reconstructs on its own; AuxK; saved as JumpReLU with the
/// learned global threshold and the widths in metadata (as SAELens saves it for inference).
#pragma once

#include <array>
#include <string>
#include <string_view>
#include <vector>

#include "../activations/batch_topk.hpp"
#include "../losses/aux_k.hpp"
#include "../losses/matryoshka.hpp"
#include "../losses/reconstruction.hpp"
#include "variant.hpp"

namespace sae {

template <>
inline constexpr std::string_view architecture_name_of<BatchTopK, CombinedLoss<Reconstruction, MatryoshkaInner, AuxK>> =
    "matryoshka_batchtopk";

/// Matryoshka BatchTopK SAE: BatchTopK + the inner prefix reconstructions + AuxK.
template <class Scalar = float>
using MatryoshkaBatchTopKSae =
    SparseAutoencoder<BatchTopK, CombinedLoss<Reconstruction, MatryoshkaInner, AuxK>, Scalar>;

struct MatryoshkaBatchTopKVariant {
  static constexpr std::string_view name = MatryoshkaBatchTopKSae<float>::architecture();
  static constexpr std::array<std::string_view, 1> aliases{"matryoshka"};
  static constexpr std::string_view summary =
      "BatchTopK whose nested prefixes of latents each reconstruct on their own, AuxK; saved as jumprelu "
      "(Bussmann et al. 2025)";
  template <class Scalar>
  using Model = MatryoshkaBatchTopKSae<Scalar>;
  static constexpr bool saved_as_itself = false;
  static constexpr double code_bytes_per_bm = 2.2;

  static std::vector<OptionSpec> options() {
    std::vector<OptionSpec> o = AuxKOptions::options();
    o.push_back({"matryoshka_widths", OptionType::IntegerList, nlohmann::json::array(), OptionCheck::Positive,
                 "Nested prefix widths, strictly increasing, ending at d_sae (default d_sae/16,d_sae/4,d_sae)"});
    return o;
  }
  /// The widths: as given, or d_sae/16, d_sae/4, d_sae (levels below 1 latent dropped).
  static std::vector<Index> widths(const OptionValues& o, Index d_sae) {
    std::vector<Index> w;
    for (std::int64_t v : o.integers("matryoshka_widths")) w.push_back(static_cast<Index>(v));
    if (!w.empty()) return w;
    for (Index v : {d_sae / 16, d_sae / 4, d_sae})
      if (v >= 1 && (w.empty() || v > w.back())) w.push_back(v);
    return w;
  }
  /// The inner levels' S_t of every token (d * levels floats each), see losses/matryoshka.hpp.
  static double extra_bytes(const OptionValues& o, Index d_in, Index d_sae, Index batch, int) {
    return 4.0 * static_cast<double>(d_in) * static_cast<double>(widths(o, d_sae).size()) * static_cast<double>(batch);
  }
  static void check(const OptionValues& o, const TrainSettings& a) {
    MatryoshkaInner m;
    m.widths = widths(o, a.d_sae);
    try {
      m.check(a.d_sae);
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument("--matryoshka-widths: " + std::string(e.what()));
    }
    if (a.skip)  // the prefix reconstructions would need the skip term and its gradient too
      throw std::invalid_argument("--arch " + std::string(name) + " does not support --skip (skip transcoders)");
  }

  template <class F>
  static decltype(auto) with_model(const SaeConfig& cfg, const TrainSettings& a, const OptionValues& o,
                                   nlohmann::json& tr, F&& f) {
    Model<float> model(cfg);
    AuxKOptions::apply(model, a, o, tr);
    auto& inner = model.loss().template get<MatryoshkaInner>();
    inner.widths = widths(o, cfg.d_sae);
    tr["matryoshka_widths"] = inner.widths;
    return f(model);
  }
};

}  // namespace sae
