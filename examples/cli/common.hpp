// Shared pieces of the `sae` subcommands: activation files, formatting, the Command type.
#pragma once

#include <sae/sae.hpp>

#include <CLI/CLI.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace sae_cli {

namespace fs = std::filesystem;
using json = nlohmann::json;

/// The action of the subcommand that was parsed; each add_<command>() sets it from the
/// subcommand's parse callback.
using Command = std::function<int()>;

/// A [N, d] .npy file seen as a d x N float matrix: mapped when float32, converted once when
/// float16.
class Activations {
 public:
  explicit Activations(const fs::path& path) : reader_(sae::io::NpyReader::open(path)) {
    if (reader_.shape().size() != 2)
      throw sae::io::IoError(path, "expected a 2-D array [tokens, d_in], got " +
                                       std::to_string(reader_.shape().size()) + " dimensions");
    if (reader_.rows() == 0 || reader_.cols() == 0)
      throw sae::io::IoError(path, "the array is empty");
    if (reader_.dtype() == sae::io::NpyDtype::F16) {
      converted_.resize(static_cast<sae::Index>(reader_.cols()), static_cast<sae::Index>(reader_.rows()));
      reader_.copy_rows_f32(0, reader_.rows(), converted_.data());
    }
  }
  const float* data() const {
    return reader_.dtype() == sae::io::NpyDtype::F32 ? reader_.f32_data() : converted_.data();
  }
  sae::Index d_in() const { return static_cast<sae::Index>(reader_.cols()); }
  sae::Index tokens() const { return static_cast<sae::Index>(reader_.rows()); }
  Eigen::Map<const sae::Mat<float>> matrix() const { return {data(), d_in(), tokens()}; }
  const fs::path& path() const { return reader_.path(); }

 private:
  sae::io::NpyReader reader_;
  sae::Mat<float> converted_;
};

inline std::string human_rate(double r) {
  char buf[32];
  if (r >= 1e6) std::snprintf(buf, sizeof buf, "%.2fM", r / 1e6);
  else if (r >= 1e3) std::snprintf(buf, sizeof buf, "%.1fk", r / 1e3);
  else std::snprintf(buf, sizeof buf, "%.0f", r);
  return buf;
}

inline std::string human_seconds(double s) {
  char buf[32];
  if (s >= 3600) std::snprintf(buf, sizeof buf, "%dh%02dm", int(s / 3600), int(std::fmod(s, 3600) / 60));
  else if (s >= 60) std::snprintf(buf, sizeof buf, "%dm%02ds", int(s / 60), int(std::fmod(s, 60)));
  else std::snprintf(buf, sizeof buf, "%.0fs", s);
  return buf;
}

inline fs::path features_path_for(const fs::path& out) {
  fs::path p = out;
  const std::string stem = out.extension() == ".npy" ? out.stem().string() : out.filename().string();
  return p.replace_filename(stem + "_features.npy");
}

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}


/// The options every subcommand that reads an SAE and activations shares: --sae and --data
/// (both required).
inline void add_sae_and_data(CLI::App* c, fs::path& sae_dir, fs::path& data,
                             const std::string& sae_help =
                                 "SAE: an SAELens directory, Gemma Scope params.npz / params.safetensors or a "
                                 "sparsify directory") {
  c->add_option("--sae", sae_dir, sae_help)->required();
  c->add_option("--data", data, "Activations .npy [tokens, d_in] (float32 or float16)")
      ->required()
      ->check(CLI::ExistingFile);
}

/// Prints @p j as the last line of stdout (the machine-readable result of every subcommand).
inline void print_result(const json& j) { std::cout << j.dump() << std::endl; }

}  // namespace sae_cli
