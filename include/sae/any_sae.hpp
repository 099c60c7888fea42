/// @file sae/any_sae.hpp
/// AnySae: the one runtime choice of variant, made at the edge (loading a directory whose
/// cfg.json names the architecture), never per token.
#pragma once

#include <filesystem>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>

#include "config.hpp"
#include "core/sparse_autoencoder.hpp"
#include "io/formats.hpp"
#include "io/saelens.hpp"
#include "variants/list.hpp"

namespace sae {

/// The float SAE variants as saved on disk: the listed variants saved under their own name
/// (variants/list.hpp; BatchTopK, OrtSAE and Matryoshka are saved as JumpReLU).
using AnySaeVariant = SavedSaeVariant;

/// One of the float SAE variants as saved on disk. What every variant has (sizes,
/// configuration, parameters) is a plain member; templated code on the model itself runs
/// through visit() (or std::visit: AnySae is a std::variant).
class AnySae : public AnySaeVariant {
 public:
  using AnySaeVariant::AnySaeVariant;

  /// The variant as a std::variant (for std::visit and std::get).
  AnySaeVariant& variant() noexcept { return *this; }
  const AnySaeVariant& variant() const noexcept { return *this; }

  /// Runs f(model) on the variant held.
  template <class F>
  decltype(auto) visit(F&& f) {
    return std::visit(std::forward<F>(f), variant());
  }
  template <class F>
  decltype(auto) visit(F&& f) const {
    return std::visit(std::forward<F>(f), variant());
  }

  Index d_in() const {
    return visit([](const auto& m) { return m.d_in(); });
  }
  Index d_sae() const {
    return visit([](const auto& m) { return m.d_sae(); });
  }
  /// Width of the output: d_in for an SAE, d_out for a transcoder.
  Index d_out() const {
    return visit([](const auto& m) { return m.d_out(); });
  }
  bool is_transcoder() const { return config().is_transcoder(); }
  const SaeConfig& config() const {
    return visit([](const auto& m) -> const SaeConfig& { return m.config(); });
  }
  const Parameters<float>& params() const {
    return visit([](const auto& m) -> const Parameters<float>& { return m.params(); });
  }
  /// std::invalid_argument "DATA has d_in=N but the SAE[ in PATH] has d_in=M" unless @p d is
  /// this SAE's d_in (the one check every command makes before reading data).
  void check_d_in(Index d, const std::string& data_name, const std::filesystem::path& sae_path = {}) const {
    if (d == d_in()) return;
    throw std::invalid_argument(data_name + " has d_in=" + std::to_string(d) + " but the SAE" +
                                (sae_path.empty() ? "" : " in " + sae_path.string()) +
                                " has d_in=" + std::to_string(d_in()));
  }
  /// Replaces the parameters (shapes must match; the variant's own checks apply).
  void set_params(Parameters<float> p) {
    visit([&](auto& m) { m.set_params(std::move(p)); });
  }
};

/// A zero-initialised SAE of the variant cfg.architecture names (variants/list.hpp).
/// std::invalid_argument for an unknown name or a training architecture (saved as jumprelu).
inline AnySae make_sae(const SaeConfig& cfg) {
  return with_variant(cfg.architecture, [&]<class V>(std::type_identity<V>) -> AnySae {
    if constexpr (V::saved_as_itself) {
      return typename V::template Model<float>(cfg);
    } else {
      throw std::invalid_argument("architecture '" + cfg.architecture +
                                  "' is a training architecture; libsae saves it as 'jumprelu' with its threshold");
    }
  });
}

/// The configuration and float parameters that represent @p model on disk and at inference:
/// the model itself, except that BatchTopK-family models become JumpReLU with their learned
/// global threshold for every latent (as SAELens saves BatchTopK), the training architecture
/// and k recorded in the metadata.
template <class Model>
std::pair<SaeConfig, Parameters<float>> inference_form(const Model& model) {
  SaeConfig cfg = model.config();
  Parameters<float> p = model.params().template cast<float>();
  if constexpr (std::is_same_v<typename Model::activation_type, BatchTopK>) {
    cfg.metadata["training_architecture"] = cfg.architecture;
    cfg.metadata["k"] = cfg.k;
    cfg.metadata["batchtopk_threshold"] = model.activation().threshold;
    cfg.architecture = std::string(JumpReLUVariant::name);
    cfg.k = 0;
    p.threshold = Vec<float>::Constant(p.d_sae(), static_cast<float>(model.activation().threshold));
  }
  return {std::move(cfg), std::move(p)};
}

/// Loads an SAE from @p path, detecting the format (sae/io/formats.hpp): an SAELens directory
/// (cfg.json + sae_weights.safetensors), a Gemma Scope params.npz or Gemma Scope 2
/// params.safetensors (the file or a directory holding it; JumpReLU, apply_b_dec_to_input =
/// false), or a sparsify directory (cfg.json + sae.safetensors; TopK). The variant is the one
/// the configuration names. Every failure, including an unusable configuration (e.g. a
/// training architecture such as batchtopk in cfg.json), is an io::IoError "PATH: problem".
/// @p format, if given, receives the detected format.
inline AnySae load_sae(const std::filesystem::path& path, io::SaeFormat* format = nullptr) {
  io::SaeFormat fmt{};
  io::LoadedWeights w = io::load_sae_weights(path, &fmt);
  if (format) *format = fmt;
  try {
    AnySae sae = make_sae(w.config);
    sae.set_params(std::move(w.params));
    return sae;
  } catch (const std::invalid_argument& e) {
    throw io::IoError(path, e.what());
  }
}

/// Writes @p cfg and @p p into @p w (committed by the caller): an SAELens directory, or for a
/// TopK transcoder, which SAELens has no form of, a sparsify directory (io::save_sparsify).
inline void save_sae_files(io::DirectoryWriter& w, const SaeConfig& cfg, const Parameters<float>& p,
                           io::StDtype dtype = io::StDtype::F32) {
  if (io::sparsify_only_transcoder(cfg))
    io::save_sparsify(w, cfg, p, dtype);
  else
    io::save_saelens(w, cfg, p, dtype);
}

/// Saves any float SAE (its config and weights) as an SAELens directory (a TopK transcoder as a
/// sparsify one; save_sae_files).
template <class Model>
void save_sae(const std::filesystem::path& dir, const Model& model) {
  io::DirectoryWriter w(dir, io::saelens_config_file, io::saelens_owned_files());
  save_sae(w, model);
  w.commit();
}
/// The same, into a directory writer the caller commits (e.g. with a training log added).
template <class Model>
void save_sae(io::DirectoryWriter& dir, const Model& model) {
  const auto [cfg, params] = inference_form(model);
  save_sae_files(dir, cfg, params);
}
inline void save_sae(const std::filesystem::path& dir, const AnySae& sae) {
  sae.visit([&](const auto& m) { save_sae(dir, m); });
}

/// "f32"/"float32", "f16"/"float16" or "bf16"/"bfloat16" -> the storage dtype of save_sae_as;
/// std::invalid_argument otherwise.
inline io::StDtype parse_weights_dtype(const std::string& s) {
  if (s == "f32" || s == "float32") return io::StDtype::F32;
  if (s == "f16" || s == "float16") return io::StDtype::F16;
  if (s == "bf16" || s == "bfloat16") return io::StDtype::BF16;
  throw std::invalid_argument("dtype must be f32, f16 or bf16, got '" + s + "'");
}

/// Saves @p sae, loaded from a file of format @p from, as an SAELens directory with weights
/// stored as @p dtype (what `sae convert` writes): the configuration as read, plus
/// metadata.converted_from when the source was not an SAELens directory. A TopK transcoder
/// (SAELens has none) is written as a sparsify directory.
inline void save_sae_as(const std::filesystem::path& dir, const AnySae& sae, io::StDtype dtype,
                        io::SaeFormat from = io::SaeFormat::SAELens) {
  SaeConfig cfg = sae.config();
  if (!cfg.metadata.is_object()) cfg.metadata = nlohmann::json::object();
  if (from != io::SaeFormat::SAELens) cfg.metadata["converted_from"] = io::sae_format_name(from);
  if (io::sparsify_only_transcoder(cfg)) {  // SAELens has no TopK transcoder: written as sparsify's
    io::DirectoryWriter w(dir, io::saelens_config_file, io::saelens_owned_files());
    io::save_sparsify(w, cfg, sae.params(), dtype);
    w.commit();
    return;
  }
  io::save_saelens(dir, cfg, sae.params(), dtype);
}

}  // namespace sae
