// Matryoshka BatchTopK (variants/matryoshka.hpp, losses/matryoshka.hpp): the inner prefix
// losses against a dense computation, finite-difference gradients, the widths' checks, the
// saved inference form, and recovery of known features on synthetic data.
#include "helpers.hpp"

#include <algorithm>

using sae::Index;
using sae::Mat;

namespace {

/// sum over inner widths w of (1/B) sum_t ||x_t - b_dec - W_dec[:, :w] f_t[:w]||^2, dense.
double inner_loss_dense(const sae::Parameters<double>& p, const Mat<double>& F, const Mat<double>& X,
                        const std::vector<Index>& widths) {
  double total = 0;
  for (std::size_t i = 0; i + 1 < widths.size(); ++i) {
    const Index w = widths[i];
    const Mat<double> Xh = (p.W_dec.leftCols(w) * F.topRows(w)).colwise() + p.b_dec;
    total += (X - Xh).squaredNorm() / static_cast<double>(X.cols());
  }
  return total;
}

}  // namespace

TEST_CASE("Matryoshka: inner losses equal the dense prefix reconstructions; gradients match finite differences",
          "[core][matryoshka][gradients]") {
  const bool apply_b_dec = GENERATE(true, false);
  const Index d = 5, m = 14, k = 3, B = 7;
  auto cfg = sae_test::config(d, m, k);
  cfg.apply_b_dec_to_input = apply_b_dec;
  sae::MatryoshkaBatchTopKSae<double> model(cfg);
  REQUIRE(model.config().architecture == "matryoshka_batchtopk");
  model.set_params(sae_test::random_params<double>(d, m, 31));
  model.loss().get<sae::MatryoshkaInner>().widths = {2, 6, 14};
  model.loss().get<sae::AuxK>().coefficient = 0;  // AuxK has its own tests
  const Mat<double> X = sae_test::random_matrix<double>(d, B, 32);
  sae::Parameters<double> g;
  sae::MatryoshkaBatchTopKSae<double>::State s;
  const auto r = model.forward_backward(X, g, s);
  INFO("apply_b_dec_to_input " << apply_b_dec);
  // Codes in every segment, so every level's gradient path is exercised.
  const Mat<double> F = s.codes.to_dense();
  REQUIRE(F.topRows(2).cwiseAbs().sum() > 0);
  REQUIRE(F.middleRows(2, 4).cwiseAbs().sum() > 0);
  REQUIRE(F.bottomRows(8).cwiseAbs().sum() > 0);
  const double inner = inner_loss_dense(model.params(), F, X, {2, 6, 14});
  REQUIRE(r.terms[1] == Approx(inner).epsilon(1e-12));
  REQUIRE(r.terms[0] ==
          Approx((X - ((model.params().W_dec * F).colwise() + model.params().b_dec)).squaredNorm() / B).epsilon(1e-12));
  const double h = 1e-6;
  int checked = 0;
  sae::zip_tensors(
      [&](const char* name, auto& p, const auto& grad) {
        for (Index i = 0; i < p.size(); ++i) {
          const double saved = p.data()[i];
          p.data()[i] = saved + h;
          const double lp = model.loss_value(X).total;
          p.data()[i] = saved - h;
          const double lm = model.loss_value(X).total;
          p.data()[i] = saved;
          INFO(name << "[" << i << "]");
          REQUIRE(grad.data()[i] == Approx((lp - lm) / (2 * h)).epsilon(1e-6).margin(1e-7));
          ++checked;
        }
      },
      model.params(), g);
  REQUIRE(checked == 2 * d * m + d + m);
}

TEST_CASE("Matryoshka: one level is BatchTopK; the widths are checked", "[core][matryoshka]") {
  const Index d = 4, m = 10, k = 2, B = 6;
  sae::MatryoshkaBatchTopKSae<double> model(sae_test::config(d, m, k));
  model.set_params(sae_test::random_params<double>(d, m, 41));
  const Mat<double> X = sae_test::random_matrix<double>(d, B, 42);
  model.loss().get<sae::MatryoshkaInner>().widths = {m};
  sae::BatchTopKSae<double> plain(sae_test::config(d, m, k));
  plain.set_params(model.params());
  sae::Parameters<double> g1, g2;
  sae::MatryoshkaBatchTopKSae<double>::State s1;
  sae::BatchTopKSae<double>::State s2;
  const auto r1 = model.forward_backward(X, g1, s1);
  const auto r2 = plain.forward_backward(X, g2, s2);
  REQUIRE(r1.terms[1] == 0.0);
  REQUIRE(r1.total == Approx(r2.total).epsilon(1e-14));
  REQUIRE((g1.W_dec - g2.W_dec).cwiseAbs().maxCoeff() < 1e-14);
  REQUIRE((g1.W_enc - g2.W_enc).cwiseAbs().maxCoeff() < 1e-14);

  auto& w = model.loss().get<sae::MatryoshkaInner>().widths;
  for (auto [widths, what] : {std::pair<std::vector<Index>, const char*>{{}, "empty"},
                              {{3, 3, 10}, "strictly increasing"},
                              {{5, 2, 10}, "strictly increasing"},
                              {{0, 10}, "positive"},
                              {{3, 8}, "end at d_sae=10"}}) {
    w = widths;
    REQUIRE_THROWS_WITH(model.loss_value(X), Catch::Contains(what));
  }
}

TEST_CASE("Matryoshka: saved as jumprelu with the threshold; the widths in the training metadata",
          "[core][matryoshka][io]") {
  sae_test::TempDir tmp("matryoshka_save");
  const Index d = 6, m = 16, k = 3;
  // Through the training entry point, as `sae train --arch matryoshka` does.
  const auto data = sae_test::random_matrix<float>(d, 300, 51);
  sae::TrainSettings s;
  s.arch = "matryoshka";
  s.d_sae = m;
  s.k = k;
  s.out = tmp / "sae";
  s.opt.steps = 20;
  s.opt.batch = 64;
  s.opt.log_every = 0;
  s.options["matryoshka_widths"] = {4, 8, 16};
  const sae::TrainData td = sae::TrainData::borrow(data.data(), d, data.cols(), "random");
  const sae::TrainRun run = sae::run_training(s, {}, &td);
  REQUIRE(run.result.at("architecture") == "matryoshka_batchtopk");
  const sae::AnySae loaded = sae::load_sae(tmp / "sae");
  REQUIRE(std::holds_alternative<sae::JumpReluSae<float>>(loaded));
  const auto& md = loaded.config().metadata;
  REQUIRE(md.at("training_architecture") == "matryoshka_batchtopk");
  REQUIRE(md.at("k") == k);
  REQUIRE(md.at("training").at("matryoshka_widths") == nlohmann::json({4, 8, 16}));
  const float th = loaded.params().threshold[0];
  REQUIRE(th > 0);
  REQUIRE((loaded.params().threshold.array() == th).all());

  // Bad widths are a settings error before the first step.
  s.options["matryoshka_widths"] = {4, 8};
  REQUIRE_THROWS_AS(sae::run_training(s, {}, &td), sae::SettingsError);
  s.options["matryoshka_widths"] = {4, -8, 16};
  REQUIRE_THROWS_WITH(sae::run_training(s, {}, &td), Catch::Contains("--matryoshka-widths"));
}

TEST_CASE("Matryoshka: recovers the true features of superposition data", "[train][recovery][matryoshka]") {
  // The TopK recovery check's data (d = 64, 256 features, ~4 per sample), m = 512, k = 4. The
  // features have no hierarchy, so a prefix narrower than 256 must reconstruct with composites
  // (measured with `sae train` at 1000 steps: widths 64,256,512 FVU 0.31 / MMCS 0.80; 128,512
  // 0.32 / 0.78; 256,512 0.26 / 0.86; plain BatchTopK 0.24 / 0.89): with one inner level at the
  // number of true features it finds them.
  sae::SyntheticOptions o;
  o.samples = 60000;
  o.seed = 13;
  const auto data = sae::make_superposition(o);
  sae::MatryoshkaBatchTopKSae<float> model(sae_test::config(64, 512, 4));
  model.loss().get<sae::MatryoshkaInner>().widths = {256, 512};
  sae::ShuffledBatches<float> batches(data.X, 1024, 3);
  sae::TrainOptions t;
  t.steps = 1000;
  t.lr = 1.1e-3;
  t.seed = 5;
  sae::train(model, batches, t);
  const double mmcs = sae::mmcs(model.params().W_dec, data.features);
  const auto ev = sae::evaluate(model, data.X);
  INFO("mmcs " << mmcs << ", fvu " << ev.fvu << ", l0 " << ev.l0);
  REQUIRE(mmcs >= 0.8);
  REQUIRE(ev.fvu <= 0.3);
  REQUIRE(ev.l0 == Approx(4.0).epsilon(0.25));
}
