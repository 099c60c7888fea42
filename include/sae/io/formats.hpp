/// @file sae/io/formats.hpp
/// Reading SAEs written by other tools: format detection and the foreign loaders.
///
///   format        on disk                                         tensors (C order)
///   saelens       DIR/cfg.json + DIR/sae_weights.safetensors      see sae/io/saelens.hpp
///   gemma_scope   params.npz (the file, or a DIR holding it)      W_enc [d, m], W_dec [m, d],
///                                                                 b_enc [m], b_dec [d],
///                                                                 threshold [m]
///   gemma_scope_2 params.safetensors (file, or DIR holding it)    w_enc, w_dec, b_enc, b_dec,
///                                                                 threshold (same shapes)
///   sparsify      DIR/cfg.json + DIR/sae.safetensors              encoder.weight [m, d],
///                                                                 encoder.bias [m],
///                                                                 W_dec [m, d], b_dec [d]
///
/// Gemma Scope SAEs are JumpReLU with apply_b_dec_to_input = false (Gemma Scope does not
/// subtract b_dec before encoding); either key case (W_enc / w_enc) is accepted in both
/// Gemma Scope formats, as SAELens does. sparsify SAEs are TopK with k from cfg.json and
/// apply_b_dec_to_input = true (multi_topk and normalize_decoder only change training); skip
/// connections, transcoders and groupmax are refused with the reason. Every loader checks every tensor's shape against the others (and against
/// cfg.json) before allocating, rejects NaN/Inf weights, and throws only sae::io::IoError
/// "PATH: problem" (one line).
#pragma once

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "../config.hpp"
#include "../core/parameters.hpp"
#include "error.hpp"
#include "../version.hpp"
#include "directory.hpp"
#include "npz.hpp"
#include "saelens.hpp"
#include "safetensors.hpp"

namespace sae::io {

/// The on-disk SAE formats load_sae() understands.
enum class SaeFormat { SAELens, GemmaScope, GemmaScope2, Sparsify };

/// "saelens", "gemma_scope", "gemma_scope_2", "sparsify".
constexpr const char* sae_format_name(SaeFormat f) noexcept {
  switch (f) {
    case SaeFormat::SAELens:
      return "saelens";
    case SaeFormat::GemmaScope:
      return "gemma_scope";
    case SaeFormat::GemmaScope2:
      return "gemma_scope_2";
    case SaeFormat::Sparsify:
      return "sparsify";
  }
  return "?";
}

/// Where an SAE lives: its format and the path to hand to the format's loader (a directory
/// for saelens/sparsify, the weights file for the Gemma Scope formats).
struct SaeLocation {
  SaeFormat format = SaeFormat::SAELens;
  std::filesystem::path path;
};

inline constexpr const char* sparsify_config_file = "cfg.json";
inline constexpr const char* sparsify_weights_file = "sae.safetensors";
inline constexpr const char* gemma_scope_file = "params.npz";
inline constexpr const char* gemma_scope_2_file = "params.safetensors";

/// Decides the format of `path` (a directory or a weights file) from file names and, for a
/// lone file, its first bytes ("PK\3\4" = npz). IoError "PATH: problem" when nothing matches.
inline SaeLocation detect_sae_format(const std::filesystem::path& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (ec || !fs::exists(st)) throw IoError(path, "not found (not a directory or an SAE file)");
  auto is_file = [](const fs::path& p) {
    std::error_code e;
    return fs::is_regular_file(p, e);
  };
  if (fs::is_directory(st)) {
    const bool cfg = is_file(path / saelens_config_file);
    if (cfg && is_file(path / saelens_weights_file)) return {SaeFormat::SAELens, path};
    if (cfg && is_file(path / sparsify_weights_file)) return {SaeFormat::Sparsify, path};
    if (is_file(path / gemma_scope_file)) return {SaeFormat::GemmaScope, path / gemma_scope_file};
    if (is_file(path / gemma_scope_2_file)) return {SaeFormat::GemmaScope2, path / gemma_scope_2_file};
    // cfg.json alone: report it as an SAELens directory whose weights file is missing.
    if (cfg) return {SaeFormat::SAELens, path};
    throw IoError(path,
                  "not a recognised SAE directory (expected cfg.json + sae_weights.safetensors, "
                  "cfg.json + sae.safetensors, params.npz or params.safetensors)");
  }
  if (!fs::is_regular_file(st)) throw IoError(path, "not a regular file or directory");
  const std::string name = path.filename().string();
  const fs::path dir = path.parent_path().empty() ? fs::path(".") : path.parent_path();
  if (name == saelens_weights_file && is_file(dir / saelens_config_file)) return {SaeFormat::SAELens, dir};
  if (name == sparsify_weights_file && is_file(dir / sparsify_config_file)) return {SaeFormat::Sparsify, dir};
  if (name == saelens_config_file) {
    if (is_file(dir / saelens_weights_file)) return {SaeFormat::SAELens, dir};
    if (is_file(dir / sparsify_weights_file)) return {SaeFormat::Sparsify, dir};
  }
  // A lone file: npz by magic or extension, otherwise safetensors by extension.
  char magic[4] = {};
  {
    std::ifstream in(path, std::ios::binary);
    in.read(magic, 4);
  }
  const bool zip = magic[0] == 'P' && magic[1] == 'K' && magic[2] == 3 && magic[3] == 4;
  if (zip || path.extension() == ".npz") return {SaeFormat::GemmaScope, path};
  if (path.extension() == ".safetensors") return {SaeFormat::GemmaScope2, path};
  throw IoError(path,
                "not a recognised SAE file (expected a Gemma Scope params.npz or params.safetensors, "
                "or an SAE directory)");
}

namespace detail::formats {

inline std::string fmt_shape(const std::vector<std::size_t>& s) {
  std::string o = "[";
  for (std::size_t i = 0; i < s.size(); ++i) o += (i ? ", " : "") + std::to_string(s[i]);
  return o + "]";
}

inline std::vector<std::size_t> to_size_shape(const std::vector<std::int64_t>& s) { return {s.begin(), s.end()}; }

/// Size limit for d_in and d_sae read from foreign files (Eigen indexes are signed).
inline bool dim_ok(std::size_t v) {
  return v > 0 && v <= static_cast<std::size_t>(std::numeric_limits<std::int32_t>::max());
}

/// The Gemma Scope tensors, whichever source they come from. `shape(name)` returns the C-order
/// shape of an existing tensor, `read(name, out, count)` fills C-order floats.
template <class Source>
LoadedWeights load_gemma_like(const std::filesystem::path& path, const Source& src, const char* format_name) {
  // Gemma Scope uses W_enc..., Gemma Scope 2 w_enc...; accept either, as SAELens does.
  auto key = [&](const char* upper, const char* lower) -> std::string {
    if (src.has(upper)) return upper;
    if (src.has(lower)) return lower;
    throw IoError(path, std::string("missing tensor '") + upper + "' (or '" + lower + "')");
  };
  if (src.has("W_skip") || src.has("w_skip"))
    throw IoError(path, "holds W_skip, which Gemma Scope files name affine_skip_connection [d_in, d_out]: refused");
  const std::string kWe = key("W_enc", "w_enc"), kWd = key("W_dec", "w_dec");
  const std::string kbe = key("b_enc", "B_enc"), kbd = key("b_dec", "B_dec");
  const std::string kth = key("threshold", "log_threshold");
  const std::vector<std::size_t> se = src.shape(kWe);
  if (se.size() != 2 || !dim_ok(se[0]) || !dim_ok(se[1]))
    throw IoError(path, "tensor '" + kWe + "' has shape " + fmt_shape(se) + ", expected [d_in, d_sae]");
  const std::size_t d = se[0], m = se[1];
  auto expect = [&](const std::string& k, std::vector<std::size_t> want) {
    const std::vector<std::size_t> got = src.shape(k);
    if (got != want)
      throw IoError(path, "tensor '" + k + "' has shape " + fmt_shape(got) + ", but " + kWe + " " + fmt_shape(se) +
                              " needs " + fmt_shape(want));
  };
  // Gemma Scope transcoders (JumpReLU): W_dec [d_sae, d_out], b_dec [d_out], and for skip
  // transcoders affine_skip_connection [d_in, d_out] (y += x A, so W_skip = A^T, SAELens's
  // loader reads it so). One whose d_out = d_in and has no skip term reads as an SAE: the same
  // codes and outputs, only `eval` then compares with its input.
  const std::vector<std::size_t> sd = src.shape(kWd);
  const std::size_t e = sd.size() == 2 && sd[0] == m && dim_ok(sd[1]) ? sd[1] : d;
  const bool skip = src.has("affine_skip_connection");
  expect(kWd, {m, e});
  expect(kbe, {m});
  expect(kbd, {e});
  expect(kth, {m});
  if (skip) expect("affine_skip_connection", {d, e});

  LoadedWeights out;
  SaeConfig& c = out.config;
  c.d_in = static_cast<std::int64_t>(d);
  c.d_sae = static_cast<std::int64_t>(m);
  c.architecture = "jumprelu";  // Gemma Scope: SAELens's jumprelu
  c.k = 0;
  c.apply_b_dec_to_input = false;
  c.normalize_activations = "none";
  c.dtype = "float32";
  c.metadata = nlohmann::json::object();
  c.metadata["converted_from"] = format_name;
  if (e != d || skip) {
    c.d_out = static_cast<std::int64_t>(e);
    c.skip = skip;
  }
  Parameters<float>& p = out.params;
  p = Parameters<float>(c.d_in, c.d_sae, true, c.output_width(), skip);
  Mat<float> W_enc_t(c.d_sae, c.d_in);  // C-order [d, m] = column-major m x d
  src.read(kWe, W_enc_t.data(), d * m);
  p.W_enc = W_enc_t.transpose();
  src.read(kWd, p.W_dec.data(), e * m);  // C-order [m, e] = column-major e x m: same bytes
  src.read(kbe, p.b_enc.data(), m);
  src.read(kbd, p.b_dec.data(), e);
  if (skip) src.read("affine_skip_connection", p.W_skip.data(), d * e);  // C-order [d, e] = W_skip (e x d)
  src.read(kth, p.threshold.data(), m);
  if (kth == "log_threshold") p.threshold = p.threshold.array().exp().matrix();
  if (!p.all_finite()) throw IoError(path, "weights contain NaN or Inf");
  return out;
}

/// Adapts NpzReader to load_gemma_like (arrays are decompressed once and cached).
class NpzSource {
 public:
  explicit NpzSource(const std::filesystem::path& path) : r_(NpzReader::open(path)) {}
  bool has(const std::string& k) const { return r_.contains(k); }
  std::vector<std::size_t> shape(const std::string& k) const { return get(k).shape; }
  void read(const std::string& k, float* out, std::size_t n) const {
    const NpzArray<float>& a = get(k);
    if (a.data.size() != n)
      throw IoError(r_.path(), "array '" + k + "' has " + std::to_string(a.data.size()) + " elements, expected " +
                                   std::to_string(n));
    std::copy(a.data.begin(), a.data.end(), out);
  }

 private:
  const NpzArray<float>& get(const std::string& k) const {
    auto it = cache_.find(k);
    if (it == cache_.end()) it = cache_.emplace(k, r_.read_f32(k)).first;
    return it->second;
  }
  NpzReader r_;
  mutable std::map<std::string, NpzArray<float>> cache_;
};

/// Adapts SafetensorsReader to load_gemma_like.
class SafetensorsSource {
 public:
  explicit SafetensorsSource(const std::filesystem::path& path) : r_(SafetensorsReader::open(path)) {}
  bool has(const std::string& k) const { return r_.contains(k); }
  std::vector<std::size_t> shape(const std::string& k) const { return to_size_shape(r_.info(k).shape); }
  void read(const std::string& k, float* out, std::size_t n) const { r_.read_into(k, out, n); }

 private:
  SafetensorsReader r_;
};

}  // namespace detail::formats

/// Loads a Gemma Scope params.npz (stored or deflate members; '<f4', '<f2' or '<f8').
inline LoadedWeights load_gemma_scope_npz(const std::filesystem::path& file) {
  const detail::formats::NpzSource src(file);
  return detail::formats::load_gemma_like(file, src, sae_format_name(SaeFormat::GemmaScope));
}

/// Loads a Gemma Scope 2 params.safetensors (F32, F16, BF16 or F64 tensors).
inline LoadedWeights load_gemma_scope_2(const std::filesystem::path& file) {
  const detail::formats::SafetensorsSource src(file);
  return detail::formats::load_gemma_like(file, src, sae_format_name(SaeFormat::GemmaScope2));
}

/// Loads a sparsify directory: cfg.json (d_in, num_latents or expansion_factor, k, activation,
/// skip_connection, transcode) and sae.safetensors (encoder.weight [m, d], encoder.bias [m],
/// W_dec [m, d], b_dec [d]). The result is a TopK SAE with apply_b_dec_to_input = true.
inline LoadedWeights load_sparsify(const std::filesystem::path& dir) {
  const std::filesystem::path cfg_path = dir / sparsify_config_file;
  const std::filesystem::path w_path = dir / sparsify_weights_file;
  const nlohmann::json j = detail::saelens::read_json_file(cfg_path);
  if (!j.is_object()) throw IoError(cfg_path, "expected a JSON object");
  auto get_uint = [&](const char* k, bool required) -> std::int64_t {
    auto it = j.find(k);
    if (it == j.end() || it->is_null()) {
      if (required) throw IoError(cfg_path, std::string("missing field '") + k + "'");
      return -1;
    }
    if (!it->is_number_integer() || (!it->is_number_unsigned() && it->get<std::int64_t>() < 0))
      throw IoError(cfg_path, std::string("field '") + k + "' must be a non-negative integer");
    const auto v = it->get<std::uint64_t>();
    if (v > static_cast<std::uint64_t>(std::numeric_limits<std::int32_t>::max()))
      throw IoError(cfg_path, std::string("field '") + k + "' is too large (" + std::to_string(v) + ")");
    return static_cast<std::int64_t>(v);
  };
  auto get_bool = [&](const char* k) {
    auto it = j.find(k);
    if (it == j.end() || it->is_null()) return false;
    if (!it->is_boolean()) throw IoError(cfg_path, std::string("field '") + k + "' must be a boolean");
    return it->get<bool>();
  };
  if (auto it = j.find("activation"); it != j.end() && !it->is_null()) {
    if (!it->is_string()) throw IoError(cfg_path, "field 'activation' must be a string");
    const std::string act = it->get<std::string>();
    if (act == "groupmax")
      throw IoError(cfg_path,
                    "activation 'groupmax' keeps the largest relu pre-activation in each of k groups "
                    "of num_latents/k latents, which no libsae architecture computes: refused");
    if (act != "topk")
      throw IoError(cfg_path, "activation '" + detail::st::printable(act, 40) +
                                  "' is not supported (only topk and the refused groupmax are known)");
  }
  // A sparsify transcoder (transcode: true) encodes x without the b_dec subtraction and decodes
  // into d_in values of another module; skip_connection adds W_skip x (Paulo et al. 2025).
  const bool transcode = get_bool("transcode");
  const bool skip = get_bool("skip_connection");
  if (skip && !transcode)
    throw IoError(cfg_path,
                  "skip_connection without transcode: sparsify's SAE reconstruction adds a linear term W_skip x, "
                  "which libsae has for transcoders only (the codes would agree, reconstructions and eval "
                  "would not): refused");
  const std::int64_t k = get_uint("k", true);
  const std::int64_t d_in = get_uint("d_in", true);
  std::int64_t m = get_uint("num_latents", false);
  if (m <= 0) {
    auto it = j.find("expansion_factor");
    if (it == j.end() || !it->is_number_integer() || it->get<std::int64_t>() <= 0)
      throw IoError(cfg_path, "needs a positive 'num_latents' or 'expansion_factor'");
    const auto ef = it->get<std::int64_t>();
    if (ef > std::numeric_limits<std::int32_t>::max() / std::max<std::int64_t>(d_in, 1))
      throw IoError(cfg_path, "expansion_factor * d_in is too large");
    m = ef * d_in;
  }

  std::error_code ec;
  if (!std::filesystem::exists(w_path, ec)) throw IoError(w_path, "not found");
  const SafetensorsReader r = SafetensorsReader::open(w_path);
  if (r.contains("W_skip") && !skip)
    throw IoError(w_path, "holds W_skip, but cfg.json has no skip_connection: refused");
  auto expect = [&](const char* name, std::vector<std::int64_t> want) {
    const TensorInfo& t = r.info(name);
    if (t.shape != want)
      throw IoError(w_path, std::string("tensor '") + name + "' has shape " +
                                detail::formats::fmt_shape(detail::formats::to_size_shape(t.shape)) +
                                ", cfg.json (d_in=" + std::to_string(d_in) + ", d_sae=" + std::to_string(m) +
                                ") needs " + detail::formats::fmt_shape(detail::formats::to_size_shape(want)));
  };
  expect("encoder.weight", {m, d_in});
  expect("encoder.bias", {m});
  expect("W_dec", {m, d_in});
  expect("b_dec", {d_in});
  if (skip) expect("W_skip", {d_in, d_in});

  LoadedWeights out;
  SaeConfig& c = out.config;
  c.d_in = d_in;
  c.d_sae = m;
  c.architecture = "topk";  // sparsify: SAELens's topk
  c.k = k;
  c.apply_b_dec_to_input = !transcode;
  c.d_out = transcode ? d_in : 0;  // a sparsify transcoder's output has its input's width
  c.skip = skip;
  c.dtype = "float32";
  c.metadata = nlohmann::json::object();
  c.metadata["converted_from"] = sae_format_name(SaeFormat::Sparsify);
  try {
    c.validate();
  } catch (const std::invalid_argument& e) {
    throw IoError(cfg_path, e.what());
  }
  Parameters<float>& p = out.params;
  p = Parameters<float>(d_in, m, false, d_in, skip);
  const auto n = static_cast<std::size_t>(d_in * m);
  // C-order [m, d] is column-major d x m: encoder.weight is W_enc and W_dec as stored here.
  r.read_into("encoder.weight", p.W_enc.data(), n);
  r.read_into("W_dec", p.W_dec.data(), n);
  r.read_into("encoder.bias", p.b_enc.data(), static_cast<std::size_t>(m));
  r.read_into("b_dec", p.b_dec.data(), static_cast<std::size_t>(d_in));
  if (skip) {
    Mat<float> W_skip_t(d_in, d_in);  // C-order [d_out, d_in]: y += x @ W_skip.T
    r.read_into("W_skip", W_skip_t.data(), static_cast<std::size_t>(d_in * d_in));
    p.W_skip = W_skip_t.transpose();
  }
  if (!p.all_finite()) throw IoError(w_path, "weights contain NaN or Inf");
  return out;
}

/// True when @p cfg is a transcoder SAELens has no form of but sparsify has: TopK codes, the
/// output as wide as the input (sparsify's transcoders decode into d_in values).
inline bool sparsify_only_transcoder(const SaeConfig& cfg) {
  return cfg.is_transcoder() && cfg.architecture == "topk" && cfg.d_out == cfg.d_in;
}

/// Writes a TopK transcoder as a sparsify directory (cfg.json + sae.safetensors, what
/// sparsify's SparseCoder.save_to_disk writes and load_from_disk reads): cfg.json
/// {activation "topk", num_latents, k, transcode true, skip_connection, normalize_decoder, d_in},
/// tensors encoder.weight [m, d], encoder.bias [m], W_dec [m, d], b_dec [d], W_skip [d, d].
/// libsae's own settings ride along in cfg.json's "libsae" object (sparsify drops unknown
/// fields). IoError for anything but a TopK transcoder with d_out = d_in.
inline void save_sparsify(DirectoryWriter& w, const SaeConfig& cfg, const Parameters<float>& p,
                          StDtype dtype = StDtype::F32) {
  detail::saelens::check_storable(dtype);
  p.check_shapes();
  if (!sparsify_only_transcoder(cfg))
    throw IoError(w.path(), "sparsify directories are written for TopK transcoders with d_out = d_in only");
  const std::int64_t d = p.d_in(), m = p.d_sae();
  SafetensorsWriter st;
  st.add("encoder.weight", {m, d}, std::span<const float>(p.W_enc.data(), static_cast<std::size_t>(d * m)), dtype);
  st.add("encoder.bias", {m}, std::span<const float>(p.b_enc.data(), static_cast<std::size_t>(m)), dtype);
  st.add("W_dec", {m, d}, std::span<const float>(p.W_dec.data(), static_cast<std::size_t>(d * m)), dtype);
  st.add("b_dec", {d}, std::span<const float>(p.b_dec.data(), static_cast<std::size_t>(d)), dtype);
  Mat<float> W_skip_t;
  if (p.has_skip()) {
    W_skip_t = p.W_skip.transpose();
    st.add("W_skip", {d, d}, std::span<const float>(W_skip_t.data(), static_cast<std::size_t>(d * d)), dtype);
  }
  st.metadata()["format"] = "pt";
  st.metadata()["writer"] = std::string("libsae ") + version_string;
  st.write_to(w.file(sparsify_weights_file));
  nlohmann::json j = {{"activation", "topk"},
                      {"expansion_factor", std::max<std::int64_t>(1, m / d)},
                      {"normalize_decoder", true},
                      {"num_latents", m},
                      {"k", cfg.k},
                      {"multi_topk", false},
                      {"skip_connection", p.has_skip()},
                      {"transcode", true},
                      {"d_in", d}};
  nlohmann::json md = cfg.metadata.is_object() ? cfg.metadata : nlohmann::json::object();
  md["libsae_version"] = version_string;
  j["libsae"] = md;
  const std::string text = j.dump(2) + "\n";
  w.write_file(sparsify_config_file,
               std::span<const std::byte>(reinterpret_cast<const std::byte*>(text.data()), text.size()));
}

/// Detects the format of `path` and loads it. Throws IoError only.
inline LoadedWeights load_sae_weights(const std::filesystem::path& path, SaeFormat* format = nullptr) {
  const SaeLocation loc = detect_sae_format(path);
  if (format) *format = loc.format;
  switch (loc.format) {
    case SaeFormat::SAELens:
      return load_saelens(loc.path);
    case SaeFormat::GemmaScope:
      return load_gemma_scope_npz(loc.path);
    case SaeFormat::GemmaScope2:
      return load_gemma_scope_2(loc.path);
    case SaeFormat::Sparsify:
      return load_sparsify(loc.path);
  }
  throw IoError(path, "unknown SAE format");
}

}  // namespace sae::io
