/// @file sae/config.hpp
/// SaeConfig: the shape and kind of an SAE, and its SAELens (v6) `cfg.json` form.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "version.hpp"

namespace sae {

/// What cfg.json's metadata.sae_lens_version holds in files libsae writes.
///
/// SAELens decides how to read a cfg.json from this one key (its handle_config_defaulting):
/// absent, or a version below 6.0.0-rc.0, and it treats the file as a pre-6.0 flat config,
/// rebuilding `metadata` from top-level keys, so everything libsae put in metadata is dropped.
/// libsae writes the SAELens 6 cfg.json schema (every field it writes means the same to any
/// SAELens 6.x), and it is not SAELens, so the value is "6.0.0+libsae.VERSION": the public
/// part is the schema version, the PEP 440 local part (which no SAELens release carries) names
/// the writer. It is overwritten on every save (the file is then libsae's, whatever wrote the
/// one it was loaded from); metadata.sae_lens_training_version is written as null (SAELens's
/// own value for SAEs it did not train) unless the loaded metadata already holds one.
inline constexpr const char* saelens_cfg_schema_version = "6.0.0";
inline std::string saelens_version_tag() {
  return std::string(saelens_cfg_schema_version) + "+libsae." + version_string;
}

/// The SAELens cfg.json architectures libsae reads as they are ("relu" is accepted for
/// "standard"). These are the file format's names: libsae's own variants, and which of them
/// are saved under their own name, are in sae/variants/list.hpp (a test checks that every
/// variant saved under its own name is one of these). Other SAELens forms are folded or refused
/// where the file is read (io/saelens.hpp).
inline bool saelens_inference_architecture(std::string_view a) {
  return a == "standard" || a == "relu" || a == "topk" || a == "jumprelu";
}

/// SAELens's transcoder architectures and the SAE architecture whose codes each computes
/// (sae_lens/saes/transcoder.py: ReLU or JumpReLU codes of x, decoded into d_out values, plus
/// W_skip x for the skip forms). Empty for any other name.
inline std::string_view saelens_transcoder_codes(std::string_view a) {
  if (a == "transcoder" || a == "skip_transcoder") return "standard";
  if (a == "jumprelu_transcoder" || a == "jumprelu_skip_transcoder") return "jumprelu";
  return {};
}

/// The SAELens transcoder architecture of an SAE architecture (standard/relu, jumprelu), with
/// or without the skip term; empty when SAELens has none (topk).
inline std::string saelens_transcoder_architecture(std::string_view codes, bool skip) {
  std::string base;
  if (codes == "standard" || codes == "relu") base = "transcoder";
  if (codes == "jumprelu") base = "jumprelu_transcoder";
  if (base.empty()) return {};
  if (!skip) return base;
  return base == "transcoder" ? "skip_transcoder" : "jumprelu_skip_transcoder";
}

/// SAELens's cfg.json architectures that take `k` (the file format's rule).
inline bool saelens_architecture_uses_k(std::string_view a) {
  return a == "topk" || a == "batchtopk" || a == "matryoshka_batchtopk";
}

/// Shape and kind of one SAE.
///
/// Notation used across libsae: d = d_in (activation width), m = d_sae (dictionary size),
/// B = tokens in a batch, k = active latents per token (TopK).
///
/// A transcoder (d_out > 0) reads d_in values and reconstructs a different target of d_out
/// values (e.g. an MLP's output from its input), optionally with a linear skip term; its
/// cfg.json is SAELens's transcoder form (architecture "transcoder", "skip_transcoder",
/// "jumprelu_transcoder" or "jumprelu_skip_transcoder", with d_out), while `architecture` here
/// stays the name of the codes' variant.
struct SaeConfig {
  std::int64_t d_in = 0;   ///< d
  std::int64_t d_sae = 0;  ///< m
  std::int64_t d_out = 0;  ///< a transcoder's output width; 0: an SAE (the output is the input's d_in)
  bool skip = false;       ///< a skip transcoder's W_skip (d_out x d_in); transcoders only
  /// The architecture's name: a libsae variant's (sae/variants/list.hpp lists them; the model
  /// sets it) or, read from cfg.json, SAELens's. Empty until a model or a file sets it.
  std::string architecture;
  std::int64_t k = 0;                                  ///< active latents per token (TopK family; 0: unused)
  bool apply_b_dec_to_input = true;                    ///< encode x - b_dec (true) or x (false)
  std::string normalize_activations = "none";          ///< SAELens field; libsae folds scaling into weights
  std::string dtype = "float32";                       ///< storage dtype of the weights file
  nlohmann::json metadata = nlohmann::json::object();  ///< everything else (training settings...)

  bool is_transcoder() const { return d_out > 0; }
  /// Width of the reconstruction: d_out for a transcoder, d_in for an SAE.
  std::int64_t output_width() const { return d_out > 0 ? d_out : d_in; }

  /// Throws std::invalid_argument with a sentence if the shape is unusable.
  void validate() const {
    if (d_in <= 0) throw std::invalid_argument("d_in must be positive, got " + std::to_string(d_in));
    if (d_sae <= 0) throw std::invalid_argument("d_sae must be positive, got " + std::to_string(d_sae));
    if (d_out < 0)
      throw std::invalid_argument("d_out must be positive (or 0 for an SAE), got " + std::to_string(d_out));
    if (k < 0 || k > d_sae)
      throw std::invalid_argument("k must be in [1, d_sae=" + std::to_string(d_sae) + "], got " + std::to_string(k));
    if (skip && !is_transcoder())
      throw std::invalid_argument("a skip connection (W_skip) needs a transcoder (d_out > 0)");
    if (is_transcoder() && apply_b_dec_to_input)
      throw std::invalid_argument(
          "a transcoder encodes its input as it is: apply_b_dec_to_input must be false (b_dec has the output's width "
          "d_out)");
  }

  /// The SAELens v6 cfg.json object.
  /// Throws std::invalid_argument for a transcoder whose codes SAELens has no transcoder form of.
  nlohmann::json to_json() const {
    nlohmann::json j;
    j["architecture"] = architecture;
    if (is_transcoder()) {
      const std::string t = saelens_transcoder_architecture(architecture, skip);
      if (t.empty())
        throw std::invalid_argument("SAELens has no transcoder form of architecture '" + architecture +
                                    "' (it has relu and jumprelu transcoders)");
      j["architecture"] = t;
      j["d_out"] = d_out;
    }
    j["d_in"] = d_in;
    j["d_sae"] = d_sae;
    j["dtype"] = dtype;
    j["device"] = "cpu";
    j["apply_b_dec_to_input"] = apply_b_dec_to_input;
    j["normalize_activations"] = normalize_activations;
    j["reshape_activations"] = "none";
    if (k > 0) j["k"] = k;
    if (architecture == "topk") j["rescale_acts_by_decoder_norm"] = false;  // SAELens's TopK field
    nlohmann::json md = metadata.is_object() ? metadata : nlohmann::json::object();
    md["sae_lens_version"] = saelens_version_tag();  // see saelens_cfg_schema_version
    if (!md.contains("sae_lens_training_version")) md["sae_lens_training_version"] = nullptr;
    j["metadata"] = std::move(md);
    return j;
  }

  /// Reads a cfg.json object; `where` names the file in error messages.
  /// Throws std::runtime_error("WHERE: problem") on missing or mistyped fields.
  static SaeConfig from_json(const nlohmann::json& j, const std::string& where = "cfg.json") {
    auto fail = [&](const std::string& problem) -> void { throw std::runtime_error(where + ": " + problem); };
    if (!j.is_object()) fail("expected a JSON object");
    auto get_int = [&](const char* key, bool required, std::int64_t fallback) -> std::int64_t {
      auto it = j.find(key);
      if (it == j.end() || it->is_null()) {
        if (required) fail(std::string("missing field '") + key + "'");
        return fallback;
      }
      if (!it->is_number_integer() && !it->is_number_unsigned())
        fail(std::string("field '") + key + "' must be an integer");
      return it->get<std::int64_t>();
    };
    SaeConfig c;
    c.d_in = get_int("d_in", true, 0);
    c.d_sae = get_int("d_sae", true, 0);
    std::string arch = "standard";
    if (auto it = j.find("architecture"); it != j.end()) {
      if (!it->is_string()) fail("field 'architecture' must be a string");
      arch = it->get<std::string>();
    }
    if (const std::string_view codes = saelens_transcoder_codes(arch); !codes.empty()) {
      c.d_out = get_int("d_out", true, 0);
      if (c.d_out <= 0) fail("field 'd_out' must be positive");
      c.skip = arch.find("skip") != std::string::npos;
      arch = std::string(codes);
    }
    if (!saelens_inference_architecture(arch))
      fail("unknown architecture '" + arch +
           "' (expected standard|relu|topk|jumprelu or a transcoder|skip_transcoder|jumprelu_transcoder|"
           "jumprelu_skip_transcoder)");
    c.architecture = arch;
    c.k = get_int("k", saelens_architecture_uses_k(arch), 0);
    c.apply_b_dec_to_input = !c.is_transcoder();  // SAELens refuses true for transcoders
    if (auto it = j.find("apply_b_dec_to_input"); it != j.end() && !it->is_null()) {
      if (!it->is_boolean()) fail("field 'apply_b_dec_to_input' must be a boolean");
      c.apply_b_dec_to_input = it->get<bool>();
    }
    if (auto it = j.find("normalize_activations"); it != j.end() && !it->is_null()) {
      if (!it->is_string()) fail("field 'normalize_activations' must be a string");
      c.normalize_activations = it->get<std::string>();
    }
    if (auto it = j.find("dtype"); it != j.end() && !it->is_null()) {
      if (!it->is_string()) fail("field 'dtype' must be a string");
      c.dtype = it->get<std::string>();
    }
    if (auto it = j.find("metadata"); it != j.end() && it->is_object()) c.metadata = *it;
    try {
      c.validate();
    } catch (const std::invalid_argument& e) {
      fail(e.what());
    }
    return c;
  }
};

}  // namespace sae
