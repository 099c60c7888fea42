/// @file sae/core/sparse_codes.hpp
/// SparseCodes: the per-token sparse latent codes (CSC) produced by TopK-family activations.
#pragma once

#include <cstdint>
#include <vector>

#include <Eigen/Core>

#include "parameters.hpp"

namespace sae {

/// Sparse codes of B tokens over m latents, in compressed sparse column form (one column per
/// token, DESIGN.md §3): the active latents of token t are
///
///     indices[offsets[t] .. offsets[t+1]),  with values values[...] (all > 0 after an activation)
///
/// This is the currency between activation, decoder, losses and backward for TopK variants;
/// it is never expanded to a dense m x B matrix in a training step (to_dense() is for tests).
template <class Scalar>
struct SparseCodes {
  Index d_sae = 0;                    ///< m
  std::vector<Index> offsets{0};      ///< B + 1 entries, offsets[0] = 0
  std::vector<std::int32_t> indices;  ///< latent ids, nnz entries
  std::vector<Scalar> values;         ///< activations, nnz entries

  Index tokens() const { return static_cast<Index>(offsets.size()) - 1; }
  Index nnz() const { return static_cast<Index>(indices.size()); }

  /// Empties the codes and reserves room for B tokens with up to k latents each.
  void reset(Index m, Index B, Index k_hint = 0) {
    d_sae = m;
    offsets.assign(static_cast<std::size_t>(B) + 1, 0);
    indices.clear();
    values.clear();
    indices.reserve(static_cast<std::size_t>(B * k_hint));
    values.reserve(static_cast<std::size_t>(B * k_hint));
  }

  /// Dense m x B copy (tests and small tools only).
  Mat<Scalar> to_dense() const {
    Mat<Scalar> f = Mat<Scalar>::Zero(d_sae, tokens());
    for (Index t = 0; t < tokens(); ++t)
      for (Index i = offsets[t]; i < offsets[t + 1]; ++i) f(indices[i], t) = values[i];
    return f;
  }
};

}  // namespace sae
