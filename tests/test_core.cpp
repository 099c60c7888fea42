// Core kernels: encoding, TopK selection, sparse vs dense decode, Adam, schedule, decoder
// constraint. Checked against naive reference computations written out in the tests.
#include "helpers.hpp"

#include <algorithm>
#include <numeric>
#include <type_traits>
#include <vector>

using sae::Index;
using sae::Mat;
using sae::Vec;

namespace {

/// Naive z_t = W_enc^T (x_t - b_dec) + b_enc, token by token, in double.
template <class Scalar>
Mat<double> naive_preactivations(const sae::Parameters<Scalar>& p, const Mat<Scalar>& X, bool apply_b_dec) {
  const auto P = p.template cast<double>();
  Mat<double> Z(P.d_sae(), X.cols());
  for (Index t = 0; t < X.cols(); ++t) {
    Eigen::VectorXd x = X.col(t).template cast<double>();
    if (apply_b_dec) x -= P.b_dec;
    for (Index j = 0; j < P.d_sae(); ++j) Z(j, t) = P.W_enc.col(j).dot(x) + P.b_enc[j];
  }
  return Z;
}

}  // namespace

TEMPLATE_TEST_CASE("TopK: keeps the k largest positive pre-activations of each token", "[core][topk]", float, double) {
  using Scalar = TestType;
  const Index d = 8, m = 40, B = 37, k = GENERATE(1, 4, 40);
  auto cfg = sae_test::config(d, m, k);
  sae::TopKSae<Scalar> model(cfg);
  model.set_params(sae_test::random_params<Scalar>(d, m, 5));
  const Mat<Scalar> X = sae_test::random_matrix<Scalar>(d, B, 6);
  const sae::SparseCodes<Scalar> codes = model.encode(X);
  const Mat<double> Z = naive_preactivations(model.params(), X, true);
  INFO("k " << k);
  REQUIRE(codes.tokens() == B);
  REQUIRE(codes.d_sae == m);
  for (Index t = 0; t < B; ++t) {
    std::vector<Index> order(m);
    std::iota(order.begin(), order.end(), Index{0});
    std::stable_sort(order.begin(), order.end(), [&](Index a, Index b) { return Z(a, t) > Z(b, t); });
    std::vector<Index> expected;
    for (Index i = 0; i < k && Z(order[i], t) > 0; ++i) expected.push_back(order[i]);
    std::sort(expected.begin(), expected.end());
    std::vector<Index> got(codes.indices.begin() + codes.offsets[t], codes.indices.begin() + codes.offsets[t + 1]);
    INFO("token " << t);
    REQUIRE(got == expected);  // also checks increasing latent order
    for (Index i = codes.offsets[t]; i < codes.offsets[t + 1]; ++i) {
      REQUIRE(codes.values[i] > 0);
      REQUIRE(codes.values[i] == Approx(Z(codes.indices[i], t)).epsilon(sae_test::Tol<Scalar>::rel * 10));
    }
  }
}

TEST_CASE("TopK: selection across token blocks equals selection token by token", "[core][topk]") {
  // More tokens than one encoder block, so block boundaries are crossed.
  const Index d = 6, m = 30, k = 3, B = 3 * sae::TopKSae<float>::block_tokens + 17;
  auto cfg = sae_test::config(d, m, k);
  sae::TopKSae<double> model(cfg);
  model.set_params(sae_test::random_params<double>(d, m, 7));
  const Mat<double> X = sae_test::random_matrix<double>(d, B, 8);
  const auto all = model.encode(X);
  for (Index t = 0; t < B; t += 97) {
    const auto one = model.encode(X.col(t));
    const std::vector<std::int32_t> a(all.indices.begin() + all.offsets[t], all.indices.begin() + all.offsets[t + 1]);
    REQUIRE(a == one.indices);
    for (std::size_t i = 0; i < a.size(); ++i)
      REQUIRE(all.values[all.offsets[t] + i] == Approx(one.values[i]).epsilon(1e-12));
  }
}

TEST_CASE("TopK: ties keep the lower latent index; tokens with fewer than k positives keep only those",
          "[core][topk]") {
  sae::TopK act;
  act.k = 2;
  Mat<double> Z(5, 3);
  Z.col(0) << 1.0, 3.0, 3.0, 3.0, 0.5;      // tie among 1, 2, 3 -> keep 1, 2
  Z.col(1) << -1.0, 0.0, 2.0, -3.0, 0.0;    // one positive value
  Z.col(2) << -1.0, -2.0, -3.0, 0.0, -0.5;  // none
  // select_top's candidates from the fused encoder's heap over these pre-activations (bias 0)
  const sae::Vec<double> zero = sae::Vec<double>::Zero(5);
  auto top_c = [&](Index cap, double* values, std::int32_t* indices, Index* count) {
    for (Index t = 0; t < Z.cols(); ++t) {
      sae::kernels::TopCHeap<double> h{values + t * cap, indices + t * cap, cap};
      h.offer_run(Z.col(t).data(), zero.data(), Z.rows(), 0);
      h.sort_by_latent();
      count[t] = h.size;
    }
  };
  sae::SparseCodes<double> codes;
  act.select_top(Z.cols(), Z.rows(), top_c, codes);
  REQUIRE(codes.offsets == std::vector<Index>{0, 2, 3, 3});
  REQUIRE(codes.indices == std::vector<std::int32_t>{1, 2, 2});
  REQUIRE(codes.values == std::vector<double>{3.0, 3.0, 2.0});
}

TEMPLATE_TEST_CASE("ReLU: codes are max(z, 0) of W_enc^T (x - b_dec) + b_enc", "[core][relu]", float, double) {
  using Scalar = TestType;
  const bool apply_b_dec = GENERATE(true, false);
  const Index d = 7, m = 19, B = 11;
  auto cfg = sae_test::config(d, m);
  cfg.apply_b_dec_to_input = apply_b_dec;
  sae::ReluSae<Scalar> model(cfg);
  model.set_params(sae_test::random_params<Scalar>(d, m, 9));
  const Mat<Scalar> X = sae_test::random_matrix<Scalar>(d, B, 10);
  const Mat<Scalar> F = model.encode(X);
  const Mat<double> Z = naive_preactivations(model.params(), X, apply_b_dec);
  for (Index t = 0; t < B; ++t)
    for (Index j = 0; j < m; ++j)
      REQUIRE(
          static_cast<double>(F(j, t)) ==
          Approx(std::max(Z(j, t), 0.0)).epsilon(sae_test::Tol<Scalar>::rel).margin(sae_test::Tol<Scalar>::abs * 10));
}

TEMPLATE_TEST_CASE("SparseCodes: sparse decode equals dense decode of the same codes", "[core][decode]", float,
                   double) {
  using Scalar = TestType;
  const Index d = 9, m = 50, B = 23, k = 5;
  auto cfg = sae_test::config(d, m, k);
  sae::TopKSae<Scalar> model(cfg);
  model.set_params(sae_test::random_params<Scalar>(d, m, 13));
  const Mat<Scalar> X = sae_test::random_matrix<Scalar>(d, B, 14);
  const auto codes = model.encode(X);
  const Mat<Scalar> F = codes.to_dense();
  REQUIRE((F.array() != 0).count() == codes.nnz());
  Mat<Scalar> sparse_hat, dense_hat;
  model.decode(codes, sparse_hat);
  sae::kernels::decode(model.params(), F, dense_hat);
  // Naive reference in double.
  const auto P = model.params().template cast<double>();
  const Mat<double> ref = (P.W_dec * F.template cast<double>()).colwise() + P.b_dec;
  REQUIRE(sparse_hat.rows() == d);
  REQUIRE(sparse_hat.cols() == B);
  REQUIRE((sparse_hat.template cast<double>() - ref).cwiseAbs().maxCoeff() < 1e3 * sae_test::Tol<Scalar>::abs);
  REQUIRE((sparse_hat - dense_hat).cwiseAbs().maxCoeff() < 1e3 * sae_test::Tol<Scalar>::abs);
}

TEST_CASE("Sparse backward: TopK gradients equal the dense masked formulas", "[core][decode]") {
  // Dense reference: F = topk-masked codes, G = 2/B (X_hat - X),
  //   dW_dec = G F^T,  dF = W_dec^T G (masked),  dW_enc = (X - b_dec) dF^T,  db_enc = rowsum(dF),
  //   db_dec = rowsum(G) - W_enc db_enc.
  const Index d = 7, m = 33, B = 29, k = 4;
  auto cfg = sae_test::config(d, m, k);
  sae::TopKSae<double> model(cfg);
  model.set_params(sae_test::random_params<double>(d, m, 17));
  const Mat<double> X = sae_test::random_matrix<double>(d, B, 18);
  sae::Parameters<double> g;
  sae::TopKSae<double>::State s;
  model.forward_backward(X, g, s);
  const auto& P = model.params();
  const Mat<double> F = s.codes.to_dense();
  const Mat<double> Xh = (P.W_dec * F).colwise() + P.b_dec;
  const Mat<double> G = (Xh - X) * (2.0 / B);
  const Mat<double> mask = (F.array() != 0).cast<double>();
  const Mat<double> dF = (P.W_dec.transpose() * G).cwiseProduct(mask);
  const Vec<double> db_enc = dF.rowwise().sum();
  REQUIRE((g.W_dec - G * F.transpose()).cwiseAbs().maxCoeff() < 1e-12);
  REQUIRE((g.W_enc - (X.colwise() - P.b_dec) * dF.transpose()).cwiseAbs().maxCoeff() < 1e-12);
  REQUIRE((g.b_enc - db_enc).cwiseAbs().maxCoeff() < 1e-12);
  REQUIRE((g.b_dec - (G.rowwise().sum() - P.W_enc * db_enc)).cwiseAbs().maxCoeff() < 1e-12);
}

TEST_CASE("Encoder bias folding: W_enc^T x + (b_enc - W_enc^T b_dec) equals W_enc^T (x - b_dec) + b_enc", "[core]") {
  const Index d = 12, m = 21, B = 5;
  const auto p = sae_test::random_params<double>(d, m, 3);
  const Mat<double> X = sae_test::random_matrix<double>(d, B, 4);
  Vec<double> c;
  Mat<double> Z;
  sae::kernels::encoder_bias(p, true, c);
  sae::kernels::preactivations(p, c, X, Z);
  const Mat<double> ref = (p.W_enc.transpose() * (X.colwise() - p.b_dec)).colwise() + p.b_enc;
  REQUIRE((Z - ref).cwiseAbs().maxCoeff() < 1e-12);
}

TEMPLATE_TEST_CASE("Adam: two steps match the update written coefficient by coefficient", "[core][optim]", float,
                   double) {
  using Scalar = TestType;
  const Index d = 3, m = 4;
  sae::AdamOptions o;
  o.beta1 = 0.8;
  o.beta2 = 0.95;
  o.eps = 1e-6;
  sae::Adam<Scalar> adam(o, sae::Parameters<Scalar>(d, m));
  auto p = sae_test::random_params<Scalar>(d, m, 40);
  const auto p0 = p.template cast<double>();
  const auto g1 = sae_test::random_params<Scalar>(d, m, 41);
  const auto g2 = sae_test::random_params<Scalar>(d, m, 42);
  adam.step(p, g1, 0.01);
  adam.step(p, g2, 0.02);
  REQUIRE(adam.steps_taken() == 2);
  // Reference for one coefficient sequence: textbook Adam with bias-corrected moments.
  auto ref = [&](double theta, double a, double b) {
    double mm = 0, vv = 0;
    const double gs[2] = {a, b}, lrs[2] = {0.01, 0.02};
    for (int t = 1; t <= 2; ++t) {
      mm = o.beta1 * mm + (1 - o.beta1) * gs[t - 1];
      vv = o.beta2 * vv + (1 - o.beta2) * gs[t - 1] * gs[t - 1];
      const double mhat = mm / (1 - std::pow(o.beta1, t));
      const double vhat = vv / (1 - std::pow(o.beta2, t));
      theta -= lrs[t - 1] * mhat / (std::sqrt(vhat) + o.eps);
    }
    return theta;
  };
  for (Index i = 0; i < d * m; ++i) {
    INFO("W_enc[" << i << "]");
    REQUIRE(
        static_cast<double>(p.W_enc.data()[i]) ==
        Approx(ref(p0.W_enc.data()[i], g1.W_enc.data()[i], g2.W_enc.data()[i])).epsilon(sae_test::Tol<Scalar>::rel));
  }
  for (Index i = 0; i < d; ++i)
    REQUIRE(static_cast<double>(p.b_dec[i]) ==
            Approx(ref(p0.b_dec[i], g1.b_dec[i], g2.b_dec[i])).epsilon(sae_test::Tol<Scalar>::rel));
}

TEST_CASE("LrSchedule: linear warm-up, constant, linear decay", "[core][optim]") {
  sae::LrSchedule s;
  s.lr = 1.0;
  s.warmup_steps = 4;
  s.decay_steps = 5;
  s.total_steps = 20;
  CHECK(s(0) == Approx(0.25));
  CHECK(s(3) == Approx(1.0));
  CHECK(s(10) == Approx(1.0));
  CHECK(s(15) == Approx(1.0));  // S - D = 15: decay factor (20 - 15) / 5 = 1
  CHECK(s(16) == Approx(0.8));
  CHECK(s(19) == Approx(0.2));
  sae::LrSchedule flat;
  flat.lr = 0.5;
  flat.total_steps = 10;
  for (int i = 0; i < 10; ++i) CHECK(flat(i) == 0.5);
}

TEST_CASE("Decoder constraint: projected gradient is orthogonal to each column; renormalised columns have unit norm",
          "[core]") {
  const Index d = 6, m = 9;
  auto cfg = sae_test::config(d, m, 2);
  sae::TopKSae<double> model(cfg);
  model.set_params(sae_test::random_params<double>(d, m, 50));
  auto g = sae_test::random_params<double>(d, m, 51);
  const auto g0 = g;
  model.project_decoder_gradient(g);
  for (Index j = 0; j < m; ++j) {
    const auto w = model.params().W_dec.col(j);
    REQUIRE(std::abs(g.W_dec.col(j).dot(w)) < 1e-12);
    // the removed part is parallel to w
    const Eigen::VectorXd removed = g0.W_dec.col(j) - g.W_dec.col(j);
    REQUIRE((removed - (removed.dot(w) / w.squaredNorm()) * w).norm() < 1e-12);
  }
  REQUIRE(g.W_enc == g0.W_enc);
  model.normalize_decoder();
  for (Index j = 0; j < m; ++j) REQUIRE(model.params().W_dec.col(j).norm() == Approx(1.0).epsilon(1e-14));
}

TEST_CASE("Initialisation: unit (TopK) or 0.1-norm (ReLU) decoder columns, W_enc = W_dec, b_dec = sample mean",
          "[core]") {
  const Index d = 10, m = 30;
  const Mat<float> sample = sae_test::random_matrix<float>(d, 100, 60);
  auto cfg = sae_test::config(d, m, 3);
  sae::TopKSae<float> topk(cfg);
  topk.initialize(sample, 1);
  sae::ReluSae<float> relu(cfg);
  relu.initialize(sample, 1);
  for (Index j = 0; j < m; ++j) {
    REQUIRE(topk.params().W_dec.col(j).norm() == Approx(1.0).epsilon(1e-5));
    REQUIRE(relu.params().W_dec.col(j).norm() == Approx(0.1).epsilon(1e-5));
  }
  REQUIRE(topk.params().W_enc == topk.params().W_dec);
  REQUIRE(topk.params().b_enc.isZero());
  REQUIRE((topk.params().b_dec - sample.rowwise().mean()).cwiseAbs().maxCoeff() < 1e-6);
  // Same seed, same weights; another seed, other weights.
  sae::TopKSae<float> again(cfg), other(cfg);
  again.initialize(sample, 1);
  other.initialize(sample, 2);
  REQUIRE(again.params().W_dec == topk.params().W_dec);
  REQUIRE(other.params().W_dec != topk.params().W_dec);
}

TEST_CASE("SparseAutoencoder: rejects bad configs and batches of the wrong width", "[core]") {
  auto cfg = sae_test::config(4, 8);
  cfg.k = 9;  // > d_sae
  REQUIRE_THROWS_AS(sae::TopKSae<float>(cfg), std::invalid_argument);
  cfg.k = 0;
  REQUIRE_THROWS_AS(sae::TopKSae<float>(cfg), std::invalid_argument);
  cfg.k = 2;
  cfg.d_sae = 0;
  REQUIRE_THROWS_AS(sae::ReluSae<float>(cfg), std::invalid_argument);
  cfg.d_sae = 8;
  sae::TopKSae<float> model(cfg);
  const Mat<float> X = Mat<float>::Ones(5, 3);
  REQUIRE_THROWS_WITH(model.encode(X), Catch::Contains("d_in=4"));
}

TEST_CASE("SaeConfig: cfg.json round trip and errors", "[core][config]") {
  sae::SaeConfig c;
  c.d_in = 64;
  c.d_sae = 512;
  c.k = 4;
  c.architecture = std::string(sae::TopKVariant::name);
  c.apply_b_dec_to_input = false;
  c.metadata = {{"hook_name", "blocks.3.hook_resid_post"}};
  const nlohmann::json j = c.to_json();
  CHECK(j.at("architecture") == "topk");
  CHECK(j.at("d_in") == 64);
  CHECK(j.at("k") == 4);
  CHECK(j.at("normalize_activations") == "none");
  const sae::SaeConfig r = sae::SaeConfig::from_json(j);
  CHECK(r.d_in == 64);
  CHECK(r.d_sae == 512);
  CHECK(r.k == 4);
  CHECK(r.architecture == std::string(sae::TopKVariant::name));
  CHECK_FALSE(r.apply_b_dec_to_input);
  CHECK(r.metadata.at("hook_name") == "blocks.3.hook_resid_post");
  nlohmann::json bad = j;
  bad.erase("d_sae");
  REQUIRE_THROWS_WITH(sae::SaeConfig::from_json(bad, "x/cfg.json"),
                      Catch::Contains("x/cfg.json") && Catch::Contains("d_sae"));
  bad = j;
  bad["architecture"] = "gated";
  REQUIRE_THROWS_WITH(sae::SaeConfig::from_json(bad), Catch::Contains("gated"));
  bad = j;
  bad["d_in"] = "64";
  REQUIRE_THROWS_WITH(sae::SaeConfig::from_json(bad), Catch::Contains("d_in"));
}

TEST_CASE("SerialBelow: one thread (Eigen's products too) below min_parallel_flops, the count restored after",
          "[core][threads]") {
  const int before = sae::num_threads();
  sae::set_num_threads(2);
  {
    const sae::detail::SerialBelow serial(sae::detail::min_parallel_flops / 2);
    CHECK(sae::num_threads() == 1);
    CHECK(Eigen::nbThreads() == 1);  // Eigen follows OpenMP's count (set_num_threads)
  }
  CHECK(sae::num_threads() == 2);
  CHECK(Eigen::nbThreads() == 2);
  {
    const sae::detail::SerialBelow serial(sae::detail::min_parallel_flops);
    CHECK(sae::num_threads() == 2);
  }
  CHECK(sae::detail::parallel_worth(sae::detail::product_flops(512, 512, 512)));
  CHECK_FALSE(sae::detail::parallel_worth(sae::detail::product_flops(96, 512, 20)));
  sae::set_num_threads(before);
}

namespace {
/// Weights after @p steps training steps (forward_backward, Adam) of a model of @p cfg on X.
template <class Model>
sae::Parameters<float> core_weights_after(const sae::SaeConfig& cfg, const Mat<float>& X, int steps) {
  Model model(cfg);
  model.initialize(X, 3);
  if constexpr (Model::activation_type::unit_norm_decoder) model.normalize_decoder();
  sae::Adam<float> adam(sae::AdamOptions{}, model.params());
  typename Model::State s;
  sae::Parameters<float> g;
  for (int t = 0; t < steps; ++t) {
    model.forward_backward(X, g, s, t);
    if constexpr (Model::activation_type::unit_norm_decoder) model.project_decoder_gradient(g);
    adam.step(model.params(), g, 1e-3);
    model.after_update(s);
  }
  return model.params();
}
}  // namespace

TEST_CASE("A small model (below min_parallel_flops) trains to the same bits on 1 and 2 threads", "[core][threads]") {
  // d 20, m 96, B 512 (issue 24's model): with Eigen's threads its products rounded
  // differently on 2 threads; now every step runs on the calling thread
  const Mat<float> X = sae_test::random_matrix<float>(20, 512, 8);
  const int before = sae::num_threads();
  auto both = [&](auto model_tag, const sae::SaeConfig& cfg) {
    using Model = typename decltype(model_tag)::type;
    sae::set_num_threads(1);
    const auto one = core_weights_after<Model>(cfg, X, 5);
    sae::set_num_threads(2);
    const auto two = core_weights_after<Model>(cfg, X, 5);
    CHECK(one.W_enc == two.W_enc);
    CHECK(one.W_dec == two.W_dec);
    CHECK(one.b_enc == two.b_enc);
    CHECK(one.b_dec == two.b_dec);
    CHECK(one.threshold == two.threshold);
  };
  both(std::type_identity<sae::ReluSae<float>>{}, sae_test::config(20, 96));
  both(std::type_identity<sae::JumpReluSae<float>>{}, sae_test::config(20, 96));
  both(std::type_identity<sae::TopKSae<float>>{}, sae_test::config(20, 96, 4));
  sae::set_num_threads(before);
}
