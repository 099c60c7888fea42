/// @file sae/losses/combined_loss.hpp
/// CombinedLoss<Terms...>: the sum of loss terms, each reported on its own.
#pragma once

#include <array>
#include <cstddef>
#include <tuple>
#include <type_traits>
#include <utility>

#include <Eigen/Core>

#include "../core/parameters.hpp"
#include "../core/policies.hpp"
#include "../core/step_state.hpp"

namespace sae {

/// Values of each term of a loss for one step, plus their sum.
template <std::size_t N>
struct LossReport {
  double total = 0;
  std::array<double, N> terms{};
};

/// L = sum of Terms (each a LossTerm, see reconstruction.hpp); held by value, no virtual calls.
///
/// @code
/// CombinedLoss<Reconstruction, L1Sparsity> loss;
/// loss.get<L1Sparsity>().coefficient = 5e-3;
/// @endcode
template <LossTerm... Terms>
struct CombinedLoss {
  static constexpr std::size_t size = sizeof...(Terms);
  using Report = LossReport<size>;

  std::tuple<Terms...> terms;

  CombinedLoss() = default;
  explicit CombinedLoss(Terms... t) : terms(std::move(t)...) {}

  /// Names of the terms, in order (keys for logs).
  static constexpr std::array<const char*, size> names() { return {Terms::name...}; }

  template <class T>
  T& get() {
    return std::get<T>(terms);
  }
  template <class T>
  const T& get() const {
    return std::get<T>(terms);
  }

  template <class T>
  static constexpr bool has() {
    return (std::is_same_v<T, Terms> || ...);
  }

  /// Sums the terms' values and gradients (see LossTerm in reconstruction.hpp).
  template <class Scalar, class Codes, class DerivedX>
  Report accumulate(const Eigen::MatrixBase<DerivedX>& X, const Parameters<Scalar>& p, StepState<Scalar, Codes>& s,
                    Parameters<Scalar>& grads) const {
    Report r;
    accumulate_each(X, p, s, grads, r, std::index_sequence_for<Terms...>{});
    for (double v : r.terms) r.total += v;
    return r;
  }

  /// Lets stateful terms (AuxK's dead-latent counts) see each training step's codes.
  template <class Codes>
  void after_update(const Codes& codes) {
    std::apply([&](auto&... t) { (after_update_one(t, codes), ...); }, terms);
  }

 private:
  template <class T, class Codes>
  static void after_update_one(T& term, const Codes& codes) {
    term.after_update(codes);
  }

  template <class Scalar, class Codes, class DerivedX, std::size_t... I>
  void accumulate_each(const Eigen::MatrixBase<DerivedX>& X, const Parameters<Scalar>& p, StepState<Scalar, Codes>& s,
                       Parameters<Scalar>& grads, Report& r, std::index_sequence<I...>) const {
    ((r.terms[I] = std::get<I>(terms).accumulate(X, p, s, grads)), ...);
  }
};

}  // namespace sae
