// Finite-difference checks of every analytic gradient (double precision): reconstruction,
// L1 (decoder-norm weighted), ReLU and TopK, with and without b_dec subtracted from the input.
#include "helpers.hpp"

using sae::Index;
using sae::Mat;

namespace {

/// Central differences of the model's total loss against its analytic gradient, for every
/// coordinate of every parameter tensor.
template <class Model>
void check_all_gradients(Model& model, const Mat<double>& X, std::int64_t step) {
  sae::Parameters<double> g;
  typename Model::State s;
  model.forward_backward(X, g, s, step);
  const double h = 1e-6;
  int checked = 0;
  double worst = 0;
  sae::zip_tensors(
      [&](const char* name, auto& p, const auto& grad) {
        for (Index i = 0; i < p.size(); ++i) {
          const double saved = p.data()[i];
          p.data()[i] = saved + h;
          const double lp = model.loss_value(X, step).total;
          p.data()[i] = saved - h;
          const double lm = model.loss_value(X, step).total;
          p.data()[i] = saved;
          const double numeric = (lp - lm) / (2 * h);
          const double analytic = grad.data()[i];
          INFO(name << "[" << i << "]: numeric " << numeric << " analytic " << analytic);
          REQUIRE(analytic == Approx(numeric).epsilon(1e-6).margin(1e-7));
          worst = std::max(worst, std::abs(analytic - numeric));
          ++checked;
        }
      },
      model.params(), g);
  REQUIRE(checked == 2 * model.d_in() * model.d_sae() + model.d_in() + model.d_sae() + model.params().threshold.size());
  INFO("worst absolute difference " << worst);
  CHECK(worst < 1e-6);
}

}  // namespace

TEST_CASE("Gradients: ReLU SAE with reconstruction + L1 match finite differences", "[core][gradients]") {
  const bool apply_b_dec = GENERATE(true, false);
  const Index d = 6, m = 10, B = 9;
  auto cfg = sae_test::config(d, m);
  cfg.apply_b_dec_to_input = apply_b_dec;
  sae::ReluSae<double> model(cfg);
  model.set_params(sae_test::random_params<double>(d, m, 11));
  auto& l1 = model.loss().get<sae::L1Sparsity>();
  l1.coefficient = 0.05;
  l1.warmup_steps = 10;
  const Mat<double> X = sae_test::random_matrix<double>(d, B, 12);
  INFO("apply_b_dec_to_input " << apply_b_dec);
  // Some but not all pre-activations are positive, so both ReLU branches are exercised.
  const auto codes = model.encode(X);
  const Index active = sae::kernels::count_active(codes);
  REQUIRE(active > 0);
  REQUIRE(active < m * B);
  check_all_gradients(model, X, /*step=*/3);  // inside the L1 warm-up
  check_all_gradients(model, X, /*step=*/50);
}

TEST_CASE("Gradients: TopK SAE reconstruction matches finite differences", "[core][gradients]") {
  const bool apply_b_dec = GENERATE(true, false);
  const Index k = GENERATE(1, 3);
  const Index d = 5, m = 12, B = 8;
  auto cfg = sae_test::config(d, m, k);
  cfg.apply_b_dec_to_input = apply_b_dec;
  sae::TopKSae<double> model(cfg);
  model.set_params(sae_test::random_params<double>(d, m, 21));
  const Mat<double> X = sae_test::random_matrix<double>(d, B, 22);
  INFO("k " << k << ", apply_b_dec_to_input " << apply_b_dec);
  const Index nnz = model.encode(X).nnz();
  REQUIRE(nnz <= k * B);
  REQUIRE(nnz >= B);
  check_all_gradients(model, X, 0);
}

TEST_CASE("Gradients: L1 term alone equals lambda/B * sum f_tj ||W_dec_j|| and its gradient", "[core][gradients]") {
  const Index d = 4, m = 7, B = 5;
  auto cfg = sae_test::config(d, m);
  using L1Only = sae::SparseAutoencoder<sae::ReLU, sae::CombinedLoss<sae::L1Sparsity>, double>;
  L1Only model(cfg);
  model.set_params(sae_test::random_params<double>(d, m, 31));
  model.loss().get<sae::L1Sparsity>().coefficient = 0.7;
  const Mat<double> X = sae_test::random_matrix<double>(d, B, 32);
  // Independent value: explicit loops over the dense codes.
  const Mat<double> F = model.encode(X);
  double expected = 0;
  for (Index t = 0; t < B; ++t)
    for (Index j = 0; j < m; ++j) expected += F(j, t) * model.params().W_dec.col(j).norm();
  expected *= 0.7 / B;
  REQUIRE(model.loss_value(X).total == Approx(expected).epsilon(1e-12));
  check_all_gradients(model, X, 0);
}

TEST_CASE("L1Sparsity: coefficient warms up linearly", "[core]") {
  sae::L1Sparsity l1;
  l1.coefficient = 2.0;
  l1.warmup_steps = 4;
  CHECK(l1.coefficient_at(0) == Approx(0.5));
  CHECK(l1.coefficient_at(1) == Approx(1.0));
  CHECK(l1.coefficient_at(3) == Approx(2.0));
  CHECK(l1.coefficient_at(100) == Approx(2.0));
  l1.warmup_steps = 0;
  CHECK(l1.coefficient_at(0) == Approx(2.0));
}
