// Metrics against direct computations written out here (DESIGN.md §4 definitions).
#include "helpers.hpp"

using sae::Index;
using sae::Mat;

namespace {

struct Direct {
  double l0, mse, fvu, dead_fraction;
};

/// The definitions, computed in one obvious pass each, in double.
template <class Model>
Direct direct_metrics(const Model& model, const Mat<float>& X) {
  const Index N = X.cols(), d = X.rows(), m = model.d_sae();
  const Mat<double> F = [&] {
    if constexpr (Model::activation_type::sparse)
      return model.encode(X).to_dense().template cast<double>().eval();
    else
      return model.encode(X).template cast<double>().eval();
  }();
  const auto P = model.params().template cast<double>();
  const Mat<double> Xd = X.cast<double>();
  const Mat<double> Xh = (P.W_dec * F).colwise() + P.b_dec;
  Direct r{};
  r.l0 = static_cast<double>((F.array() != 0).count()) / N;
  double err = 0, var = 0;
  const Eigen::VectorXd mean = Xd.rowwise().mean();
  for (Index t = 0; t < N; ++t) {
    err += (Xd.col(t) - Xh.col(t)).squaredNorm();
    var += (Xd.col(t) - mean).squaredNorm();
  }
  r.mse = err / static_cast<double>(N * d);
  r.fvu = err / var;
  Index dead = 0;
  for (Index j = 0; j < m; ++j) dead += (F.row(j).array() == 0).all();
  r.dead_fraction = static_cast<double>(dead) / m;
  return r;
}

}  // namespace

TEST_CASE("Metrics: evaluate() equals the definitions for any batch size", "[metrics]") {
  const Index d = 10, m = 60, N = 500;
  auto cfg = sae_test::config(d, m, 3);
  sae::TopKSae<float> topk(cfg);
  topk.set_params(sae_test::random_params<float>(d, m, 70));
  // Push some latents' biases very negative so they never fire (dead latents exist).
  for (Index j = 0; j < 7; ++j) topk.params().b_enc[j] = -100.0f;
  sae::ReluSae<float> relu(cfg);
  relu.set_params(sae_test::random_params<float>(d, m, 71));
  for (Index j = 0; j < 5; ++j) relu.params().b_enc[j] = -100.0f;
  // Data with a large common offset, to check the variance is taken about the mean.
  Mat<float> X = sae_test::random_matrix<float>(d, N, 72);
  X.colwise() += Eigen::VectorXf::Constant(d, 30.0f);

  auto check = [&](const auto& model) {
    const Direct ref = direct_metrics(model, X);
    const Index batch = GENERATE(1, 7, 64, 500, 4096);
    INFO("batch " << batch);
    const sae::EvalMetrics e = sae::evaluate(model, X, 0, batch);
    REQUIRE(e.tokens == N);
    REQUIRE(e.l0 == Approx(ref.l0).epsilon(1e-12));
    REQUIRE(e.mse == Approx(ref.mse).epsilon(1e-5));
    REQUIRE(e.fvu == Approx(ref.fvu).epsilon(1e-5));
    REQUIRE(e.explained_variance == Approx(1.0 - ref.fvu).epsilon(1e-5));
    REQUIRE(e.dead_fraction == Approx(ref.dead_fraction).epsilon(1e-12));
    REQUIRE(e.dead_fraction > 0);
  };
  SECTION("topk") { check(topk); }
  SECTION("relu") { check(relu); }
}

TEST_CASE("Metrics: limit evaluates only the first tokens", "[metrics]") {
  const Index d = 6, m = 20;
  auto cfg = sae_test::config(d, m, 2);
  sae::TopKSae<float> model(cfg);
  model.set_params(sae_test::random_params<float>(d, m, 80));
  const Mat<float> X = sae_test::random_matrix<float>(d, 300, 81);
  const auto a = sae::evaluate(model, X, 120);
  const Mat<float> first = X.leftCols(120);
  const auto b = sae::evaluate(model, first);
  REQUIRE(a.tokens == 120);
  REQUIRE(a.fvu == Approx(b.fvu).epsilon(1e-12));
  REQUIRE(a.l0 == b.l0);
}

TEST_CASE("Metrics: perfect reconstruction has fvu 0; the mean alone has fvu 1", "[metrics]") {
  // A ReLU SAE with W_enc = W_dec = [I, -I] and b = 0 reconstructs any x exactly.
  const Index d = 5, N = 200;
  auto cfg = sae_test::config(d, 2 * d);
  cfg.apply_b_dec_to_input = false;
  sae::ReluSae<double> model(cfg);
  sae::Parameters<double> p(d, 2 * d);
  p.W_enc << Eigen::MatrixXd::Identity(d, d), -Eigen::MatrixXd::Identity(d, d);
  p.W_dec = p.W_enc;
  model.set_params(p);
  const Mat<float> X = sae_test::random_matrix<float>(d, N, 90);
  const auto e = sae::evaluate(model, X);
  REQUIRE(e.fvu == Approx(0.0).margin(1e-12));
  REQUIRE(e.explained_variance == Approx(1.0).margin(1e-12));
  // Zero weights and b_dec = mean(x): x_hat is the mean for every token, so fvu = 1.
  sae::Parameters<double> q(d, 2 * d);
  q.b_dec = X.cast<double>().rowwise().mean();
  model.set_params(q);
  const auto z = sae::evaluate(model, X);
  REQUIRE(z.fvu == Approx(1.0).epsilon(1e-9));
  REQUIRE(z.l0 == 0.0);
  REQUIRE(z.dead_fraction == 1.0);
}

TEST_CASE("MMCS: 1 when the decoder contains the features, the mean of best cosines otherwise", "[metrics]") {
  const Index d = 8, n = 5;
  const Mat<float> U = sae_test::random_matrix<float>(d, n, 91);
  Mat<float> W(d, 12);
  W.setZero();
  W.leftCols(n) = U * 3.0f;  // scaled copies: cosine 1
  W.rightCols(7) = sae_test::random_matrix<float>(d, 7, 92);
  REQUIRE(sae::mmcs(W, U) == Approx(1.0).epsilon(1e-6));
  // Against a random decoder: check the mean of per-feature maxima by brute force.
  const Mat<float> R = sae_test::random_matrix<float>(d, 9, 93);
  double expected = 0;
  for (Index i = 0; i < n; ++i) {
    double best = -2;
    for (Index j = 0; j < R.cols(); ++j)
      best = std::max(best, static_cast<double>(U.col(i).dot(R.col(j))) / (U.col(i).norm() * R.col(j).norm()));
    expected += best / n;
  }
  REQUIRE(sae::mmcs(R, U) == Approx(expected).epsilon(1e-6));
  REQUIRE_THROWS_AS(sae::mmcs(R, Mat<float>(d + 1, 3)), std::invalid_argument);
}
