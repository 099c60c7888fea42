/// @file sae/train/settings.hpp
/// TrainSettings: every setting of a training run (`sae train`'s flags, libsae.train's
/// keywords), their defaults, and their JSON form (kept in checkpoints). Which variant reads
/// which setting is the variant's to say (sae/variants/, `options`).
#pragma once

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "../core/parameters.hpp"
#include "trainer.hpp"

namespace sae {

/// A training setting that cannot work (a bad value, or values that contradict each other):
/// the `sae` tool exits with status 2 for it, as for a flag it cannot parse.
struct SettingsError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

/// Every setting of a training run (`sae train --flag` is the field of the same name with '-'
/// as '_'). Defaults are the measured ones of docs/variants.md.
struct TrainSettings {
  std::vector<std::filesystem::path> data;  ///< .npy files and/or directories of them
  /// A transcoder's targets (e.g. an MLP's outputs when `data` holds its inputs): .npy files
  /// pairing row by row with `data` (one per input file, same rows). Empty: an SAE.
  std::vector<std::filesystem::path> target;
  bool skip = false;          ///< a skip transcoder: adds a learned linear W_skip x to the output (needs target)
  std::filesystem::path out;  ///< SAE directory to write (empty: keep in memory only)
  std::string arch = "topk";  ///< a variant's name or alias (variant_names())
  Index d_sae = 0;            ///< m
  Index k = 32;               ///< active latents per token (variants that use k)
  /// The variant's own options (`--l1`, `--chunks` ...), by key, as given; the variant declares
  /// their types and defaults (sae/variants/, `options`), resolved by resolve_options().
  nlohmann::json options = nlohmann::json::object();
  std::int64_t dead_tokens = 10'000'000;  ///< tokens without firing after which a latent is dead (AuxK, reports)
  std::optional<double> lr;               ///< peak lr (default default_lr(d_sae))
  TrainOptions opt;                       ///< steps, batch, warmup, decay, seed, log_every
  int threads = 0;                        ///< 0: all cores / OMP_NUM_THREADS
  std::string gemm = "auto";              ///< encoder GEMM: auto, eigen, blas or dnnl
  /// Precision of the products: auto, fp32 or bf16. TopK family: bf16 proposals, the same codes
  /// (fused_encoder.hpp); relu/jumprelu: bf16 is mixed precision (kernels::MixedPrecision), auto
  /// is fp32. Checkpointed and kept on resume, like gemm.
  std::string precision = "auto";
  std::optional<std::int64_t> shuffle_buffer;  ///< tokens; unset with one file: full shuffle
  std::string normalize = "none";              ///< none, expected-norm, unit-mean-square
  std::int64_t checkpoint_every = 0;           ///< steps between checkpoints (0: none)
  std::filesystem::path checkpoint_dir;        ///< default OUT/checkpoint
  std::filesystem::path resume;                ///< run directory or checkpoint file to continue
  /// Settings given explicitly ("lr", "--lr", "checkpoint-every" ...): resuming refuses to
  /// change any but the ones resume_settings_allowed() names.
  std::set<std::string> given;
};

/// "--checkpoint-every" / "checkpoint-every" / "checkpoint_every" -> "checkpoint_every".
inline std::string setting_key(std::string name) {
  name.erase(0, name.find_first_not_of('-'));
  for (char& c : name)
    if (c == '-') c = '_';
  return name;
}

/// Settings that may change when resuming; every other one comes from the checkpoint.
inline const std::set<std::string>& resume_settings_allowed() {
  static const std::set<std::string> s = {"resume",    "threads", "checkpoint_every", "checkpoint_dir", "out", "data",
                                          "log_every", "gemm",    "precision",        "target"};
  return s;
}

/// Default peak learning rate: 2e-4 / sqrt(m / 2^14) (the 1/sqrt(m) scaling of Gao et al.
/// 2024, Fig. 3, as dictionary_learning uses it), which gives 1.1e-3 at m = 512.
inline double default_lr(Index d_sae) { return 2e-4 / std::sqrt(static_cast<double>(d_sae) / 16384.0); }

}  // namespace sae
