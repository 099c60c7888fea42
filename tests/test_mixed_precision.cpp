// Mixed precision of the dense variants (`--precision bf16`, kernels::MixedPrecision): the
// strided bf16 product is exactly bf16(A) bf16(B) up to fp32 summation, in every layout the
// training step uses and on every backend; a ReLU / JumpReLU step in mixed precision computes
// its pre-activations from bf16-rounded operands, agrees between the software product and
// oneDNN's, and stays within bf16's reach of the fp32 step; and training on data with known
// features recovers them as well as fp32 does.
#include "helpers.hpp"

#include <cmath>
#include <cstdint>
#include <vector>

using sae::Index;
using sae::Mat;

namespace {

/// bf16 rounding of every entry (to nearest, ties to even), as doubles.
Mat<double> rounded(const Mat<float>& M) {
  Mat<double> out(M.rows(), M.cols());
  for (Index i = 0; i < M.size(); ++i)
    out.data()[i] = sae::detail::bf16_bits_to_float(sae::detail::float_to_bf16_bits(M.data()[i]));
  return out;
}

std::vector<std::uint16_t> to_bf16(const Mat<float>& M) {
  std::vector<std::uint16_t> v(static_cast<std::size_t>(M.size()));
  sae::gemm::to_bf16(M.data(), v.data(), M.size());
  return v;
}

/// Restores automatic precision when a test that fixed it ends.
struct PrecisionGuard {
  ~PrecisionGuard() {
    sae::kernels::set_encoder_precision(std::nullopt);
    sae::gemm::set_encoder_backend(sae::gemm::default_backend());
  }
};

}  // namespace

TEST_CASE("product_bf16 is bf16(A) bf16(B) up to fp32 summation, in every layout, on every backend", "[core][mixed]") {
  const Index M = 37, N = 29, K = 70;
  const Mat<float> A = sae_test::random_matrix<float>(M, K, 1), B = sae_test::random_matrix<float>(K, N, 2);
  const Mat<float> At = A.transpose(), Bt = B.transpose();
  const Mat<double> want = rounded(A) * rounded(B);
  const Mat<double> mag = rounded(A).cwiseAbs() * rounded(B).cwiseAbs();
  const auto a = to_bf16(A), at = to_bf16(At), b = to_bf16(B), bt = to_bf16(Bt);
  struct Layout {
    const std::uint16_t* A;
    Index a_i, a_k;
    const std::uint16_t* B;
    Index b_k, b_j;
    const char* name;
  };
  // A column-major (i + k M) or transposed storage (k + i K); B likewise
  const Layout layouts[] = {{a.data(), 1, M, b.data(), 1, K, "A, B"},
                            {at.data(), K, 1, b.data(), 1, K, "A^T stored, B"},
                            {a.data(), 1, M, bt.data(), N, 1, "A, B^T stored"},
                            {at.data(), K, 1, bt.data(), N, 1, "both transposed"}};
  for (const auto backend : sae::gemm::available_backends())
    for (const auto& l : layouts)
      for (const bool acc : {false, true}) {
        INFO(sae::gemm::backend_name(backend) << " " << l.name << (acc ? " +=" : " ="));
        const Index ldc = M + 3;
        Mat<float> C = Mat<float>::Constant(ldc, N, acc ? 0.5f : 7.0f);
        std::vector<float> wa, wb;
        sae::gemm::product_bf16(backend, M, N, K, l.A, l.a_i, l.a_k, l.B, l.b_k, l.b_j, C.data(), ldc, acc, wa, wb);
        const double gamma = K * 1.2e-7;
        for (Index j = 0; j < N; ++j)
          for (Index i = 0; i < M; ++i) {
            const double expect = want(i, j) + (acc ? 0.5 : 0.0);
            REQUIRE(std::abs(static_cast<double>(C(i, j)) - expect) <= gamma * (mag(i, j) + 0.5) + 1e-30);
          }
        for (Index j = 0; j < N; ++j)  // rows past M untouched
          for (Index i = M; i < ldc; ++i) REQUIRE(C(i, j) == (acc ? 0.5f : 7.0f));
      }
}

namespace {
template <class Model>
struct StepResult {
  sae::Parameters<float> grads;
  Mat<float> codes;
  double loss;
};

template <class Model>
StepResult<Model> step(const Model& model, const Mat<float>& X, bool bf16, sae::gemm::Backend backend) {
  sae::kernels::set_encoder_precision(bf16 ? sae::kernels::Precision::BFloat16 : sae::kernels::Precision::Native);
  sae::gemm::set_encoder_backend(backend);
  typename Model::State s;
  StepResult<Model> r;
  r.loss = model.forward_backward(X, r.grads, s, 3).total;
  r.codes = s.codes;
  REQUIRE(s.mixed.on == bf16);
  return r;
}

double rel_diff(const Mat<float>& a, const Mat<float>& b) {
  return static_cast<double>((a - b).norm()) / std::max(1e-30, static_cast<double>(b.norm()));
}
}  // namespace

TEST_CASE("A dense training step in mixed precision: bf16 operands, same on every backend, close to fp32",
          "[core][mixed]") {
  PrecisionGuard guard;
  const Index d = 40, m = 1100, B = 600;  // several latent chunks and token blocks, partial ones
  const Mat<float> X = sae_test::random_matrix<float>(d, B, 3);
  auto check = [&](auto model, const char* what) {
    INFO(what);
    model.initialize(X, 4);
    const auto fp32 = step(model, X, false, sae::gemm::Backend::Eigen);
    const auto soft = step(model, X, true, sae::gemm::Backend::Eigen);
    // the forward's pre-activations come from bf16-rounded W_enc and X: ReLU's positive codes are
    // z = bf16(W_enc)^T bf16(X) + c exactly up to fp32 summation
    sae::Vec<float> c;
    sae::kernels::encoder_bias(model.params(), model.config().apply_b_dec_to_input, c);
    const Mat<double> Z = (rounded(model.params().W_enc).transpose() * rounded(X)).colwise() + c.cast<double>();
    const Mat<double> mag = rounded(model.params().W_enc).cwiseAbs().transpose() * rounded(X).cwiseAbs();
    Index compared = 0;
    for (Index t = 0; t < B; ++t)
      for (Index j = 0; j < m; ++j)
        if (soft.codes(j, t) != 0.0f) {
          REQUIRE(std::abs(soft.codes(j, t) - Z(j, t)) <= 2e-6 * (mag(j, t) + std::abs(c[j])) + 1e-30);
          ++compared;
        }
    REQUIRE(compared > B);
    // really bf16: the fp32 step differs, but only by bf16's relative precision
    REQUIRE(rel_diff(soft.grads.W_enc, fp32.grads.W_enc) > 1e-5);
    sae::zip_tensors(
        [&](const char* name, const auto& a, const auto& b) {
          INFO(name);
          if (b.size() == 0) return;
          REQUIRE(rel_diff(a, b) < 0.05);
        },
        soft.grads, fp32.grads);
    REQUIRE(soft.loss == Approx(fp32.loss).epsilon(0.02));
    // oneDNN's bf16 units (where the CPU has them) compute the same bf16 products as the
    // software path: equal up to fp32 summation order
    if (sae::gemm::dnnl_linked()) {
      const auto hw = step(model, X, true, sae::gemm::Backend::Dnnl);
      sae::zip_tensors(
          [&](const char* name, const auto& a, const auto& b) {
            INFO(name);
            if (b.size() == 0) return;
            REQUIRE(rel_diff(a, b) < 2e-4);
          },
          hw.grads, soft.grads);
      REQUIRE(hw.loss == Approx(soft.loss).epsilon(1e-5));
    }
  };
  sae::SaeConfig cfg = sae_test::config(d, m);
  check(sae::ReluSae<float>(cfg), "relu");
  check(sae::JumpReluSae<float>(cfg), "jumprelu");
  // the TopK family ignores it (its bf16 path is the exact selection): mixed stays off
  sae::kernels::set_encoder_precision(sae::kernels::Precision::BFloat16);
  sae::TopKSae<float> topk(sae_test::config(d, m, 5));
  topk.initialize(X, 4);
  sae::TopKSae<float>::State s;
  sae::Parameters<float> g;
  topk.forward_backward(X, g, s, 0);
  REQUIRE_FALSE(s.mixed.on);
}

TEST_CASE("Mixed-precision training recovers known features as well as fp32", "[train][mixed]") {
  PrecisionGuard guard;
  sae::SyntheticOptions o;
  o.d_in = 32;
  o.features = 96;
  o.samples = 20000;
  o.active_prob = 0.03;
  o.seed = 5;
  const auto data = sae::make_superposition(o);
  struct Quality {
    double mmcs, fvu, l0;
  };
  auto train = [&](bool bf16) {
    sae::kernels::set_encoder_precision(bf16 ? sae::kernels::Precision::BFloat16 : sae::kernels::Precision::Native);
    sae::ReluSae<float> model(sae_test::config(o.d_in, 192));
    sae::ShuffledBatches<float> batches(data.X, 256, 3);
    sae::TrainOptions t;
    t.steps = 700;
    t.seed = 5;
    sae::train(model, batches, t);
    const auto ev = sae::evaluate(model, data.X);
    return Quality{sae::mmcs(model.params().W_dec, data.features), ev.fvu, ev.l0};
  };
  const auto f = train(false), b = train(true);
  CAPTURE(f.fvu, b.fvu, f.mmcs, b.mmcs, f.l0, b.l0);
  REQUIRE(f.mmcs > 0.8);
  REQUIRE(b.mmcs >= f.mmcs - 0.02);
  REQUIRE(b.fvu <= f.fvu * 1.1 + 0.01);
  REQUIRE(std::abs(b.l0 - f.l0) <= 0.1 * f.l0 + 0.5);
}
