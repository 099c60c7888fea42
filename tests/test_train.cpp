// Training end to end on synthetic superposition data with known features, and the data
// pipeline (generator, shuffled batches).
#include "helpers.hpp"

#include <algorithm>
#include <set>

#include <Eigen/LU>

using sae::Index;
using sae::Mat;

TEST_CASE("Synthetic data: unit features, seeded, coefficients in (0, 1], about n p active per sample",
          "[train][synthetic]") {
  sae::SyntheticOptions o;
  o.d_in = 16;
  o.features = 40;
  o.samples = 5000;
  o.active_prob = 0.05;
  o.seed = 3;
  const auto a = sae::make_superposition(o);
  const auto b = sae::make_superposition(o);
  REQUIRE(a.X.rows() == 16);
  REQUIRE(a.X.cols() == 5000);
  REQUIRE(a.features.rows() == 16);
  REQUIRE(a.features.cols() == 40);
  REQUIRE(a.X == b.X);  // bit-identical for the same seed
  REQUIRE(a.features == b.features);
  o.seed = 4;
  REQUIRE(sae::make_superposition(o).X != a.X);
  for (Index i = 0; i < 40; ++i) REQUIRE(a.features.col(i).norm() == Approx(1.0).epsilon(1e-6));
  sae::SyntheticOptions q = o;
  q.d_in = 20;
  q.features = 20;
  q.samples = 20000;
  q.active_prob = 0.1;
  const auto s = sae::make_superposition(q);
  // With d = n the random directions are a basis; solve for the coefficients.
  const Eigen::MatrixXd U = s.features.cast<double>();
  const Eigen::MatrixXd C = U.fullPivLu().solve(s.X.cast<double>());
  double active = 0;
  for (Index t = 0; t < C.cols(); ++t)
    for (Index i = 0; i < C.rows(); ++i) {
      const double c = C(i, t);
      if (std::abs(c) > 1e-4) {
        REQUIRE(c > 0);
        REQUIRE(c <= 1.0 + 1e-4);
        active += 1;
      }
    }
  const double mean_active = active / static_cast<double>(q.samples);
  // Binomial(20, 0.1): mean 2, standard error of the mean over 20000 samples ~ 0.0095.
  REQUIRE(mean_active == Approx(2.0).margin(0.05));
}

TEST_CASE("ShuffledBatches: every token once per epoch, seeded order", "[train][batches]") {
  const Index d = 3, N = 50, B = 7;
  Mat<float> data(d, N);
  for (Index t = 0; t < N; ++t) data.col(t).setConstant(static_cast<float>(t));
  sae::ShuffledBatches<float> a(data, B, 99), b(data, B, 99), c(data, B, 100);
  std::multiset<int> seen;
  bool differs = false;
  for (int i = 0; i < 7; ++i) {  // 49 tokens: one short of an epoch
    const Mat<float> x = a.next();
    REQUIRE(x == b.next());
    differs |= (x != c.next());
    REQUIRE(x.cols() == B);
    for (Index t = 0; t < B; ++t) {
      REQUIRE(x(0, t) == x(2, t));  // columns are whole tokens
      seen.insert(static_cast<int>(x(0, t)));
    }
  }
  REQUIRE(differs);
  REQUIRE(seen.size() == 49);
  REQUIRE(std::set<int>(seen.begin(), seen.end()).size() == 49);  // no repeats within the epoch
  REQUIRE(a.epoch() == 0);
  a.next();
  REQUIRE(a.epoch() == 1);
}

TEST_CASE("Training: TopK recovers the true features of superposition data", "[train][recovery]") {
  // d = 64, 256 features, d_sae = 512, k = 4 (the foundation issue's check).
  sae::SyntheticOptions o;
  o.samples = 60000;
  o.seed = 11;
  const auto data = sae::make_superposition(o);
  auto cfg = sae_test::config(64, 512, 4);
  sae::TopKSae<float> model(cfg);
  sae::ShuffledBatches<float> batches(data.X, 1024, 1);
  sae::TrainOptions t;
  t.steps = 1000;
  t.lr = 1.1e-3;
  t.seed = 5;
  std::vector<double> losses;
  const auto r = sae::train(model, batches, t, [&](const sae::TrainProgress& p) { losses.push_back(p.loss); });
  REQUIRE(r.steps == 1000);
  REQUIRE(r.tokens == 1000 * 1024);
  REQUIRE(losses.size() == 10);
  REQUIRE(losses.back() < 0.5 * losses.front());
  for (Index j = 0; j < 512; ++j) REQUIRE(model.params().W_dec.col(j).norm() == Approx(1.0).epsilon(1e-5));
  const double mmcs = sae::mmcs(model.params().W_dec, data.features);
  const auto ev = sae::evaluate(model, data.X);
  INFO("mmcs " << mmcs << ", fvu " << ev.fvu << ", l0 " << ev.l0);
  REQUIRE(mmcs >= 0.95);
  REQUIRE(ev.fvu <= 0.2);
  REQUIRE(ev.l0 <= 4.0);
}

TEST_CASE("Training: ReLU + L1 finds the features and is sparse", "[train][recovery]") {
  sae::SyntheticOptions o;
  o.samples = 60000;
  o.seed = 12;
  const auto data = sae::make_superposition(o);
  auto cfg = sae_test::config(64, 512);
  sae::ReluSae<float> model(cfg);
  model.loss().get<sae::L1Sparsity>().coefficient = 0.3;
  model.loss().get<sae::L1Sparsity>().warmup_steps = 50;
  sae::ShuffledBatches<float> batches(data.X, 1024, 2);
  sae::TrainOptions t;
  t.steps = 1000;
  t.lr = 1.1e-3;
  sae::train(model, batches, t);
  const double mmcs = sae::mmcs(model.params().W_dec, data.features);
  const auto ev = sae::evaluate(model, data.X);
  INFO("mmcs " << mmcs << ", fvu " << ev.fvu << ", l0 " << ev.l0);
  REQUIRE(mmcs >= 0.9);
  REQUIRE(ev.l0 < 20);  // the data has ~4 active features per sample; an unpenalised ReLU SAE has hundreds
  REQUIRE(ev.fvu < 0.3);
}

TEST_CASE("Training: same seed and data give bit-identical weights", "[train]") {
  sae::SyntheticOptions o;
  o.d_in = 16;
  o.features = 32;
  o.samples = 3000;
  const auto data = sae::make_superposition(o);
  auto cfg = sae_test::config(16, 48, 3);
  auto run = [&] {
    sae::TopKSae<float> model(cfg);
    sae::ShuffledBatches<float> batches(data.X, 128, 7);
    sae::TrainOptions t;
    t.steps = 50;
    sae::train(model, batches, t);
    return model.params();
  };
  const auto a = run(), b = run();
  REQUIRE(a.W_enc == b.W_enc);
  REQUIRE(a.W_dec == b.W_dec);
  REQUIRE(a.b_enc == b.b_enc);
  REQUIRE(a.b_dec == b.b_dec);
}

TEST_CASE("Training: d_in mismatch and divergence are reported", "[train]") {
  auto cfg = sae_test::config(8, 16, 2);
  sae::TopKSae<float> model(cfg);
  const Mat<float> wrong = Mat<float>::Random(9, 100);
  sae::ShuffledBatches<float> batches(wrong, 10, 1);
  sae::TrainOptions t;
  t.steps = 2;
  REQUIRE_THROWS_WITH(sae::train(model, batches, t), Catch::Contains("d_in=9") && Catch::Contains("d_in=8"));

  Mat<float> bad = Mat<float>::Random(8, 100);
  bad(3, 50) = std::numeric_limits<float>::quiet_NaN();
  sae::ShuffledBatches<float> nan_batches(bad, 100, 1);
  REQUIRE_THROWS_AS(sae::train(model, nan_batches, t), sae::NumericalError);
}
