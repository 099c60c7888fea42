/// @file sae/variants/variant.hpp
/// The Variant concept: everything libsae knows about one SAE variant, in one unit (a header
/// in this folder), listed once in list.hpp. The list drives parsing `--arch`, the flags and
/// keywords of its options, the model a training run builds, AnySae, checkpoints, the memory
/// estimate, the reference-step tool and the docs table.
///
/// @code
/// struct MyVariant {
///   static constexpr std::string_view name = architecture_name_of<Act, Loss>;  // cfg.json name
///   static constexpr std::array<std::string_view, 0> aliases{};   // other names --arch accepts
///   static constexpr std::string_view summary = "...";            // one line for docs and --help
///   template <class Scalar> using Model = SparseAutoencoder<Act, Loss, Scalar>;
///   // true: saved under its own name (a member of AnySae); false: saved as another
///   // architecture (inference_form, any_sae.hpp), e.g. BatchTopK as jumprelu
///   static constexpr bool saved_as_itself = true;
///   static constexpr double code_bytes_per_bm = 0.25;             // memory estimate, see run.hpp
///   static std::vector<OptionSpec> options();                    // its own training options
///   // extra bytes beyond the estimate (OrtSAE's Gram matrices), given the resolved options
///   static double extra_bytes(const OptionValues&, Index d_in, Index d_sae, Index batch, int threads);
///   // SettingsError-worthy problems with the options (std::invalid_argument with a sentence)
///   static void check(const OptionValues&, const TrainSettings&);
///   // builds the model a training run trains (policies set from the options), records the
///   // settings in tr (cfg.json metadata.training) and returns f(model)
///   template <class F>
///   static decltype(auto) with_model(const SaeConfig&, const TrainSettings&, const OptionValues&,
///                                    nlohmann::json& tr, F&& f);
/// };
/// @endcode
#pragma once

#include <array>
#include <concepts>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "../core/sparse_autoencoder.hpp"
#include "../losses/aux_k.hpp"
#include "../train/options.hpp"
#include "../train/settings.hpp"

namespace sae {

template <class V>
concept Variant = requires(const OptionValues& o, const TrainSettings& a) {
  { V::name } -> std::convertible_to<std::string_view>;
  { V::summary } -> std::convertible_to<std::string_view>;
  { V::aliases.size() } -> std::convertible_to<std::size_t>;
  { V::saved_as_itself } -> std::convertible_to<bool>;
  { V::code_bytes_per_bm } -> std::convertible_to<double>;
  typename V::template Model<float>;
  typename V::template Model<double>;
  { V::options() } -> std::same_as<std::vector<OptionSpec>>;
  { V::extra_bytes(o, Index{}, Index{}, Index{}, int{}) } -> std::convertible_to<double>;
  V::check(o, a);
}
&&(V::template Model<float>::architecture() == V::name);

/// True if variant V's activation reads k.
template <Variant V>
inline constexpr bool variant_uses_k = V::template Model<float>::activation_type::uses_k;

/// The AuxK options (Gao et al. 2024) shared by the TopK family, and their application.
struct AuxKOptions {
  static std::vector<OptionSpec> options() {
    const AuxK d{};
    return {{"aux_k", OptionType::Integer, 0, OptionCheck::NonNegative,
             "AuxK: dead latents used to reconstruct the residual (0: d_in/2)"},
            {"aux_coeff", OptionType::Real, d.coefficient, OptionCheck::NonNegative,
             "AuxK coefficient alpha (0 disables)"}};
  }
  /// Sets the model's AuxK term; a latent is dead after a.dead_tokens tokens without firing.
  template <class Model>
  static void apply(Model& model, const TrainSettings& a, const OptionValues& o, nlohmann::json& tr) {
    auto& aux = model.loss().template get<AuxK>();
    aux.k_aux = o.integer("aux_k");
    aux.coefficient = o.real("aux_coeff");
    aux.dead_tokens = a.dead_tokens;
    tr["aux_k"] = aux.k_aux > 0 ? aux.k_aux : std::max<Index>(1, model.d_out() / 2);
    tr["aux_coeff"] = aux.coefficient;
    tr["dead_tokens"] = aux.dead_tokens;
  }
};

/// The members of a variant whose only options are AuxK's (TopK, BatchTopK): its unit derives
/// from this and adds its name, summary, Model and memory coefficient.
template <template <class> class ModelT>
struct AuxKOnlyVariant {
  static std::vector<OptionSpec> options() { return AuxKOptions::options(); }
  static double extra_bytes(const OptionValues&, Index, Index, Index, int) { return 0; }
  static void check(const OptionValues&, const TrainSettings&) {}
  template <class F>
  static decltype(auto) with_model(const SaeConfig& cfg, const TrainSettings& a, const OptionValues& o,
                                   nlohmann::json& tr, F&& f) {
    ModelT<float> model(cfg);
    AuxKOptions::apply(model, a, o, tr);
    return f(model);
  }
};

/// Linear warm-up length of a loss coefficient: the option's value, or steps / 20 when it is -1.
inline std::int64_t coefficient_warmup(std::int64_t option, std::int64_t steps) {
  return option >= 0 ? option : steps / 20;
}

}  // namespace sae
