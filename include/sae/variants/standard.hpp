/// @file sae/variants/standard.hpp
/// The standard SAE (Bricken et al. 2023): ReLU codes, L1 penalty weighted by decoder norms.
#pragma once

#include <array>
#include <string_view>
#include <vector>

#include "../activations/relu.hpp"
#include "../losses/l1_sparsity.hpp"
#include "../losses/reconstruction.hpp"
#include "variant.hpp"

namespace sae {

/// ReLU SAE with the decoder-norm-weighted L1 penalty (SAELens "standard").
template <class Scalar = float>
using ReluSae = SparseAutoencoder<ReLU, CombinedLoss<Reconstruction, L1Sparsity>, Scalar>;

struct StandardVariant {
  static constexpr std::string_view name = ReluSae<float>::architecture();
  static constexpr std::array<std::string_view, 1> aliases{"relu"};
  static constexpr std::string_view summary = "ReLU codes, L1 penalty weighted by decoder norms (Bricken et al. 2023)";
  template <class Scalar>
  using Model = ReluSae<Scalar>;
  static constexpr bool saved_as_itself = true;
  static constexpr double code_bytes_per_bm = 5.0;  // dense m x B codes and their gradients

  static std::vector<OptionSpec> options() {
    return {{"l1", OptionType::Real, 0.3, OptionCheck::NonNegative, "L1 coefficient"},
            {"l1_warmup", OptionType::Integer, -1, OptionCheck::Any, "Steps of linear L1 warm-up (-1: steps/20)"}};
  }
  static double extra_bytes(const OptionValues&, Index, Index, Index, int) { return 0; }
  static void check(const OptionValues&, const TrainSettings&) {}

  template <class F>
  static decltype(auto) with_model(const SaeConfig& cfg, const TrainSettings& a, const OptionValues& o,
                                   nlohmann::json& tr, F&& f) {
    Model<float> model(cfg);
    auto& l1 = model.loss().template get<L1Sparsity>();
    l1.coefficient = o.real("l1");
    l1.warmup_steps = coefficient_warmup(o.integer("l1_warmup"), a.opt.steps);
    tr["l1_coefficient"] = l1.coefficient;
    tr["l1_warmup_steps"] = l1.warmup_steps;
    return f(model);
  }
};

}  // namespace sae
