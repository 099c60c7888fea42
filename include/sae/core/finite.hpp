/// @file sae/core/finite.hpp
/// NumericalError, and the check that a batch of activations holds only finite numbers: NaN or
/// Inf in the data would otherwise turn into silently wrong codes and metrics (a NaN token has
/// no active latent, a NaN error sum compares as no error).
#pragma once

#include <cmath>
#include <stdexcept>
#include <string>

#include <Eigen/Core>

#include "parameters.hpp"

namespace sae {

/// Raised when the loss, the weights or the input stop being finite; the message names where
/// (the step, the file and row of a bad token).
struct NumericalError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// Throws NumericalError "WHERE row R, dimension I is nan" (or inf/-inf) for the first
/// non-finite entry of @p X (d x B, one token per column), with R = @p first_row + its column;
/// @p where names the data ("X.npy", or empty).
template <class Derived>
void check_finite_tokens(const Eigen::MatrixBase<Derived>& X, Index first_row, const std::string& where) {
  if (X.allFinite()) return;
  for (Index t = 0; t < X.cols(); ++t)
    for (Index i = 0; i < X.rows(); ++i) {
      const double v = static_cast<double>(X(i, t));
      if (std::isfinite(v)) continue;
      throw NumericalError((where.empty() ? std::string() : where + ": ") + "row " + std::to_string(first_row + t) +
                           ", dimension " + std::to_string(i) + " is " +
                           (std::isnan(v) ? "nan" : (v > 0 ? "inf" : "-inf")) + " (activations must be finite)");
    }
}

}  // namespace sae
