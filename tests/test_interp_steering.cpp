// Tests for sae/interp/steering.hpp: the steering algebra, exactly where it is exact.
#include <catch2/catch.hpp>

#include "helpers.hpp"

#include <cmath>
#include <vector>

#include <sae/interp/interp.hpp>

using sae::Index;
using sae::Mat;
using sae::interp::SteerEdit;

namespace {

template <class Model>
Model make_model(Index d, Index m, std::uint64_t seed) {
  sae::SaeConfig cfg;
  cfg.d_in = d;
  cfg.d_sae = m;
  cfg.k = 5;
  Model model(cfg);
  auto p = sae_test::random_params<typename Model::scalar_type>(d, m, seed);
  // A positive threshold for JumpReLU-like models would go here; ReLU/TopK have none.
  model.set_params(std::move(p));
  return model;
}

/// Dense codes of X computed by the model (m x B).
template <class Model>
Mat<typename Model::scalar_type> dense_codes(const Model& model, const Mat<typename Model::scalar_type>& X) {
  if constexpr (Model::activation_type::sparse)
    return model.encode(X).to_dense();
  else
    return model.encode(X);
}

/// A latent that is active on at least a few tokens, and one such token.
template <class S>
std::pair<Index, Index> active_latent(const Mat<S>& F) {
  Index best = 0;
  for (Index j = 0; j < F.rows(); ++j)
    if ((F.row(j).array() != 0).count() > (F.row(best).array() != 0).count()) best = j;
  Index t = 0;
  while (F(best, t) == 0) ++t;
  return {best, t};
}

}  // namespace

TEMPLATE_TEST_CASE("steer: scale 1 and clamping to the current value return x bit for bit", "[interp][steer]",
                   sae::TopKSae<float>, sae::ReluSae<float>, sae::TopKSae<double>) {
  using S = typename TestType::scalar_type;
  const Index d = 16, m = 48, B = 64;
  const TestType model = make_model<TestType>(d, m, 31);
  const Mat<S> X = sae_test::random_matrix<S>(d, B, 32);
  const Mat<S> F = dense_codes(model, X);
  const auto [j, t] = active_latent(F);

  const Mat<S> same = sae::interp::steer(model, X, j, 1.0);
  CHECK((same.array() == X.array()).all());

  // Clamp to the value latent j has on token t: token t is unchanged exactly.
  const Mat<S> clamped = sae::interp::clamp_latent(model, X, j, static_cast<double>(F(j, t)));
  CHECK((clamped.col(t).array() == X.col(t).array()).all());
  // Tokens where j is inactive are unchanged by clamping to 0, and by any scale.
  const Mat<S> zeroed = sae::interp::clamp_latent(model, X, j, 0.0);
  const Mat<S> scaled = sae::interp::steer(model, X, j, 7.5);
  for (Index u = 0; u < B; ++u)
    if (F(j, u) == 0) {
      CHECK((zeroed.col(u).array() == X.col(u).array()).all());
      CHECK((scaled.col(u).array() == X.col(u).array()).all());
    }
}

TEMPLATE_TEST_CASE("steer: the change is (f'_j - f_j) W_dec[:, j] and the reconstruction error is kept",
                   "[interp][steer]", sae::TopKSae<double>, sae::ReluSae<double>) {
  const Index d = 16, m = 48, B = 64;
  const TestType model = make_model<TestType>(d, m, 41);
  const Mat<double> X = sae_test::random_matrix<double>(d, B, 42);
  const Mat<double> F = dense_codes(model, X);
  const auto [j, t0] = active_latent(F);
  (void)t0;
  const auto w = model.params().W_dec.col(j);
  const Mat<double> X_hat = model.params().W_dec * F + model.params().b_dec.replicate(1, B);

  for (const SteerEdit e :
       {SteerEdit::scale(j, 3.0), SteerEdit::scale(j, -2.0), SteerEdit::clamp(j, 4.25), SteerEdit::add(j, 1.5)}) {
    const Mat<double> Y = sae::interp::apply_steering(model, X, std::span<const SteerEdit>(&e, 1));
    Mat<double> F2 = F;
    for (Index t = 0; t < B; ++t) {
      const double f = F(j, t);
      const double f2 = e.mode == sae::interp::SteerMode::Scale   ? e.value * f
                        : e.mode == sae::interp::SteerMode::Clamp ? e.value
                                                                  : f + e.value;
      F2(j, t) = f2;
      const Eigen::VectorXd delta = Y.col(t) - X.col(t);
      // Along W_dec[:, j], with the expected coefficient.
      CHECK((delta - (f2 - f) * w).norm() <= 1e-12 * (1 + w.norm() * std::abs(f2 - f)));
    }
    // x' - x_hat' == x - x_hat with x_hat' the decode of the edited codes.
    const Mat<double> X_hat2 = model.params().W_dec * F2 + model.params().b_dec.replicate(1, B);
    CHECK(((Y - X_hat2) - (X - X_hat)).cwiseAbs().maxCoeff() < 1e-12);
  }
}

TEST_CASE("steer: edits of one latent compose in order, edits of different latents add up", "[interp][steer]") {
  const Index d = 10, m = 30, B = 20;
  const auto model = make_model<sae::ReluSae<double>>(d, m, 51);
  const Mat<double> X = sae_test::random_matrix<double>(d, B, 52);
  const Mat<double> F = model.encode(X);
  const std::vector<SteerEdit> scale_then_clamp = {SteerEdit::scale(3, 2.0), SteerEdit::clamp(3, 5.0)};
  const Mat<double> a = sae::interp::apply_steering(model, X, std::span<const SteerEdit>(scale_then_clamp));
  const Mat<double> b = sae::interp::clamp_latent(model, X, 3, 5.0);
  CHECK((a.array() == b.array()).all());
  const std::vector<SteerEdit> two = {SteerEdit::clamp(3, 1.0), SteerEdit::add(7, -0.5)};
  const Mat<double> c = sae::interp::apply_steering(model, X, std::span<const SteerEdit>(two));
  const Mat<double> want = X + model.params().W_dec.col(3) * (1.0 - F.row(3).array()).matrix() +
                           model.params().W_dec.col(7) * Eigen::RowVectorXd::Constant(B, -0.5);
  CHECK((c - want).cwiseAbs().maxCoeff() < 1e-12);
}

TEST_CASE("steer: add_direction needs no encoding; bad latents and shapes are rejected", "[interp][steer]") {
  const Index d = 8, m = 12, B = 5;
  const auto model = make_model<sae::TopKSae<float>>(d, m, 61);
  const Mat<float> X = sae_test::random_matrix<float>(d, B, 62);
  const Mat<float> Y = sae::interp::add_direction(model, X, 2, 0.75);
  for (Index t = 0; t < B; ++t)
    CHECK(((Y.col(t) - X.col(t)) - 0.75f * model.params().W_dec.col(2)).cwiseAbs().maxCoeff() < 1e-6f);
  CHECK_THROWS_AS(sae::interp::steer(model, X, m, 2.0), std::invalid_argument);
  CHECK_THROWS_AS(sae::interp::steer(model, X, -1, 2.0), std::invalid_argument);
  CHECK_THROWS_AS(sae::interp::steer(model, Mat<float>::Zero(d + 1, 2), 0, 2.0), std::invalid_argument);
}

TEST_CASE("latent_values: sparse lookup equals the dense row", "[interp][steer]") {
  const Index d = 12, m = 40, B = 50;
  const auto model = make_model<sae::TopKSae<float>>(d, m, 71);
  const Mat<float> X = sae_test::random_matrix<float>(d, B, 72);
  const auto codes = model.encode(X);
  const Mat<float> F = codes.to_dense();
  for (Index j = 0; j < m; ++j)
    CHECK((sae::interp::latent_values(codes, j).transpose().array() == F.row(j).array()).all());
}
