// Shared pieces of the `sae` subcommands: activation files, formatting, the Command type.
#pragma once

#include <sae/sae.hpp>

#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdlib>
#include <stdexcept>
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
      throw sae::io::IoError(
          path, "expected a 2-D array [tokens, d_in], got " + std::to_string(reader_.shape().size()) + " dimensions");
    if (reader_.rows() == 0 || reader_.cols() == 0) throw sae::io::IoError(path, "the array is empty");
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

using sae::detail::human_rate;
using sae::detail::human_seconds;

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

/// A command line that cannot work, found after parsing (a latent outside the SAE, two
/// exclusive flags...): exit status 2 like a flag CLI11 rejects, not 1.
struct UsageError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

/// CLI11 validators for real-valued flags: a finite number, > 0 (positive) or >= 0. (CLI11's
/// PositiveNumber accepts "inf"; integers cannot parse as inf, so they use CLI11's own.)
inline CLI::Validator finite_number(bool positive, bool allow_zero) {
  const std::string what = positive ? (allow_zero ? " >= 0" : " > 0") : "";
  return CLI::Validator(
      [=](std::string& s) -> std::string {
        char* end = nullptr;
        const double v = std::strtod(s.c_str(), &end);
        if (end == s.c_str() || *end != '\0' || !std::isfinite(v)) return "must be a finite number, got '" + s + "'";
        if (positive && (v < 0 || (v == 0 && !allow_zero))) return "must be" + what + ", got " + s;
        return {};
      },
      positive ? (allow_zero ? "FINITE>=0" : "FINITE>0") : "FINITE");
}
inline const CLI::Validator finite = finite_number(false, false);
inline const CLI::Validator finite_positive = finite_number(true, false);
inline const CLI::Validator finite_non_negative = finite_number(true, true);

/// Prints @p j as the last line of stdout (the machine-readable result of every subcommand).
inline void print_result(const json& j) { std::cout << j.dump() << std::endl; }

}  // namespace sae_cli
