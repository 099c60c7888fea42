// The SAE family beyond ReLU/TopK: BatchTopK selection, JumpReLU straight-through gradients
// and L0 penalties, the OrtSAE orthogonality penalty, AuxK. Finite differences where the loss
// is differentiable, brute-force references elsewhere.
#include "helpers.hpp"

#include <algorithm>
#include <functional>
#include <numeric>

using sae::Index;
using sae::Mat;
using sae::Vec;

namespace {

/// Central differences of @p loss (a function of the model's current parameters) against
/// @p grad for every coordinate of the tensors @p which selects ("" = all but threshold).
template <class Model, class Loss>
void check_fd(Model& model, const sae::Parameters<double>& grad, Loss&& loss, const std::string& only = "",
              double tol = 1e-6) {
  const double h = 1e-6;
  int checked = 0;
  sae::zip_tensors(
      [&](const char* name, auto& p, const auto& g) {
        const std::string n = name;
        if (only.empty() ? n == "threshold" : n != only) return;
        for (Index i = 0; i < p.size(); ++i) {
          const double saved = p.data()[i];
          p.data()[i] = saved + h;
          const double lp = loss();
          p.data()[i] = saved - h;
          const double lm = loss();
          p.data()[i] = saved;
          INFO(name << "[" << i << "]");
          REQUIRE(g.data()[i] == Approx((lp - lm) / (2 * h)).epsilon(tol).margin(tol));
          ++checked;
        }
      },
      model.params(), grad);
  REQUIRE(checked > 0);
}

}  // namespace

using sae_test::config;

TEST_CASE("BatchTopK: training selection keeps exactly the k*B largest positive values of the batch",
          "[core][batchtopk]") {
  const Index d = 6, m = 50, k = 3;
  const Index B = GENERATE(5, 300);  // one block, and several blocks of 256 tokens
  sae::BatchTopKSae<double> model(config(d, m, k));
  auto p = sae_test::random_params<double>(d, m, 3);
  model.set_params(p);
  Mat<double> X = sae_test::random_matrix<double>(d, B, 4);
  // One token with huge activations on many latents: more than its 2k+8 candidates belong to
  // the batch's top k*B, so the saturated-token recomputation is exercised.
  X.col(1) *= 40.0;
  sae::Parameters<double> g;
  sae::BatchTopKSae<double>::State s;
  model.forward_backward(X, g, s);
  // Brute force: all positive pre-activations, sorted.
  const Mat<double> Z =
      (model.params().W_enc.transpose() * (X.colwise() - model.params().b_dec)).colwise() + model.params().b_enc;
  std::vector<double> pos;
  for (Index i = 0; i < Z.size(); ++i)
    if (Z.data()[i] > 0) pos.push_back(Z.data()[i]);
  std::sort(pos.begin(), pos.end(), std::greater<double>());
  const Index want = std::min<Index>(k * B, static_cast<Index>(pos.size()));
  INFO("B " << B);
  REQUIRE(s.codes.nnz() == want);
  const double cut = pos[want - 1];
  Index from_token1 = 0;
  for (Index t = 0; t < B; ++t)
    for (Index i = s.codes.offsets[t]; i < s.codes.offsets[t + 1]; ++i) {
      REQUIRE(s.codes.values[i] >= cut - 1e-9 * std::abs(cut));
      REQUIRE(s.codes.values[i] == Approx(Z(s.codes.indices[i], t)).epsilon(1e-12));
      if (i > s.codes.offsets[t]) REQUIRE(s.codes.indices[i] > s.codes.indices[i - 1]);
      from_token1 += (t == 1);
    }
  REQUIRE(from_token1 > 2 * k + 8);  // the saturated token kept more than its candidate list
}

TEST_CASE("BatchTopK: gradients match finite differences; threshold tracks the smallest kept value",
          "[core][batchtopk][gradients]") {
  const Index d = 5, m = 14, k = 2, B = 6;
  sae::BatchTopKSae<double> model(config(d, m, k));
  model.set_params(sae_test::random_params<double>(d, m, 5));
  const Mat<double> X = sae_test::random_matrix<double>(d, B, 6);
  sae::Parameters<double> g;
  sae::BatchTopKSae<double>::State s;
  model.forward_backward(X, g, s);
  check_fd(model, g, [&] { return model.loss_value(X).total; });
  // after_update: first step copies the smallest kept value, later steps move 1% towards it.
  const double mn = *std::min_element(s.codes.values.begin(), s.codes.values.end());
  model.after_update(s);
  REQUIRE(model.activation().threshold == Approx(mn));
  model.activation().threshold = 1.0;
  model.after_update(s);
  REQUIRE(model.activation().threshold == Approx(1.0 + 0.01 * (mn - 1.0)));
  // Inference uses the threshold: every z > theta, no batch needed.
  model.activation().threshold = 0.3;
  const auto codes = model.encode(X);
  const Mat<double> Z =
      (model.params().W_enc.transpose() * (X.colwise() - model.params().b_dec)).colwise() + model.params().b_enc;
  REQUIRE(codes.nnz() == (Z.array() > 0.3).count());
}

TEST_CASE("BatchTopK: saved as jumprelu with the learned threshold for every latent", "[core][batchtopk]") {
  sae_test::TempDir tmp("btk_save");
  sae::BatchTopKSae<float> model(config(4, 9, 2));
  model.set_params(sae_test::random_params<float>(4, 9, 7));
  model.activation().threshold = 0.375;
  sae::save_sae(tmp / "sae", model);
  const sae::AnySae loaded = sae::load_sae(tmp / "sae");
  REQUIRE(std::holds_alternative<sae::JumpReluSae<float>>(loaded));
  const auto& j = std::get<sae::JumpReluSae<float>>(loaded);
  REQUIRE(j.params().threshold.size() == 9);
  REQUIRE((j.params().threshold.array() == 0.375f).all());
  REQUIRE(j.config().metadata.at("training_architecture") == "batchtopk");
  REQUIRE(j.config().metadata.at("k") == 2);
  // Same codes at inference.
  const Mat<float> X = sae_test::random_matrix<float>(4, 20, 8);
  const auto a = model.encode(X).to_dense();
  const Mat<float> b = j.encode(X);
  REQUIRE((a - b).cwiseAbs().maxCoeff() < 1e-5f);
}

TEST_CASE("JumpReLU: forward is z * 1[z > theta]; non-threshold gradients match finite differences",
          "[core][jumprelu][gradients]") {
  const bool apply_b_dec = GENERATE(true, false);
  const Index d = 5, m = 11, B = 9;
  auto cfg = config(d, m);
  cfg.apply_b_dec_to_input = apply_b_dec;
  sae::JumpReluSae<double> model(cfg);
  auto p = sae_test::random_params<double>(d, m, 9);
  p.threshold = Vec<double>::LinSpaced(m, 0.0, 0.5);
  model.set_params(p);
  model.loss().get<sae::L0Sparsity>().coefficient = 0.1;
  const Mat<double> X = sae_test::random_matrix<double>(d, B, 10);
  const Mat<double> F = model.encode(X);
  const Mat<double> Z =
      (p.W_enc.transpose() * (apply_b_dec ? Mat<double>(X.colwise() - p.b_dec) : X)).colwise() + p.b_enc;
  for (Index t = 0; t < B; ++t)
    for (Index j = 0; j < m; ++j) REQUIRE(F(j, t) == Approx(Z(j, t) > p.threshold[j] ? Z(j, t) : 0.0).margin(1e-12));
  sae::Parameters<double> g;
  sae::JumpReluSae<double>::State s;
  model.forward_backward(X, g, s);
  // The L0 term is piecewise constant in W and b: finite differences see only reconstruction.
  check_fd(model, g, [&] { return model.loss_value(X).total; });
}

TEST_CASE("JumpReLU: a negative threshold (from a file) gives relu(z) * 1[z > theta], never a negative code",
          "[core][jumprelu]") {
  const Index d = 6, m = 40, B = 30;
  sae::JumpReluSae<float> model(config(d, m));
  auto p = sae_test::random_params<float>(d, m, 21);
  p.threshold = Vec<float>::LinSpaced(m, -2.0f, 0.5f);  // most thresholds negative
  model.set_params(p);
  const Mat<float> X = sae_test::random_matrix<float>(d, B, 22);
  const Mat<float> F = model.encode(X);
  const Mat<float> Z = (p.W_enc.transpose() * Mat<float>(X.colwise() - p.b_dec)).colwise() + p.b_enc;
  Index negative_z_above_threshold = 0;
  for (Index t = 0; t < B; ++t)
    for (Index j = 0; j < m; ++j) {
      const float z = Z(j, t);
      negative_z_above_threshold += (z < 0 && z > p.threshold[j]);
      REQUIRE(F(j, t) >= 0.0f);
      REQUIRE(F(j, t) == Approx((z > p.threshold[j] && z > 0) ? z : 0.0f).margin(1e-5));
    }
  REQUIRE(negative_z_above_threshold > 10);  // the case this test is about does occur
}

TEST_CASE("JumpReLU: threshold gradient is the straight-through estimate of activation and L0",
          "[core][jumprelu][gradients]") {
  const Index d = 4, m = 8, B = 40;
  sae::JumpReluSae<double> model(config(d, m));
  model.activation().bandwidth = 0.4;  // wide, so many z fall in the kernel window
  auto p = sae_test::random_params<double>(d, m, 11);
  p.threshold = Vec<double>::Constant(m, 0.2);
  model.set_params(p);
  const double lam = 0.3;
  model.loss().get<sae::L0Sparsity>().coefficient = lam;
  const Mat<double> X = sae_test::random_matrix<double>(d, B, 12);
  sae::Parameters<double> g;
  sae::JumpReluSae<double>::State s;
  const auto r = model.forward_backward(X, g, s);
  // Independent computation, element by element.
  const Mat<double> Z = (p.W_enc.transpose() * (X.colwise() - p.b_dec)).colwise() + p.b_enc;
  const Mat<double> F = (Z.array() > 0.2).select(Z, 0.0);
  const Mat<double> Xh = (p.W_dec * F).colwise() + p.b_dec;
  const Mat<double> dF = p.W_dec.transpose() * ((Xh - X) * (2.0 / B));
  const double eps = 0.4;
  Index in_window = 0;
  double l0 = 0;
  for (Index j = 0; j < m; ++j) {
    double expect = 0;
    for (Index t = 0; t < B; ++t) {
      const double u = (Z(j, t) - 0.2) / eps;
      const bool k = std::abs(u) < 0.5;
      in_window += k;
      l0 += Z(j, t) > 0.2;
      if (k) expect += dF(j, t) * (-0.2 / eps) + lam / B * (-1.0 / eps);
    }
    INFO("latent " << j);
    REQUIRE(g.threshold[j] == Approx(expect).epsilon(1e-10).margin(1e-12));
  }
  REQUIRE(in_window > B);  // the check exercised the kernel
  REQUIRE(r.terms[1] == Approx(lam * l0 / B));
  // The L0 part equals the derivative of a smoothed L0 (the step replaced by a ramp of width eps).
  auto smooth_l0 = [&] {
    double v = 0;
    for (Index t = 0; t < B; ++t)
      for (Index j = 0; j < m; ++j) v += std::clamp((Z(j, t) - model.params().threshold[j]) / eps + 0.5, 0.0, 1.0);
    return lam * v / B;
  };
  sae::JumpReluSae<double> l0_only(config(d, m));  // no reconstruction: threshold grads of the L0 alone
  (void)l0_only;
  for (Index j = 0; j < m; ++j) {
    const double h = 1e-7, saved = model.params().threshold[j];
    model.params().threshold[j] = saved + h;
    const double lp = smooth_l0();
    model.params().threshold[j] = saved - h;
    const double lm = smooth_l0();
    model.params().threshold[j] = saved;
    double l0_part = 0;
    for (Index t = 0; t < B; ++t)
      if (std::abs((Z(j, t) - 0.2) / eps) < 0.5) l0_part += lam / B * (-1.0 / eps);
    REQUIRE(l0_part == Approx((lp - lm) / (2 * h)).epsilon(1e-5).margin(1e-8));
  }
}

TEST_CASE("TargetL0: value lambda (L0/T - 1)^2 and threshold gradient 2 lambda (L0/T - 1)/T dL0/dtheta",
          "[core][jumprelu][gradients]") {
  const Index d = 4, m = 8, B = 30;
  using Target = sae::SparseAutoencoder<sae::JumpReLU, sae::CombinedLoss<sae::TargetL0>, double>;
  Target model(config(d, m));
  model.activation().bandwidth = 0.5;
  auto p = sae_test::random_params<double>(d, m, 13);
  p.threshold = Vec<double>::Constant(m, 0.1);
  model.set_params(p);
  auto& t = model.loss().get<sae::TargetL0>();
  t.coefficient = 2.0;
  t.target = 1.5;
  const Mat<double> X = sae_test::random_matrix<double>(d, B, 14);
  sae::Parameters<double> g;
  Target::State s;
  const auto r = model.forward_backward(X, g, s);
  const Mat<double> Z = (p.W_enc.transpose() * (X.colwise() - p.b_dec)).colwise() + p.b_enc;
  const double l0 = static_cast<double>((Z.array() > 0.1).count()) / B;
  REQUIRE(r.total == Approx(2.0 * (l0 / 1.5 - 1) * (l0 / 1.5 - 1)));
  for (Index j = 0; j < m; ++j) {
    double near = 0;
    for (Index q = 0; q < B; ++q) near += std::abs((Z(j, q) - 0.1) / 0.5) < 0.5;
    const double dl0 = -near / (B * 0.5);
    // no reconstruction term here; the activation's own STE term sees dL/dF = 0
    REQUIRE(g.threshold[j] == Approx(2.0 * 2.0 * (l0 / 1.5 - 1) / 1.5 * dl0).margin(1e-12));
  }
  REQUIRE(g.W_enc.isZero());
}

TEST_CASE("JumpReLU: thresholds stay >= 0 after an update; saved and loaded with the threshold", "[core][jumprelu]") {
  sae_test::TempDir tmp("jr_save");
  sae::JumpReluSae<float> model(config(3, 5));
  auto p = sae_test::random_params<float>(3, 5, 15);
  p.threshold.resize(5);
  p.threshold << -0.5f, 0.1f, 0.2f, -1e-3f, 0.4f;
  model.set_params(p);
  sae::JumpReluSae<float>::State s;
  model.after_update(s);
  REQUIRE(model.params().threshold.minCoeff() >= 0.0f);
  REQUIRE(model.params().threshold[2] == 0.2f);
  sae::save_sae(tmp / "jr", model);
  const auto loaded = std::get<sae::JumpReluSae<float>>(sae::load_sae(tmp / "jr"));
  REQUIRE(loaded.params().threshold == model.params().threshold);
  REQUIRE(loaded.config().architecture == std::string(sae::JumpReLUVariant::name));
}

TEST_CASE("Orthogonality: value is gamma/m sum_i max_j cos, gradient matches finite differences",
          "[core][ortho][gradients]") {
  const Index d = 6, m = 12;
  using OrthoOnly = sae::SparseAutoencoder<sae::ReLU, sae::CombinedLoss<sae::Orthogonality>, double>;
  OrthoOnly model(config(d, m));
  model.set_params(sae_test::random_params<double>(d, m, 16));
  auto& o = model.loss().get<sae::Orthogonality>();
  o.coefficient = 0.7;
  const Mat<double> X = sae_test::random_matrix<double>(d, 3, 17);
  const Index K = GENERATE(1, 3);
  o.chunks = K;
  INFO("chunks " << K);
  sae::Parameters<double> g;
  OrthoOnly::State s;
  const auto r = model.forward_backward(X, g, s);
  if (K == 1) {  // one chunk: the exact max over all other latents
    const auto& W = model.params().W_dec;
    double expect = 0;
    for (Index i = 0; i < m; ++i) {
      double best = -2;
      for (Index j = 0; j < m; ++j)
        if (j != i) best = std::max(best, W.col(i).dot(W.col(j)) / (W.col(i).norm() * W.col(j).norm()));
      expect += best;
    }
    REQUIRE(r.total == Approx(0.7 * expect / m).epsilon(1e-12));
  }
  // Same step number -> same chunks, so the loss is a smooth function of W_dec near this point.
  check_fd(
      model, g, [&] { return model.loss_value(X, 0).total; }, "W_dec");
  REQUIRE(g.W_enc.isZero());
}

TEST_CASE("AuxK: dead latents reconstruct the residual; gradients match finite differences with e held fixed",
          "[core][auxk][gradients]") {
  const Index d = 5, m = 16, k = 2, B = 7;
  const bool apply_b_dec = GENERATE(true, false);
  auto cfg = config(d, m, k);
  cfg.apply_b_dec_to_input = apply_b_dec;
  using AuxOnly = sae::SparseAutoencoder<sae::TopK, sae::CombinedLoss<sae::AuxK>, double>;
  AuxOnly model(cfg);
  model.set_params(sae_test::random_params<double>(d, m, 18));
  auto& aux = model.loss().get<sae::AuxK>();
  aux.k_aux = 3;
  aux.coefficient = 0.5;
  aux.dead_tokens = 100;
  aux.since_fired.assign(m, 0);
  const std::vector<Index> dead = {1, 4, 5, 9, 12, 15};
  for (Index j : dead) aux.since_fired[j] = 100;
  REQUIRE(aux.dead_count() == 6);
  const Mat<double> X = sae_test::random_matrix<double>(d, B, 19);
  sae::Parameters<double> g;
  AuxOnly::State s;
  const auto r = model.forward_backward(X, g, s);
  REQUIRE(r.total > 0);
  const Mat<double> E = X - s.X_hat;  // fixed residual at the current parameters
  // Reference: the AuxK loss as a function of the parameters with E fixed.
  auto ref = [&] {
    const auto& p = model.params();
    double num = 0;
    for (Index t = 0; t < B; ++t) {
      Eigen::VectorXd x = X.col(t);
      if (apply_b_dec) x -= p.b_dec;
      std::vector<std::pair<double, Index>> zs;
      for (Index j : dead) zs.emplace_back(p.W_enc.col(j).dot(x) + p.b_enc[j], j);
      std::sort(zs.begin(), zs.end(), std::greater<>());
      Eigen::VectorXd eh = Eigen::VectorXd::Zero(d);
      for (Index q = 0; q < 3; ++q)
        if (zs[q].first > 0) eh += zs[q].first * p.W_dec.col(zs[q].second);
      num += (E.col(t) - eh).squaredNorm();
    }
    return 0.5 * num / E.squaredNorm();
  };
  REQUIRE(r.total == Approx(ref()).epsilon(1e-12));
  check_fd(model, g, ref);
  // Live latents get no AuxK gradient.
  for (Index j = 0; j < m; ++j)
    if (std::find(dead.begin(), dead.end(), j) == dead.end()) REQUIRE(g.W_dec.col(j).isZero());
  // Counters: +B for everyone, reset for the latents that fired.
  model.after_update(s);
  for (Index j = 0; j < m; ++j) {
    bool fired = false;
    for (Index i = 0; i < s.codes.nnz(); ++i) fired |= s.codes.indices[i] == j;
    REQUIRE(aux.since_fired[j] == (fired ? 0 : (std::find(dead.begin(), dead.end(), j) != dead.end() ? 100 + B : B)));
  }
}

TEST_CASE("AuxK: nothing is dead, nothing is added", "[core][auxk]") {
  sae::TopKSae<double> model(config(4, 10, 2));
  model.set_params(sae_test::random_params<double>(4, 10, 20));
  const Mat<double> X = sae_test::random_matrix<double>(4, 5, 21);
  const auto r = model.loss_value(X);
  REQUIRE(r.terms[1] == 0.0);
}
