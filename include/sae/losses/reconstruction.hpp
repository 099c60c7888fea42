/// @file sae/losses/reconstruction.hpp
/// Reconstruction loss: mean over tokens of the squared L2 error, and the LossTerm interface.
#pragma once

#include <Eigen/Core>

#include "../core/parameters.hpp"
#include "../core/policies.hpp"
#include "../core/step_state.hpp"

namespace sae {

/// \f[ L_{rec} = \frac{1}{B} \sum_t \lVert \hat x_t - x_t \rVert_2^2,
///     \qquad \frac{\partial L_{rec}}{\partial \hat x_t} = \frac{2}{B} (\hat x_t - x_t) \f]
///
/// (Summed over the d dimensions, as SAELens and dictionary_learning do; `sae eval`'s `mse`
/// is this divided by d.) For a transcoder x_t is the target y_t and x_hat_t the output.
///
/// ## The LossTerm policy
/// Every term of a CombinedLoss provides:
/// @code
/// struct MyTerm {
///   static constexpr const char* name = "my_term";   // key in reports and logs
///   // Returns the term's value for the batch whose target is X (d_out x B: the inputs
///   // themselves for an SAE, a transcoder's targets y) and ADDS its gradient to
///   // s.grad_xhat (dL/dX_hat), s.grad_codes (dL/df, in the codes' structure) and/or
///   // grads (parameters it touches directly). s.codes and s.X_hat hold the forward pass.
///   template <class Scalar, class Codes, class DerivedX>
///   double accumulate(const Eigen::MatrixBase<DerivedX>& X, const Parameters<Scalar>& p,
///                     StepState<Scalar, Codes>& s, Parameters<Scalar>& grads) const;
///   // After each optimizer step, from the step's codes (AuxK counts dead latents here), and
///   // what a checkpoint keeps of it (core/policies.hpp, PolicyState)
///   template <class Codes> void after_update(const Codes& codes);
///   void save_state(PolicyState&) const;
///   void load_state(const PolicyState&);
/// };
/// @endcode
/// A term without state derives from StatelessTerm, which writes the last three as no-ops.
/// The LossTerm concept (core/policies.hpp) checks them where a CombinedLoss is declared.
struct Reconstruction : StatelessTerm {
  static constexpr const char* name = "mse_loss";

  template <class Scalar, class Codes, class DerivedX>
  double accumulate(const Eigen::MatrixBase<DerivedX>& X, const Parameters<Scalar>& /*p*/, StepState<Scalar, Codes>& s,
                    Parameters<Scalar>& /*grads*/) const {
    const Index B = X.cols();
    s.grad_xhat.noalias() += (s.X_hat - X) * (Scalar(2) / Scalar(B));
    const double sq = (s.X_hat - X).squaredNorm();
    return sq / static_cast<double>(B);
  }
};

}  // namespace sae
