/// @file sae/any_sae.hpp
/// AnySae: the one runtime choice of variant, made at the edge (loading a directory whose
/// cfg.json names the architecture), never per token.
#pragma once

#include <filesystem>
#include <stdexcept>
#include <type_traits>
#include <variant>

#include "config.hpp"
#include "core/sparse_autoencoder.hpp"
#include "io/saelens.hpp"

namespace sae {

/// One of the float SAE variants; use std::visit to run templated code on it.
using AnySae = std::variant<ReluSae<float>, TopKSae<float>>;

/// A zero-initialised SAE of the variant cfg.architecture names.
inline AnySae make_sae(const SaeConfig& cfg) {
  switch (cfg.architecture) {
    case Architecture::Standard: return ReluSae<float>(cfg);
    case Architecture::TopK: return TopKSae<float>(cfg);
  }
  throw std::invalid_argument("unsupported architecture");
}

/// Loads an SAELens directory into the variant its cfg.json names.
inline AnySae load_sae(const std::filesystem::path& dir) {
  io::LoadedWeights w = io::load_saelens(dir);
  AnySae sae = make_sae(w.config);
  std::visit([&](auto& m) { m.set_params(std::move(w.params)); }, sae);
  return sae;
}

/// Saves any float SAE (its config and weights) as an SAELens directory.
template <class Model>
void save_sae(const std::filesystem::path& dir, const Model& model) {
  if constexpr (std::is_same_v<typename Model::scalar_type, float>)
    io::save_saelens(dir, model.config(), model.params());
  else
    io::save_saelens(dir, model.config(), model.params().template cast<float>());
}
inline void save_sae(const std::filesystem::path& dir, const AnySae& sae) {
  std::visit([&](const auto& m) { save_sae(dir, m); }, sae);
}

}  // namespace sae
