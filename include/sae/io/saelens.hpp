/// @file sae/io/saelens.hpp
/// Save and load an SAE in the SAELens (v6) directory layout:
///
///     DIR/cfg.json                   SaeConfig::to_json() (d_in, d_sae, architecture, k, ...)
///     DIR/sae_weights.safetensors    W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc [d_sae],
///                                    b_dec [d_in], threshold [d_sae] (jumprelu)
///                                    (F32 when saved; F32/F16/BF16/F64 loaded)
///
/// libsae's W_dec (d x m column-major) has exactly the bytes of SAELens's C-order [d_sae, d_in];
/// W_enc is transposed once here. Each file is written atomically (temporary + rename), the
/// weights before cfg.json, so a crash never leaves a half-written file where a good one was.
#pragma once

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "../config.hpp"
#include "../core/parameters.hpp"
#include "../version.hpp"
#include "atomic_file.hpp"
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

/// Writes @p cfg and @p p (float) to directory @p dir (created if missing).
inline void save_saelens(const std::filesystem::path& dir, const SaeConfig& cfg,
                         const Parameters<float>& p) {
  p.check_shapes();
  if (p.d_in() != cfg.d_in || p.d_sae() != cfg.d_sae)
    throw IoError(dir, "parameters do not match the configuration's d_in/d_sae");
  std::error_code ec;
  if (std::filesystem::exists(dir, ec) && !std::filesystem::is_directory(dir, ec))
    throw IoError(dir, "exists and is not a directory");
  std::filesystem::create_directories(dir, ec);
  if (ec) throw IoError(dir, "cannot create directory: " + ec.message());

  const std::int64_t d = p.d_in(), m = p.d_sae();
  const Mat<float> W_enc_t = p.W_enc.transpose();  // m x d column-major = C-order [d, m]
  SafetensorsWriter w;
  w.add("W_enc", {d, m}, std::span<const float>(W_enc_t.data(), static_cast<std::size_t>(d * m)));
  w.add("W_dec", {m, d}, std::span<const float>(p.W_dec.data(), static_cast<std::size_t>(d * m)));
  w.add("b_enc", {m}, std::span<const float>(p.b_enc.data(), static_cast<std::size_t>(m)));
  w.add("b_dec", {d}, std::span<const float>(p.b_dec.data(), static_cast<std::size_t>(d)));
  if (p.has_threshold())
    w.add("threshold", {m}, std::span<const float>(p.threshold.data(), static_cast<std::size_t>(m)));
  w.metadata()["format"] = "pt";
  w.metadata()["writer"] = std::string("libsae ") + version_string;
  w.write(dir / saelens_weights_file);

  SaeConfig c = cfg;
  c.dtype = "float32";
  const std::string text = c.to_json().dump(2) + "\n";
  write_file_atomic(dir / saelens_config_file,
                    std::span<const std::byte>(reinterpret_cast<const std::byte*>(text.data()), text.size()));
}

/// Reads cfg.json of @p dir; IoError naming the file for a missing file, invalid JSON or a bad
/// field.
inline SaeConfig load_saelens_config(const std::filesystem::path& dir) {
  const auto path = dir / saelens_config_file;
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) throw IoError(dir, "not a directory (expected an SAE directory with cfg.json)");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError(path, "cannot open (missing cfg.json?)");
  std::stringstream ss;
  ss << in.rdbuf();
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(ss.str());
  } catch (const nlohmann::json::exception& e) {
    throw IoError(path, std::string("invalid JSON: ") + e.what());
  }
  try {
    return SaeConfig::from_json(j, path.string());
  } catch (const std::runtime_error& e) {
    std::string what = e.what();
    const std::string prefix = path.string() + ": ";
    if (what.rfind(prefix, 0) == 0) what = what.substr(prefix.size());
    throw IoError(path, what);
  }
}

/// Reads cfg.json and sae_weights.safetensors of @p dir, checking every tensor's shape
/// against cfg.json (IoError naming the file and the tensor otherwise).
inline LoadedWeights load_saelens(const std::filesystem::path& dir) {
  LoadedWeights out;
  out.config = load_saelens_config(dir);
  const auto path = dir / saelens_weights_file;
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) throw IoError(path, "not found");
  const SafetensorsReader r = SafetensorsReader::open(path);
  const std::int64_t d = out.config.d_in, m = out.config.d_sae;
  auto expect = [&](const char* name, std::vector<std::int64_t> shape) {
    const TensorInfo& t = r.info(name);
    if (t.shape != shape) {
      auto fmt = [](const std::vector<std::int64_t>& s) {
        std::string o = "[";
        for (std::size_t i = 0; i < s.size(); ++i) o += (i ? ", " : "") + std::to_string(s[i]);
        return o + "]";
      };
      throw IoError(path, std::string("tensor '") + name + "' has shape " + fmt(t.shape) +
                              ", cfg.json (d_in=" + std::to_string(d) + ", d_sae=" +
                              std::to_string(m) + ") needs " + fmt(shape));
    }
  };
  expect("W_enc", {d, m});
  expect("W_dec", {m, d});
  expect("b_enc", {m});
  expect("b_dec", {d});
  const bool with_threshold = out.config.architecture == Architecture::JumpReLU;
  if (with_threshold) expect("threshold", {m});
  Parameters<float>& p = out.params;
  p = Parameters<float>(d, m, with_threshold);
  Mat<float> W_enc_t(m, d);
  r.read_into("W_enc", W_enc_t.data(), static_cast<std::size_t>(d * m));
  p.W_enc = W_enc_t.transpose();
  r.read_into("W_dec", p.W_dec.data(), static_cast<std::size_t>(d * m));
  r.read_into("b_enc", p.b_enc.data(), static_cast<std::size_t>(m));
  r.read_into("b_dec", p.b_dec.data(), static_cast<std::size_t>(d));
  if (with_threshold) r.read_into("threshold", p.threshold.data(), static_cast<std::size_t>(m));
  if (!p.all_finite()) throw IoError(path, "weights contain NaN or Inf");
  return out;
}

}  // namespace sae::io
