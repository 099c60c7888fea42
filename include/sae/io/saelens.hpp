/// @file sae/io/saelens.hpp
/// Save and load an SAE in the SAELens (v6) directory layout:
///
///     DIR/cfg.json                   SaeConfig::to_json() (d_in, d_sae, architecture, k, ...)
///     DIR/sae_weights.safetensors    W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc [d_sae],
///                                    b_dec [d_in], threshold [d_sae] (jumprelu)
///                                    (transcoders: d_out for the decoder's d_in, W_skip [d_out, d_in])
///                                    (saved as F32, F16 or BF16; F32/F16/BF16/F64 loaded)
///
/// cfg.json is read defensively (size limit, nesting pre-scan, duplicate keys, invalid UTF-8
/// are one-line IoErrors) and pre-6.0 flat configs are upgraded on load: a boolean
/// `normalize_activations` becomes "expected_average_only_in"/"none", `activation_fn_str`
/// "topk" (or `activation_fn`) with `activation_fn_kwargs.k` becomes architecture "topk" with
/// `k`, and flat identity fields (`model_name`, `hook_point`/`hook_name`, `hook_layer`, ...)
/// move into `metadata`. Old JumpReLU training checkpoints that store `log_threshold` instead
/// of `threshold` are read as threshold = exp(log_threshold).
///
/// SAELens forms libsae has no variant of: "gated" (b_gate, b_mag, r_mag instead of b_enc) is
/// read as the JumpReLU SAE that computes the same codes (fold_gated); batchtopk and
/// matryoshka_batchtopk training saves as their inference form (jumprelu, threshold =
/// topk_threshold); abstopk, temporal and matching_pursuit are refused with the reason
/// (map_saelens_architecture). Transcoders ("transcoder", "skip_transcoder",
/// "jumprelu_transcoder", "jumprelu_skip_transcoder": SaeConfig::d_out > 0) are read and written
/// with d_out, W_dec [d_sae, d_out], b_dec [d_out] and, for the skip forms, W_skip [d_out, d_in]. cfg.json's metadata.sae_lens_version
/// is written as saelens_version_tag() (config.hpp), so SAELens reads the file as a v6 config
/// and keeps its metadata.
///
/// libsae's W_dec (d x m column-major) has exactly the bytes of SAELens's C-order [d_sae, d_in];
/// W_enc is transposed once here. The directory is written as a whole (io::DirectoryWriter): a
/// reader sees the old SAE or the new one, never new weights with an old cfg.json.
#pragma once

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <sys/stat.h>

#include <nlohmann/json.hpp>

#include "../config.hpp"
#include "../core/parameters.hpp"
#include "../detail/json_guard.hpp"
#include "../version.hpp"
#include "atomic_file.hpp"
#include "directory.hpp"
#include "error.hpp"
#include "safetensors.hpp"

namespace sae::io {

inline constexpr const char* saelens_config_file = "cfg.json";
inline constexpr const char* saelens_weights_file = "sae_weights.safetensors";

/// A configuration and float weights read from disk.
struct LoadedWeights {
  SaeConfig config;
  Parameters<float> params;
};

namespace detail::saelens {

/// cfg.json files larger than this are rejected before reading (real ones are a few KB).
inline constexpr std::size_t max_config_bytes = 16u << 20;

/// Reads a JSON file defensively: size checked before reading, nesting depth pre-scanned,
/// duplicate keys and invalid JSON/UTF-8 rejected. IoError "PATH: problem" otherwise.
inline nlohmann::json read_json_file(const std::filesystem::path& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) throw IoError(path, "cannot open (missing?)");
  if (!S_ISREG(st.st_mode)) throw IoError(path, "not a regular file");
  if (static_cast<std::uint64_t>(st.st_size) > max_config_bytes)
    throw IoError(path, "file is " + std::to_string(st.st_size) + " bytes, more than the " +
                            std::to_string(max_config_bytes) + "-byte limit for a JSON config");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError(path, "cannot open");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (text.size() > max_config_bytes) throw IoError(path, "file grew beyond the JSON config size limit while reading");
  nlohmann::json j;
  const std::string err = sae::detail::parse_untrusted_json(text, j);
  if (!err.empty()) throw IoError(path, err);
  return j;
}

/// The dtype name cfg.json uses for a storage dtype.
inline const char* torch_dtype_name(StDtype t) {
  switch (t) {
    case StDtype::F32:
      return "float32";
    case StDtype::F16:
      return "float16";
    case StDtype::BF16:
      return "bfloat16";
    case StDtype::F64:
      return "float64";
    default:
      return "?";
  }
}

/// Rewrites a pre-6.0 (flat) SAELens cfg.json object into the v6 fields SaeConfig reads.
/// A v6 object passes through unchanged.
inline void upgrade_pre6_config(nlohmann::json& j) {
  if (!j.is_object()) return;
  if (auto it = j.find("normalize_activations"); it != j.end() && it->is_boolean())
    *it = it->get<bool>() ? "expected_average_only_in" : "none";
  std::string act;
  for (const char* key : {"activation_fn_str", "activation_fn"})
    if (auto it = j.find(key); it != j.end() && it->is_string()) act = it->get<std::string>();
  if (j.find("k") == j.end()) {
    if (auto kw = j.find("activation_fn_kwargs"); kw != j.end() && kw->is_object())
      if (auto k = kw->find("k"); k != kw->end()) j["k"] = *k;
  }
  if (act == "topk") {
    auto a = j.find("architecture");
    if (a == j.end() || (a->is_string() && a->get<std::string>() == "standard")) j["architecture"] = "topk";
  }
  if (j.find("architecture") == j.end() && act == "relu") j["architecture"] = "standard";
  // Flat identity fields of old configs go into metadata (v6 keeps them there).
  nlohmann::json md = j.contains("metadata") && j["metadata"].is_object() ? j["metadata"] : nlohmann::json::object();
  const bool was_flat = !j.contains("metadata");
  if (was_flat) {
    for (const char* key : {"model_name", "hook_name", "hook_layer", "hook_head_index", "context_size", "prepend_bos",
                            "dataset_path", "neuronpedia_id", "model_class_name"})
      if (auto it = j.find(key); it != j.end() && !md.contains(key)) md[key] = *it;
    if (auto it = j.find("hook_point"); it != j.end() && !md.contains("hook_name")) md["hook_name"] = *it;
    if (!md.empty()) md["converted_from"] = "saelens_pre_6";
    j["metadata"] = md;
  }
}

/// The SAELens inference semantics libsae reproduces, refusing the rest (IoError naming the
/// file): a silently ignored field would give other codes than SAELens with exit status 0.
///
///   normalize_activations  "none"; "expected_average_only_in" (identity at inference: SAELens
///                          folds the factor into the weights or applies nothing); refused:
///                          "layer_norm", "constant_norm_rescale" (SAELens normalises every
///                          token at run time, x -> (x - mean)/std or sqrt(d) x/||x||, and undoes
///                          it after decoding) and "covariance_whitening".
///   rescale_acts_by_decoder_norm (topk)  read, and folded by the loader (fold_decoder_norms).
inline void check_inference_semantics(const nlohmann::json& j, const SaeConfig& c, const std::filesystem::path& path) {
  const std::string& n = c.normalize_activations;
  if (n == "layer_norm" || n == "constant_norm_rescale" || n == "covariance_whitening")
    throw IoError(path, "normalize_activations '" + n +
                            "' is applied to every token at run time by SAELens (and undone after decoding); libsae "
                            "does not implement it, so its codes would differ: refused");
  if (n != "none" && n != "expected_average_only_in")
    throw IoError(path, "unknown normalize_activations '" + n + "' (expected none or expected_average_only_in)");
  if (auto it = j.find("rescale_acts_by_decoder_norm"); it != j.end() && !it->is_null()) {
    if (!it->is_boolean()) throw IoError(path, "field 'rescale_acts_by_decoder_norm' must be a boolean");
    const std::string trained = c.metadata.is_object() ? c.metadata.value("training_architecture", "") : "";
    const bool batchtopk_save = trained == "batchtopk" || trained == "matryoshka_batchtopk";
    if (it->get<bool>() && c.architecture != "topk" && !batchtopk_save)
      throw IoError(path, "rescale_acts_by_decoder_norm is defined for topk SAEs only, not '" + c.architecture + "'");
  }
}

/// True when cfg.json asks for SAELens's rescale_acts_by_decoder_norm.
inline bool rescales_by_decoder_norm(const nlohmann::json& j) {
  const auto it = j.find("rescale_acts_by_decoder_norm");
  return it != j.end() && it->is_boolean() && it->get<bool>();
}

/// SAELens architectures libsae has no variant of. "gated" is read exactly as a jumprelu SAE
/// (the weights are folded by the loader, fold_gated) and becomes "jumprelu" in @p j, and so do
/// BatchTopK and Matryoshka BatchTopK training saves (threshold = their topk_threshold, as
/// SAELens's save_inference_model writes them); the others are refused with the reason and,
/// where SAELens can write a form libsae reads, how.
/// Returns true for "gated".
inline bool map_saelens_architecture(nlohmann::json& j, const std::filesystem::path& path) {
  const auto it = j.find("architecture");
  if (it == j.end() || !it->is_string()) return false;
  const std::string a = it->get<std::string>();
  if (a == "gated") {
    *it = "jumprelu";
    return true;
  }
  if (a == "batchtopk" || a == "matryoshka_batchtopk") {
    // A BatchTopK training save: read as SAELens's own inference form, the jumprelu SAE with
    // threshold = topk_threshold for every latent (load_saelens reads the tensor; with
    // rescale_acts_by_decoder_norm the norms are folded first, as save_inference_model does,
    // and the threshold, in those folded units already, stays as it is).
    *it = "jumprelu";
    nlohmann::json& md = j["metadata"];
    if (!md.is_object()) md = nlohmann::json::object();
    md["training_architecture"] = a;
    if (const auto k = j.find("k"); k != j.end()) md["k"] = *k;
    return false;
  }
  if (a == "abstopk")
    throw IoError(path,
                  "architecture 'abstopk' keeps the k pre-activations of largest magnitude with their "
                  "signs (codes can be negative), which no libsae architecture computes (topk keeps the k "
                  "largest through a relu): refused");
  if (a == "temporal")
    throw IoError(path,
                  "architecture 'temporal' encodes each token with attention over the preceding tokens, "
                  "which no libsae architecture computes: refused");
  if (a == "matching_pursuit")
    throw IoError(path,
                  "architecture 'matching_pursuit' encodes by iterative matching pursuit over the decoder, "
                  "which no libsae architecture computes: refused");
  return false;
}

/// SaeConfig from a cfg.json object (after upgrade_pre6_config), errors as IoError(path).
inline SaeConfig config_from_json(nlohmann::json j, const std::filesystem::path& path) {
  upgrade_pre6_config(j);
  map_saelens_architecture(j, path);
  SaeConfig c;
  try {
    c = SaeConfig::from_json(j, path.string());
  } catch (const std::exception& e) {
    std::string what = e.what();
    const std::string prefix = path.string() + ": ";
    if (what.rfind(prefix, 0) == 0) what = what.substr(prefix.size());
    throw IoError(path, what);
  }
  check_inference_semantics(j, c, path);
  return c;
}

/// std::invalid_argument unless SAELens weights can be stored as @p dtype (F32, F16, BF16).
inline void check_storable(StDtype dtype) {
  if (dtype != StDtype::F32 && dtype != StDtype::F16 && dtype != StDtype::BF16)
    throw std::invalid_argument(std::string("save_saelens: cannot store weights as ") + st_dtype_name(dtype) +
                                " (use F32, F16 or BF16)");
}

}  // namespace detail::saelens

/// The files of an SAE directory that belong to the SAE: replacing the SAE replaces or removes
/// them (a training log stays only if the new SAE comes with one); other entries are kept.
inline std::vector<std::string> saelens_owned_files() {
  // sae.safetensors: a sparsify directory's weights (formats.hpp writes TopK transcoders so),
  // which must not outlive the SAE they belong to (cfg.json names one format or the other).
  return {saelens_config_file, saelens_weights_file, "sae.safetensors", "train_log.jsonl"};
}

/// Writes @p cfg and @p p (float) into the directory writer @p w (committed by the caller, who
/// may add files such as a training log first), the tensors stored as @p dtype (F32, F16 or
/// BF16; F16/BF16 round to nearest even). cfg.json "dtype" is set to match ("float32",
/// "float16", "bfloat16"). Throws IoError, or std::invalid_argument for another dtype.
inline void save_saelens(DirectoryWriter& w, const SaeConfig& cfg, const Parameters<float>& p,
                         StDtype dtype = StDtype::F32) {
  detail::saelens::check_storable(dtype);
  p.check_shapes();
  if (p.d_in() != cfg.d_in || p.d_sae() != cfg.d_sae || p.d_out() != cfg.output_width() || p.has_skip() != cfg.skip)
    throw IoError(w.path(), "parameters do not match the configuration's d_in/d_sae/d_out/skip");
  nlohmann::json cfg_json;
  try {
    cfg_json = cfg.to_json();
  } catch (const std::invalid_argument& e) {  // a transcoder SAELens has no form of
    throw IoError(w.path(), e.what());
  }

  const std::int64_t d = p.d_in(), m = p.d_sae(), d_o = p.d_out();
  const Mat<float> W_enc_t = p.W_enc.transpose();  // m x d column-major = C-order [d, m]
  SafetensorsWriter st;
  st.add("W_enc", {d, m}, std::span<const float>(W_enc_t.data(), static_cast<std::size_t>(d * m)), dtype);
  st.add("W_dec", {m, d_o}, std::span<const float>(p.W_dec.data(), static_cast<std::size_t>(d_o * m)), dtype);
  st.add("b_enc", {m}, std::span<const float>(p.b_enc.data(), static_cast<std::size_t>(m)), dtype);
  st.add("b_dec", {d_o}, std::span<const float>(p.b_dec.data(), static_cast<std::size_t>(d_o)), dtype);
  if (p.has_threshold())
    st.add("threshold", {m}, std::span<const float>(p.threshold.data(), static_cast<std::size_t>(m)), dtype);
  Mat<float> W_skip_t;
  if (p.has_skip()) {
    W_skip_t = p.W_skip.transpose();  // d_in x d_out column-major = C-order [d_out, d_in]
    st.add("W_skip", {d_o, d}, std::span<const float>(W_skip_t.data(), static_cast<std::size_t>(d * d_o)), dtype);
  }
  st.metadata()["format"] = "pt";
  st.metadata()["writer"] = std::string("libsae ") + version_string;
  st.write_to(w.file(saelens_weights_file));

  cfg_json["dtype"] = detail::saelens::torch_dtype_name(dtype);
  const std::string text = cfg_json.dump(2) + "\n";
  w.write_file(saelens_config_file,
               std::span<const std::byte>(reinterpret_cast<const std::byte*>(text.data()), text.size()));
}

/// Writes @p cfg and @p p as the SAE directory @p dir (created if missing, replaced as a whole
/// if it exists: io::DirectoryWriter; its other entries, such as checkpoint/, are kept).
/// See the overload above for the arguments and errors.
inline void save_saelens(const std::filesystem::path& dir, const SaeConfig& cfg, const Parameters<float>& p,
                         StDtype dtype = StDtype::F32) {
  detail::saelens::check_storable(dtype);
  DirectoryWriter w(dir, saelens_config_file, saelens_owned_files());
  save_saelens(w, cfg, p, dtype);
  w.commit();
}

/// Reads cfg.json of @p dir (v6 or pre-6.0 flat); IoError naming the file for a missing file,
/// oversized or invalid JSON, a bad field, or semantics libsae does not reproduce
/// (check_inference_semantics). @p raw, if given, receives the JSON as read.
inline SaeConfig load_saelens_config(const std::filesystem::path& dir, nlohmann::json* raw = nullptr) {
  const auto path = dir / saelens_config_file;
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec))
    throw IoError(dir, "not a directory (expected an SAE directory with cfg.json)");
  if (!std::filesystem::exists(path, ec)) throw IoError(path, "cannot open (missing cfg.json?)");
  nlohmann::json j = detail::saelens::read_json_file(path);
  SaeConfig c = detail::saelens::config_from_json(j, path);
  if (raw) *raw = std::move(j);
  return c;
}

/// SAELens's rescale_acts_by_decoder_norm folded into the weights (what its fold_W_dec_norm
/// does): with n_j = ||W_dec[j]||, SAELens selects the top k of n_j z_j and decodes
/// (f_j / n_j) W_dec[j]; the same model with W_enc[:, j] and b_enc[j] scaled by n_j and
/// W_dec[j] divided by n_j gives those codes and reconstructions with the flag off. A latent
/// with n_j = 0 keeps its zero decoder and gets a zero pre-activation (as in SAELens, where
/// n_j z_j = 0).
template <class Scalar>
void fold_decoder_norms(Parameters<Scalar>& p) {
  for (Index j = 0; j < p.d_sae(); ++j) {
    const Scalar n = p.W_dec.col(j).norm();
    p.W_enc.col(j) *= n;
    p.b_enc[j] *= n;
    if (n > Scalar(0)) p.W_dec.col(j) /= n;
  }
}

/// SAELens's gated encoder (Rajamanoharan et al. 2024) as the JumpReLU SAE that computes the
/// same codes. SAELens's gated SAE, with W = W_enc, g = b_gate, b = b_mag, r = r_mag, computes
///
///     f_j = 1[x.W_j + g_j > 0] relu(e^{r_j} x.W_j + b_j)
///
/// (x after the b_dec subtraction, if any). With z_j = e^{r_j} x.W_j + b_j, the gate is
/// x.W_j > -g_j, i.e. z_j > b_j - e^{r_j} g_j (e^{r_j} > 0), so f_j = relu(z_j) 1[z_j > theta_j]:
/// a JumpReLU with W_enc[:, j] scaled by e^{r_j}, b_enc = b_mag and theta_j = b_j - e^{r_j} g_j
/// (computed in double, then rounded). @p p holds W_enc on entry and must have a threshold.
/// Equal in exact arithmetic; as between any two JumpReLU implementations, a token whose gate
/// pre-activation lies within float rounding of 0 can fall on either side.
template <class Scalar>
void fold_gated(Parameters<Scalar>& p, const Vec<Scalar>& b_gate, const Vec<Scalar>& b_mag, const Vec<Scalar>& r_mag) {
  for (Index j = 0; j < p.d_sae(); ++j) {
    const Scalar e = std::exp(r_mag[j]);
    p.W_enc.col(j) *= e;
    p.b_enc[j] = b_mag[j];
    p.threshold[j] =
        static_cast<Scalar>(static_cast<double>(b_mag[j]) - static_cast<double>(e) * static_cast<double>(b_gate[j]));
  }
}

/// Reads cfg.json and sae_weights.safetensors of @p dir, checking every tensor's shape
/// against cfg.json (IoError naming the file and the tensor otherwise). A topk cfg.json with
/// rescale_acts_by_decoder_norm: true is folded (fold_decoder_norms; metadata records it), a
/// gated SAE is read as its JumpReLU form (fold_gated; metadata.folded_gated).
inline LoadedWeights load_saelens(const std::filesystem::path& dir) {
  LoadedWeights out;
  nlohmann::json raw;
  out.config = load_saelens_config(dir, &raw);
  const bool rescale = detail::saelens::rescales_by_decoder_norm(raw);
  const auto path = dir / saelens_weights_file;
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) throw IoError(path, "not found");
  const SafetensorsReader r = SafetensorsReader::open(path);
  const std::int64_t d = out.config.d_in, m = out.config.d_sae, d_o = out.config.output_width();
  auto expect = [&](const char* name, std::vector<std::int64_t> shape) {
    const TensorInfo& t = r.info(name);
    if (t.shape != shape) {
      auto fmt = [](const std::vector<std::int64_t>& s) {
        std::string o = "[";
        for (std::size_t i = 0; i < s.size(); ++i) o += (i ? ", " : "") + std::to_string(s[i]);
        return o + "]";
      };
      throw IoError(path, std::string("tensor '") + name + "' has shape " + fmt(t.shape) +
                              ", cfg.json (d_in=" + std::to_string(d) + ", d_sae=" + std::to_string(m) +
                              (out.config.is_transcoder() ? ", d_out=" + std::to_string(d_o) : std::string()) +
                              ") needs " + fmt(shape));
    }
  };
  expect("W_enc", {d, m});
  expect("W_dec", {m, d_o});
  // SAELens gated SAEs have b_gate, b_mag and r_mag instead of b_enc (read as jumprelu: fold_gated).
  const bool gated = raw.is_object() && raw.value("architecture", std::string()) == "gated";
  for (const char* name :
       gated ? std::vector<const char*>{"b_gate", "b_mag", "r_mag"} : std::vector<const char*>{"b_enc"})
    expect(name, {m});
  expect("b_dec", {d_o});
  if (out.config.skip) expect("W_skip", {d_o, d});
  if (!out.config.skip && r.contains("W_skip"))
    throw IoError(path, "holds W_skip, but cfg.json's architecture '" + raw.value("architecture", std::string()) +
                            "' has no skip connection: refused (a skip transcoder says skip_transcoder)");
  const bool with_threshold = out.config.architecture == "jumprelu";
  // SAELens BatchTopK training saves hold one scalar topk_threshold (map_saelens_architecture).
  const std::string raw_arch = raw.is_object() ? raw.value("architecture", std::string()) : std::string();
  const bool topk_threshold = raw_arch == "batchtopk" || raw_arch == "matryoshka_batchtopk";
  if (topk_threshold) {
    if (!r.contains("topk_threshold"))
      throw IoError(path,
                    "cfg.json says a SAELens " + raw_arch + " training save, which needs the tensor 'topk_threshold'");
    const TensorInfo& t = r.info("topk_threshold");
    if (t.numel() != 1) throw IoError(path, "tensor 'topk_threshold' must hold one value");
  }
  // Old JumpReLU training checkpoints store log_threshold; threshold = exp(log_threshold).
  const bool log_threshold = with_threshold && !r.contains("threshold") && r.contains("log_threshold");
  if (with_threshold && !gated && !topk_threshold) expect(log_threshold ? "log_threshold" : "threshold", {m});
  Parameters<float>& p = out.params;
  p = Parameters<float>(d, m, with_threshold, d_o, out.config.skip);
  Mat<float> W_enc_t(m, d);
  r.read_into("W_enc", W_enc_t.data(), static_cast<std::size_t>(d * m));
  p.W_enc = W_enc_t.transpose();
  r.read_into("W_dec", p.W_dec.data(), static_cast<std::size_t>(d_o * m));
  r.read_into("b_dec", p.b_dec.data(), static_cast<std::size_t>(d_o));
  if (out.config.skip) {
    Mat<float> W_skip_t(d, d_o);  // C-order [d_out, d_in]
    r.read_into("W_skip", W_skip_t.data(), static_cast<std::size_t>(d * d_o));
    p.W_skip = W_skip_t.transpose();
  }
  if (gated) {
    Vec<float> b_gate(m), b_mag(m), r_mag(m);
    r.read_into("b_gate", b_gate.data(), static_cast<std::size_t>(m));
    r.read_into("b_mag", b_mag.data(), static_cast<std::size_t>(m));
    r.read_into("r_mag", r_mag.data(), static_cast<std::size_t>(m));
    if (!p.all_finite() || !b_gate.allFinite() || !b_mag.allFinite() || !r_mag.allFinite())
      throw IoError(path, "weights contain NaN or Inf");
    for (Index j = 0; j < m; ++j)
      if (!std::isnormal(std::exp(r_mag[j])))
        throw IoError(path,
                      "r_mag[" + std::to_string(j) + "] = " + std::to_string(r_mag[j]) +
                          ": exp(r_mag) is not a normal float, so the gated SAE has no exact jumprelu form: refused");
    fold_gated(p, b_gate, b_mag, r_mag);
    if (!p.threshold.allFinite())
      throw IoError(path,
                    "the jumprelu threshold b_mag - exp(r_mag) b_gate of this gated SAE overflows float: refused");
    out.config.metadata["folded_gated"] = true;  // cfg.json said architecture "gated"
  } else {
    r.read_into("b_enc", p.b_enc.data(), static_cast<std::size_t>(m));
  }
  if (topk_threshold) {
    double th = 0;
    r.read_into("topk_threshold", &th, 1);
    p.threshold.setConstant(static_cast<float>(th));
    out.config.metadata["batchtopk_threshold"] = th;
  } else if (with_threshold && !gated) {
    r.read_into(log_threshold ? "log_threshold" : "threshold", p.threshold.data(), static_cast<std::size_t>(m));
    if (log_threshold) p.threshold = p.threshold.array().exp().matrix();
  }
  if (!p.all_finite()) throw IoError(path, "weights contain NaN or Inf");
  if (rescale) {
    fold_decoder_norms(p);
    if (!out.config.metadata.is_object()) out.config.metadata = nlohmann::json::object();
    out.config.metadata["folded_decoder_norm"] = true;  // cfg.json said rescale_acts_by_decoder_norm
  }
  return out;
}

}  // namespace sae::io
