// Transcoders and skip transcoders (SaeConfig::d_out > 0, cfg.skip): the output y_hat =
// W_dec f + b_dec [+ W_skip x] of inputs x is trained against targets y of another width.
// Finite differences of every gradient (double), the SAELens transcoder files written and read
// back, the paired training source, and recovery of known output directions on synthetic pairs.
#include "helpers.hpp"

using sae::Index;
using sae::Mat;
namespace fs = std::filesystem;

namespace {

sae::SaeConfig transcoder_config(Index d_in, Index d_out, Index m, Index k, bool skip) {
  sae::SaeConfig c = sae_test::config(d_in, m, k);
  c.d_out = d_out;
  c.skip = skip;
  c.apply_b_dec_to_input = false;
  return c;
}

/// Random transcoder parameters, every tensor nonzero (W_skip too, when present).
template <class Scalar>
sae::Parameters<Scalar> random_transcoder(Index d_in, Index d_out, Index m, bool skip, bool threshold,
                                          std::uint64_t seed) {
  sae::Parameters<Scalar> p(d_in, m, threshold, d_out, skip);
  p.W_enc = sae_test::random_matrix<Scalar>(d_in, m, seed, 0.5);
  p.W_dec = sae_test::random_matrix<Scalar>(d_out, m, seed + 1, 0.5);
  p.b_enc = sae_test::random_matrix<Scalar>(m, 1, seed + 2, 0.1);
  p.b_dec = sae_test::random_matrix<Scalar>(d_out, 1, seed + 3, 0.3);
  if (skip) p.W_skip = sae_test::random_matrix<Scalar>(d_out, d_in, seed + 4, 0.2);
  if (threshold) p.threshold.setConstant(Scalar(0.05));
  return p;
}

/// Central differences of the total loss of (X, Y) against forward_backward's gradient, for
/// every coordinate of every tensor except the threshold (a JumpReLU threshold's gradient is a
/// straight-through estimate, checked in test_variants.cpp). Returns the number checked.
template <class Model>
Index check_transcoder_gradients(Model& model, const Mat<double>& X, const Mat<double>& Y) {
  sae::Parameters<double> g;
  typename Model::State s;
  model.forward_backward(X, Y, g, s, 50);
  const double h = 1e-6;
  Index checked = 0;
  sae::zip_tensors(
      [&](const char* name, auto& p, const auto& grad) {
        if (std::string(name) == "threshold") return;
        for (Index i = 0; i < p.size(); ++i) {
          const double saved = p.data()[i];
          p.data()[i] = saved + h;
          const double lp = model.loss_value(X, Y, 50).total;
          p.data()[i] = saved - h;
          const double lm = model.loss_value(X, Y, 50).total;
          p.data()[i] = saved;
          INFO(name << "[" << i << "]");
          REQUIRE(grad.data()[i] == Approx((lp - lm) / (2 * h)).epsilon(1e-6).margin(1e-7));
          ++checked;
        }
      },
      model.params(), g);
  return checked;
}

}  // namespace

TEST_CASE("Transcoder: gradients of every tensor (W_skip too) match finite differences",
          "[core][transcoder][gradients]") {
  const bool skip = GENERATE(false, true);
  const Index d_in = 5, d_out = 3, m = 9, B = 7;
  const Mat<double> X = sae_test::random_matrix<double>(d_in, B, 31);
  const Mat<double> Y = sae_test::random_matrix<double>(d_out, B, 32);
  const Index expected = d_in * m + d_out * m + m + d_out + (skip ? d_out * d_in : 0);
  INFO("skip " << skip);
  SECTION("ReLU + L1") {
    sae::ReluSae<double> model(transcoder_config(d_in, d_out, m, 0, skip));
    model.set_params(random_transcoder<double>(d_in, d_out, m, skip, false, 33));
    model.loss().get<sae::L1Sparsity>().coefficient = 0.05;
    const Index active = sae::kernels::count_active(model.encode(X));
    REQUIRE(active > 0);
    REQUIRE(active < m * B);
    REQUIRE(check_transcoder_gradients(model, X, Y) == expected);
  }
  SECTION("TopK") {
    sae::TopKSae<double> model(transcoder_config(d_in, d_out, m, 2, skip));
    model.set_params(random_transcoder<double>(d_in, d_out, m, skip, false, 34));
    REQUIRE(check_transcoder_gradients(model, X, Y) == expected);
  }
  SECTION("BatchTopK") {
    // (AuxK holds its residual y - y_hat fixed, so its gradient is not the total derivative:
    // it is checked against the PyTorch reference, test_torch_reference.py, with a detached e.)
    sae::BatchTopKSae<double> model(transcoder_config(d_in, d_out, m, 2, skip));
    model.set_params(random_transcoder<double>(d_in, d_out, m, skip, false, 35));
    REQUIRE(check_transcoder_gradients(model, X, Y) == expected);
  }
  SECTION("Matryoshka BatchTopK (prefix losses against the targets)") {
    if (!skip) {  // (--skip is refused for Matryoshka)
      sae::MatryoshkaBatchTopKSae<double> model(transcoder_config(d_in, d_out, m, 2, false));
      model.loss().get<sae::MatryoshkaInner>().widths = {3, 6, m};
      model.set_params(random_transcoder<double>(d_in, d_out, m, false, false, 37));
      REQUIRE(check_transcoder_gradients(model, X, Y) == expected);
    }
  }
  SECTION("JumpReLU") {
    sae::JumpReluSae<double> model(transcoder_config(d_in, d_out, m, 0, skip));
    model.set_params(random_transcoder<double>(d_in, d_out, m, skip, true, 36));
    REQUIRE(check_transcoder_gradients(model, X, Y) == expected);
  }
}

TEST_CASE("Transcoder: the output is W_dec f + b_dec + W_skip x, computed independently", "[core][transcoder]") {
  const Index d_in = 6, d_out = 4, m = 10, B = 5;
  sae::ReluSae<double> model(transcoder_config(d_in, d_out, m, 0, true));
  model.set_params(random_transcoder<double>(d_in, d_out, m, true, false, 41));
  const Mat<double> X = sae_test::random_matrix<double>(d_in, B, 42);
  const auto& p = model.params();
  // No b_dec subtraction: z = W_enc^T x + b_enc.
  const Mat<double> Z = (p.W_enc.transpose() * X).colwise() + p.b_enc;
  const Mat<double> F = Z.cwiseMax(0.0);
  const Mat<double> expected = ((p.W_dec * F).colwise() + p.b_dec) + p.W_skip * X;
  Mat<double> out;
  model.output(X, model.encode(X), out);
  REQUIRE(out.rows() == d_out);
  REQUIRE((out - expected).cwiseAbs().maxCoeff() < 1e-12);
  // The loss compares with the targets: at Y = the output it is the L1 term alone.
  model.loss().get<sae::L1Sparsity>().coefficient = 0;
  REQUIRE(model.loss_value(X, expected).total < 1e-20);
  // SAE entry points refuse a transcoder instead of reconstructing its input.
  sae::Parameters<double> g;
  sae::ReluSae<double>::State s;
  REQUIRE_THROWS_WITH(model.forward_backward(X, g, s), Catch::Contains("needs its targets"));
}

TEST_CASE("Transcoder: configuration checks", "[core][transcoder]") {
  sae::SaeConfig c = transcoder_config(4, 3, 8, 0, false);
  c.apply_b_dec_to_input = true;
  REQUIRE_THROWS_WITH(c.validate(), Catch::Contains("apply_b_dec_to_input must be false"));
  sae::SaeConfig s = sae_test::config(4, 8);
  s.skip = true;
  REQUIRE_THROWS_WITH(s.validate(), Catch::Contains("needs a transcoder"));
  // SAELens has no TopK transcoder: the config cannot become a cfg.json.
  sae::SaeConfig t = transcoder_config(4, 3, 8, 2, false);
  t.architecture = "topk";
  REQUIRE_THROWS_WITH(t.to_json(), Catch::Contains("no transcoder form"));
}

TEST_CASE("Transcoder: saved as SAELens's transcoder forms and read back exactly", "[io][transcoder]") {
  const bool skip = GENERATE(false, true);
  const bool jump = GENERATE(false, true);
  sae_test::TempDir tmp("transcoder");
  const Index d_in = 6, d_out = 4, m = 10;
  sae::SaeConfig cfg = transcoder_config(d_in, d_out, m, 0, skip);
  sae::Parameters<float> p = random_transcoder<float>(d_in, d_out, m, skip, jump, 51);
  sae::AnySae model = jump ? sae::AnySae(sae::JumpReluSae<float>(cfg)) : sae::AnySae(sae::ReluSae<float>(cfg));
  model.set_params(p);
  sae::save_sae(tmp / "t", model);
  const nlohmann::json j = nlohmann::json::parse(sae_test::read_all(tmp / "t" / "cfg.json"));
  const std::string arch = std::string(jump ? "jumprelu_" : "") + (skip ? "skip_transcoder" : "transcoder");
  REQUIRE(j.at("architecture") == arch);
  REQUIRE(j.at("d_out") == d_out);
  REQUIRE(j.at("apply_b_dec_to_input") == false);
  const auto st = sae::io::SafetensorsReader::open(tmp / "t" / "sae_weights.safetensors");
  REQUIRE(st.info("W_dec").shape == std::vector<std::int64_t>{m, d_out});
  REQUIRE(st.info("b_dec").shape == std::vector<std::int64_t>{d_out});
  REQUIRE(st.contains("W_skip") == skip);
  if (skip) {
    REQUIRE(st.info("W_skip").shape == std::vector<std::int64_t>{d_out, d_in});
    std::vector<float> w(static_cast<std::size_t>(d_out * d_in));
    st.read_into("W_skip", w.data(), w.size());
    // SAELens's C-order [d_out, d_in]: element (r, c) at r * d_in + c.
    REQUIRE(w[static_cast<std::size_t>(2 * d_in + 5)] == p.W_skip(2, 5));
  }
  const sae::AnySae back = sae::load_sae(tmp / "t");
  REQUIRE(back.is_transcoder());
  REQUIRE(back.d_out() == d_out);
  REQUIRE(back.config().architecture == (jump ? "jumprelu" : "standard"));
  REQUIRE(back.params().W_skip == p.W_skip);
  REQUIRE(back.params().W_dec == p.W_dec);
  REQUIRE(back.params().W_enc == p.W_enc);
  REQUIRE(back.params().b_dec == p.b_dec);
}

TEST_CASE("Transcoder: a TopK transcoder is saved as a sparsify directory and read back exactly", "[io][transcoder]") {
  const bool skip = GENERATE(false, true);
  sae_test::TempDir tmp("transcoder_sparsify");
  const Index d = 5, m = 12;
  sae::TopKSae<float> model(transcoder_config(d, d, m, 3, skip));
  const sae::Parameters<float> p = random_transcoder<float>(d, d, m, skip, false, 71);
  model.set_params(p);
  sae::save_sae(tmp / "t", model);
  REQUIRE(fs::exists(tmp / "t" / "sae.safetensors"));
  REQUIRE_FALSE(fs::exists(tmp / "t" / "sae_weights.safetensors"));
  const nlohmann::json j = nlohmann::json::parse(sae_test::read_all(tmp / "t" / "cfg.json"));
  REQUIRE(j.at("transcode") == true);
  REQUIRE(j.at("skip_connection") == skip);
  REQUIRE(j.at("k") == 3);
  REQUIRE(j.at("num_latents") == m);
  sae::io::SaeFormat fmt{};
  const sae::AnySae back = sae::load_sae(tmp / "t", &fmt);
  REQUIRE(fmt == sae::io::SaeFormat::Sparsify);
  REQUIRE(back.is_transcoder());
  REQUIRE_FALSE(back.config().apply_b_dec_to_input);
  REQUIRE(back.params().W_enc == p.W_enc);
  REQUIRE(back.params().W_dec == p.W_dec);
  REQUIRE(back.params().b_dec == p.b_dec);
  REQUIRE(back.params().W_skip == p.W_skip);
  // The same directory then saved as an SAE: the sparsify weights file leaves with the old one.
  sae::TopKSae<float> plain(sae_test::config(d, m, 3));
  plain.set_params(sae_test::random_params<float>(d, m, 72));
  sae::save_sae(tmp / "t", plain);
  REQUIRE_FALSE(fs::exists(tmp / "t" / "sae.safetensors"));
  REQUIRE_FALSE(sae::load_sae(tmp / "t").is_transcoder());
  // A TopK transcoder whose output width differs has no file format: refused with the reason.
  sae::TopKSae<float> wide(transcoder_config(d, d + 1, m, 3, false));
  REQUIRE_THROWS_WITH(sae::save_sae(tmp / "w", wide), Catch::Contains("no transcoder form"));
  REQUIRE_FALSE(fs::exists(tmp / "w"));
}

TEST_CASE("Transcoder: a W_skip in a file whose cfg.json says no skip is refused", "[io][transcoder]") {
  sae_test::TempDir tmp("transcoder_bad");
  sae::ReluSae<float> model(transcoder_config(3, 2, 4, 0, true));
  model.set_params(random_transcoder<float>(3, 2, 4, true, false, 61));
  sae::save_sae(tmp / "t", model);
  nlohmann::json j = nlohmann::json::parse(sae_test::read_all(tmp / "t" / "cfg.json"));
  j["architecture"] = "transcoder";
  sae_test::write_all(tmp / "t" / "cfg.json", j.dump());
  REQUIRE_THROWS_WITH(sae::load_sae(tmp / "t"), Catch::Contains("holds W_skip"));
  j.erase("d_out");
  sae_test::write_all(tmp / "t" / "cfg.json", j.dump());
  REQUIRE_THROWS_WITH(sae::load_sae(tmp / "t"), Catch::Contains("d_out"));
}

TEST_CASE("Transcoder: the paired source gives each input token its own target", "[train][transcoder]") {
  // Inputs x_t = (t, -t), targets y_t = (3t, 1, t^2): after shuffling, every column must still pair.
  const Index N = 1000;
  Mat<float> X(2, N), Y(3, N);
  for (Index t = 0; t < N; ++t) {
    X.col(t) << float(t), float(-t);
    Y.col(t) << float(3 * t), 1.0f, float(t * t);
  }
  const sae::TrainData dx = sae::TrainData::borrow(X.data(), 2, N, "x");
  const sae::TrainData dy = sae::TrainData::borrow(Y.data(), 3, N, "y");
  sae::check_paired_data(dx, dy);
  sae::TrainSettings a;
  a.opt.batch = 96;
  a.opt.seed = 4;
  sae::TrainSource src(dx, a, 1.0, &dy);
  REQUIRE(src.has_target());
  REQUIRE(src.d_out() == 3);
  bool shuffled = false;
  for (int b = 0; b < 25; ++b) {  // 2400 tokens: more than two epochs
    const Mat<float>& x = src.next();
    const Mat<float>& y = src.target();
    for (Index c = 0; c < x.cols(); ++c) {
      REQUIRE(y(0, c) == 3 * x(0, c));
      REQUIRE(y(2, c) == x(0, c) * x(0, c));
      shuffled = shuffled || x(0, c) != float((b * 96 + c) % N);
    }
  }
  REQUIRE(shuffled);
  const Mat<float> Yshort = Y.leftCols(N - 1);
  const sae::TrainData bad = sae::TrainData::borrow(Yshort.data(), 3, N - 1, "y");
  REQUIRE_THROWS_WITH(sae::check_paired_data(dx, bad), Catch::Contains("every input token needs its target"));
}

namespace {

struct Trained {
  double mmcs, fvu, l0, skip_error;
};

/// Trains a BatchTopK transcoder (m 256, k 3, 800 steps of 1024) on @p data.
Trained train_transcoder(const sae::SyntheticPairs& data, bool skip) {
  const Index d_in = data.X.rows(), d_out = data.Y.rows(), N = data.X.cols();
  sae::BatchTopKSae<float> model(transcoder_config(d_in, d_out, 256, 3, skip));
  const sae::TrainData dx = sae::TrainData::borrow(data.X.data(), d_in, N, "x");
  const sae::TrainData dy = sae::TrainData::borrow(data.Y.data(), d_out, N, "y");
  sae::TrainSettings a;
  a.opt.batch = 1024;
  a.opt.seed = 3;
  sae::TrainSource src(dx, a, 1.0, &dy);
  sae::TrainOptions t;
  t.steps = 800;
  t.lr = 2e-3;
  t.seed = 5;
  sae::train(model, src, t);
  const auto ev = sae::evaluate(model, data.X, data.Y);
  const double skip_error =
      skip ? (model.params().W_skip - data.linear).norm() / std::max(1e-30, double(data.linear.norm())) : 0.0;
  return {sae::mmcs(model.params().W_dec, data.out_features), ev.fvu, ev.l0, skip_error};
}

}  // namespace

TEST_CASE("Transcoder: recovers the output directions of y = V c + noise", "[train][recovery][transcoder]") {
  // x = U c (d_in 32, 128 features, ~2 active), y = V c + noise (d_out 24): the decoder's columns
  // find V's columns, and the fvu is the one BatchTopK SAEs reach on such data (~0.25).
  sae::SyntheticOptions o;
  o.d_in = 32;
  o.features = 128;
  o.samples = 40000;
  o.seed = 17;
  const Trained r = train_transcoder(sae::make_transcoder_pairs(o, 24, 0.0, 0.01), false);
  INFO("mmcs " << r.mmcs << ", fvu " << r.fvu << ", l0 " << r.l0);
  CHECK(r.mmcs >= 0.85);
  CHECK(r.fvu <= 0.3);
  CHECK(r.l0 == Approx(3.0).epsilon(0.25));
}

TEST_CASE("Skip transcoder: W_skip learns the linear map M of y = V c + M x + noise", "[train][recovery][transcoder]") {
  // x = U c + g with dense g: M g reaches y only through W_skip, so W_skip = M is the exact fit,
  // and a transcoder without the skip term is left with the variance of M g unexplained.
  sae::SyntheticOptions o;
  o.d_in = 32;
  o.features = 128;
  o.samples = 40000;
  o.seed = 19;
  const auto data = sae::make_transcoder_pairs(o, 24, 0.6, 0.01, 0.15);
  const Trained with = train_transcoder(data, true), without = train_transcoder(data, false);
  INFO("skip: W_skip relative error " << with.skip_error << ", mmcs " << with.mmcs << ", fvu " << with.fvu
                                      << "; no skip: mmcs " << without.mmcs << ", fvu " << without.fvu);
  // Measured: W_skip error 0.28 (W_skip = 0 would be 1.0), fvu 0.33 with the skip against 0.52
  // without; the part of M acting on the features' span is shared with the decoder until late.
  CHECK(with.skip_error <= 0.35);
  CHECK(with.fvu < 0.8 * without.fvu);
  CHECK(with.mmcs >= 0.8);
}
