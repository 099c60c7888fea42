/// @file sae/interp/steering.hpp
/// Steering with SAE latents: scale a latent, clamp it to a value, or add its decoder direction,
/// while keeping the SAE's reconstruction error.
///
/// For a token x (d values) with codes f = encode(x) and reconstruction x_hat = W_dec f + b_dec,
/// an edit changes the code of latent j from f_j to f'_j and returns
///
///     x' = x + (f'_j - f_j) W_dec[:, j]
///        = x_hat' + (x - x_hat),     x_hat' = W_dec f' + b_dec
///
/// i.e. the edited reconstruction plus the *unchanged* error term x - x_hat (SAELens's
/// `use_error_term`), so whatever the SAE fails to reconstruct passes through untouched.
///
/// | mode  | f'_j         | change of x             |
/// |-------|--------------|-------------------------|
/// | Scale | s * f_j      | (s - 1) f_j W_dec[:, j] |
/// | Clamp | v            | (v - f_j) W_dec[:, j]   |
/// | Add   | f_j + a      | a W_dec[:, j]  (no encode needed) |
///
/// Exact properties (tested bit for bit): scale 1 and clamping to the current value return x
/// unchanged, and x' - x is always a multiple of W_dec[:, j]. Several edits apply in order to
/// the code values (Scale 2 then Clamp 5 on one latent gives f'_j = 5); edits of different
/// latents add up. A latent that is inactive on a token (f_j = 0) stays unchanged by Scale,
/// and Clamp switches it on: a TopK SAE never re-selects latents here, the edit acts on the
/// decoder side only.
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include <Eigen/Core>

#include "../core/parameters.hpp"
#include "../core/sparse_codes.hpp"
#include "encode.hpp"

namespace sae::interp {

enum class SteerMode { Scale, Clamp, Add };

/// One edit of one latent (see the table in the file comment).
struct SteerEdit {
  Index latent = 0;
  SteerMode mode = SteerMode::Scale;
  double value = 1.0;  ///< s (Scale), v (Clamp) or a (Add)

  static SteerEdit scale(Index j, double s) { return {j, SteerMode::Scale, s}; }
  static SteerEdit clamp(Index j, double v) { return {j, SteerMode::Clamp, v}; }
  static SteerEdit add(Index j, double a) { return {j, SteerMode::Add, a}; }
};

/// Reusable buffers for steering batch after batch (encoder scratch and codes).
template <class Model>
struct SteeringWorkspace {
  typename Model::State state;
  typename Model::Codes codes;
  Mat<typename Model::scalar_type> cast;
  Vec<typename Model::scalar_type> before;  ///< f_j per token of the last edit's latent
  Vec<typename Model::scalar_type> after;   ///< f'_j per token of the last edit's latent
};

/// out = X + sum over edited latents of (f'_j - f_j) W_dec[:, j], column by column
/// (X: d x B, out: d x B, resized). Encodes X once, unless every edit is an Add.
/// Throws std::invalid_argument for a latent outside [0, d_sae) or a shape mismatch, and
/// NumericalError naming the column (as "row") if X holds NaN or Inf.
template <class Model, class Derived>
void apply_steering(const Model& model, const Eigen::MatrixBase<Derived>& X, std::span<const SteerEdit> edits,
                    Mat<typename Model::scalar_type>& out, SteeringWorkspace<Model>& ws) {
  using Scalar = typename Model::scalar_type;
  if (model.config().is_transcoder())
    throw std::invalid_argument("steer: a transcoder's decoder writes into another layer's activations (d_out=" +
                                std::to_string(model.d_out()) +
                                "), so the edit x' = x + (f'_j - f_j) W_dec[:, j] has no meaning on its input");
  if (X.rows() != model.d_in())
    throw std::invalid_argument("steer: data has d_in=" + std::to_string(X.rows()) +
                                ", the SAE has d_in=" + std::to_string(model.d_in()));
  bool need_codes = false;
  for (const SteerEdit& e : edits) {
    if (e.latent < 0 || e.latent >= model.d_sae())
      throw std::invalid_argument("steer: latent " + std::to_string(e.latent) +
                                  " is outside [0, d_sae=" + std::to_string(model.d_sae()) + ")");
    need_codes = need_codes || e.mode != SteerMode::Add;
  }
  check_finite_tokens(X, 0, "");
  const Index B = X.cols();
  out = X.template cast<Scalar>();
  if (need_codes) {
    if constexpr (std::is_same_v<typename Derived::Scalar, Scalar>) {
      model.encode(X, ws.codes, ws.state);
    } else {
      ws.cast = X.template cast<Scalar>();
      model.encode(ws.cast, ws.codes, ws.state);
    }
  }
  // Distinct latents in first-appearance order; each gets its edits applied in order.
  std::vector<Index> done;
  for (std::size_t e0 = 0; e0 < edits.size(); ++e0) {
    const Index j = edits[e0].latent;
    if (std::find(done.begin(), done.end(), j) != done.end()) continue;
    done.push_back(j);
    ws.before = need_codes ? latent_values(ws.codes, j) : Vec<Scalar>::Zero(B);
    ws.after = ws.before;
    for (std::size_t e = e0; e < edits.size(); ++e) {
      if (edits[e].latent != j) continue;
      const auto v = static_cast<Scalar>(edits[e].value);
      switch (edits[e].mode) {
        case SteerMode::Scale:
          ws.after *= v;
          break;
        case SteerMode::Clamp:
          ws.after.setConstant(v);
          break;
        case SteerMode::Add:
          ws.after.array() += v;
          break;
      }
    }
    const auto w = model.params().W_dec.col(j);
    for (Index t = 0; t < B; ++t) {
      const Scalar delta = ws.after[t] - ws.before[t];
      if (delta != Scalar(0)) out.col(t).noalias() += delta * w;
    }
  }
}

/// Convenience: all edits on X (d x B), fresh buffers.
template <class Model, class Derived>
Mat<typename Model::scalar_type> apply_steering(const Model& model, const Eigen::MatrixBase<Derived>& X,
                                                std::span<const SteerEdit> edits) {
  SteeringWorkspace<Model> ws;
  Mat<typename Model::scalar_type> out;
  apply_steering(model, X, edits, out, ws);
  return out;
}

/// x' = x + (s - 1) f_j W_dec[:, j]: latent j scaled by @p scale (X: d x B).
template <class Model, class Derived>
Mat<typename Model::scalar_type> steer(const Model& model, const Eigen::MatrixBase<Derived>& X, Index latent,
                                       double scale) {
  const SteerEdit e = SteerEdit::scale(latent, scale);
  return apply_steering(model, X, std::span<const SteerEdit>(&e, 1));
}

/// x' = x + (v - f_j) W_dec[:, j]: latent j set to @p value on every token.
template <class Model, class Derived>
Mat<typename Model::scalar_type> clamp_latent(const Model& model, const Eigen::MatrixBase<Derived>& X, Index latent,
                                              double value) {
  const SteerEdit e = SteerEdit::clamp(latent, value);
  return apply_steering(model, X, std::span<const SteerEdit>(&e, 1));
}

/// x' = x + a W_dec[:, j]: additive steering along latent j's decoder direction.
template <class Model, class Derived>
Mat<typename Model::scalar_type> add_direction(const Model& model, const Eigen::MatrixBase<Derived>& X, Index latent,
                                               double amount) {
  const SteerEdit e = SteerEdit::add(latent, amount);
  return apply_steering(model, X, std::span<const SteerEdit>(&e, 1));
}

}  // namespace sae::interp
