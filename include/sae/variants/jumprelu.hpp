/// @file sae/variants/jumprelu.hpp
/// JumpReLU SAE (Rajamanoharan et al. 2024): learned per-latent thresholds, an L0 penalty
/// (lambda * L0, or lambda * (L0 / target - 1)^2 with `target_l0`).
#pragma once

#include <array>
#include <string_view>
#include <vector>

#include "../activations/jumprelu.hpp"
#include "../losses/l0_sparsity.hpp"
#include "../losses/reconstruction.hpp"
#include "variant.hpp"

namespace sae {

/// JumpReLU SAE (Rajamanoharan et al. 2024) with the plain L0 penalty lambda * L0.
template <class Scalar = float>
using JumpReluSae = SparseAutoencoder<JumpReLU, CombinedLoss<Reconstruction, L0Sparsity>, Scalar>;

/// JumpReLU SAE with the target-L0 penalty lambda * (L0 / L0_target - 1)^2.
template <class Scalar = float>
using JumpReluTargetSae = SparseAutoencoder<JumpReLU, CombinedLoss<Reconstruction, TargetL0>, Scalar>;

struct JumpReLUVariant {
  static constexpr std::string_view name = JumpReluSae<float>::architecture();
  static constexpr std::array<std::string_view, 0> aliases{};
  static constexpr std::string_view summary =
      "learned per-latent thresholds, L0 penalty through a straight-through estimator (Rajamanoharan et al. 2024)";
  template <class Scalar>
  using Model = JumpReluSae<Scalar>;  // with target_l0, JumpReluTargetSae (same parameters and codes)
  static constexpr bool saved_as_itself = true;
  static constexpr double code_bytes_per_bm = 5.0;

  static std::vector<OptionSpec> options() {
    const JumpReLU d{};
    return {
        {"l0", OptionType::OptionalReal, nullptr, OptionCheck::NonNegative,
         "L0 coefficient lambda (default 1e-2, or 1.0 with --target-l0)"},
        {"target_l0", OptionType::OptionalReal, nullptr, OptionCheck::Positive,
         "Penalise lambda*(L0/target - 1)^2 instead of lambda*L0"},
        {"l0_warmup", OptionType::Integer, -1, OptionCheck::Any,
         "Steps of linear L0-coefficient warm-up (-1: steps/20)"},
        {"bandwidth", OptionType::Real, d.bandwidth, OptionCheck::Positive, "Straight-through kernel width epsilon"},
        {"threshold_init", OptionType::Real, d.initial_threshold, OptionCheck::NonNegative, "Initial threshold"}};
  }
  /// Default lambda: 1e-2 for lambda * L0 and 1.0 for the target-L0 penalty (measured on data
  /// of mean squared norm about 1; see docs/variants.md).
  static double default_l0(const OptionValues& o) { return o.optional_real("target_l0") ? 1.0 : 1e-2; }
  static double extra_bytes(const OptionValues&, Index, Index, Index, int) { return 0; }
  static void check(const OptionValues&, const TrainSettings&) {}

  template <class F>
  static decltype(auto) with_model(const SaeConfig& cfg, const TrainSettings& a, const OptionValues& o,
                                   nlohmann::json& tr, F&& f) {
    const double lam = o.optional_real("l0").value_or(default_l0(o));
    const std::int64_t warm = coefficient_warmup(o.integer("l0_warmup"), a.opt.steps);
    tr["l0_coefficient"] = lam;
    tr["l0_warmup_steps"] = warm;
    tr["bandwidth"] = o.real("bandwidth");
    tr["threshold_init"] = o.real("threshold_init");
    auto set_activation = [&](auto& model) {
      model.activation().bandwidth = o.real("bandwidth");
      model.activation().initial_threshold = o.real("threshold_init");
    };
    if (const auto target = o.optional_real("target_l0")) {
      JumpReluTargetSae<float> model(cfg);
      set_activation(model);
      auto& t = model.loss().template get<TargetL0>();
      t.coefficient = lam;
      t.target = *target;
      t.warmup_steps = warm;
      tr["target_l0"] = *target;
      return f(model);
    }
    Model<float> model(cfg);
    set_activation(model);
    auto& l0 = model.loss().template get<L0Sparsity>();
    l0.coefficient = lam;
    l0.warmup_steps = warm;
    return f(model);
  }
};

}  // namespace sae
