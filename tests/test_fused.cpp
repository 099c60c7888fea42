// The fused encoder (product + per-token top-c selection tile by tile) against the plain path
// (one product per 256-token block, then a partial sort per token), kernel by kernel and through
// whole training steps of every TopK-family variant; and the GEMM backends against each other.
#include "helpers.hpp"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

using sae::Index;
using sae::Mat;

namespace {

template <class Scalar>
struct TopC {
  std::vector<Scalar> values;
  std::vector<std::int32_t> indices;
  std::vector<Index> count;
  TopC(Index B, Index cap)
      : values(static_cast<std::size_t>(B * cap), Scalar(-1)),
        indices(static_cast<std::size_t>(B * cap), -1),
        count(static_cast<std::size_t>(B), -1) {}
};

/// Brute force: all positive (value, latent) pairs of token t, largest first, ties to the lower latent.
template <class Scalar>
std::vector<std::pair<Scalar, std::int32_t>> brute_top(const Mat<Scalar>& Z, Index t, Index cap) {
  std::vector<std::pair<Scalar, std::int32_t>> v;
  for (Index j = 0; j < Z.rows(); ++j)
    if (Z(j, t) > Scalar(0)) v.emplace_back(Z(j, t), static_cast<std::int32_t>(j));
  std::stable_sort(v.begin(), v.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  if (static_cast<Index>(v.size()) > cap) v.resize(static_cast<std::size_t>(cap));
  std::sort(v.begin(), v.end(), [](const auto& a, const auto& b) { return a.second < b.second; });
  return v;
}

}  // namespace

TEMPLATE_TEST_CASE("fused_top_c equals the plain path and a brute-force selection", "[core][fused]", float, double) {
  using Scalar = TestType;
  struct Case {
    Index d, m, B, cap, block, chunk;
  };
  // partial token blocks, latent chunks that are not multiples of 16, cap = 1 and cap = m
  const Case cases[] = {{8, 100, 37, 5, 16, 33},
                        {16, 300, 70, 12, 32, 64},
                        {5, 40, 9, 40, 4, 7},
                        {12, 257, 130, 1, 256, 2048},
                        {24, 1000, 64, 40, 64, 200}};
  for (const auto& cs : cases) {
    CAPTURE(cs.d, cs.m, cs.B, cs.cap, cs.block, cs.chunk);
    auto p = sae_test::random_params<Scalar>(cs.d, cs.m, 11 + static_cast<std::uint64_t>(cs.m));
    const Mat<Scalar> X = sae_test::random_matrix<Scalar>(cs.d, cs.B, 5);
    sae::Vec<Scalar> c;
    sae::kernels::encoder_bias(p, true, c);
    const Mat<double> Z = ((p.W_enc.transpose() * X).colwise() + c).template cast<double>();

    TopC<Scalar> fused(cs.B, cs.cap), plain(cs.B, cs.cap);
    sae::kernels::FusedScratch<Scalar> scratch;
    sae::kernels::fused_top_c(p, c, X, cs.cap, sae::gemm::Backend::Eigen, sae::kernels::Precision::Native,
                              sae::gemm::Tiling{cs.block, cs.chunk}, scratch, fused.values.data(), fused.indices.data(),
                              fused.count.data());
    Mat<Scalar> Zbuf;
    sae::kernels::plain_top_c(p, c, X, cs.cap, Zbuf, plain.values.data(), plain.indices.data(), plain.count.data());
    REQUIRE(fused.count == plain.count);
    for (Index t = 0; t < cs.B; ++t) {
      const auto want = brute_top(Z, t, cs.cap);
      REQUIRE(fused.count[t] == static_cast<Index>(want.size()));
      for (Index i = 0; i < fused.count[t]; ++i) {
        const auto slot = static_cast<std::size_t>(t * cs.cap + i);
        REQUIRE(fused.indices[slot] == want[static_cast<std::size_t>(i)].second);
        REQUIRE(plain.indices[slot] == want[static_cast<std::size_t>(i)].second);
        REQUIRE(static_cast<double>(fused.values[slot]) ==
                Approx(want[static_cast<std::size_t>(i)].first).epsilon(sae_test::Tol<Scalar>::rel));
        REQUIRE(static_cast<double>(fused.values[slot]) ==
                Approx(static_cast<double>(plain.values[slot])).epsilon(sae_test::Tol<Scalar>::rel));
      }
    }
  }
}

TEST_CASE("fused_top_c: exact ties keep the lower latent across chunks; no positives, no codes", "[core][fused]") {
  const Index d = 3, m = 50, B = 3, cap = 4;
  sae::Parameters<float> p(d, m, false);  // W_enc = 0: z = c exactly
  sae::Vec<float> c = sae::Vec<float>::Constant(m, -1.0f);
  for (Index j : {3, 17, 18, 30, 44, 49}) c[j] = 2.0f;  // six-way tie for four slots, in three chunks
  c[25] = 5.0f;
  const Mat<float> X = Mat<float>::Ones(d, B);
  TopC<float> out(B, cap);
  sae::kernels::FusedScratch<float> scratch;
  sae::kernels::fused_top_c(p, c, X, cap, sae::gemm::Backend::Eigen, sae::kernels::Precision::Native,
                            sae::gemm::Tiling{2, 16}, scratch, out.values.data(), out.indices.data(), out.count.data());
  for (Index t = 0; t < B; ++t) {
    REQUIRE(out.count[t] == 4);
    const std::vector<std::int32_t> got(out.indices.begin() + t * cap, out.indices.begin() + (t + 1) * cap);
    REQUIRE(got == std::vector<std::int32_t>{3, 17, 18, 25});
  }
  c.setConstant(-0.5f);
  sae::kernels::fused_top_c(p, c, X, cap, sae::gemm::Backend::Eigen, sae::kernels::Precision::Native,
                            sae::gemm::Tiling{2, 16}, scratch, out.values.data(), out.indices.data(), out.count.data());
  for (Index t = 0; t < B; ++t) REQUIRE(out.count[t] == 0);
}

namespace {
/// One forward/backward through the fused and the plain encoder: same codes, same gradients.
template <class Model>
void check_fused_step(Model model, const char* what) {
  INFO(what);
  const Index d = model.d_in(), m = model.d_sae(), B = 75;
  const Mat<float> X = sae_test::random_matrix<float>(d, B, 3);
  model.initialize(X, 4);
  model.normalize_decoder();
  typename Model::State fused, plain;
  fused.encoder.tiling = sae::gemm::Tiling{16, 48};  // several blocks and chunks, partial ones too
  plain.encoder.fused = false;
  sae::Parameters<float> gf, gp;
  for (std::int64_t step = 0; step < 2; ++step) {
    const auto rf = model.forward_backward(X, gf, fused, step);
    const auto rp = model.forward_backward(X, gp, plain, step);
    REQUIRE(rf.total == Approx(rp.total).epsilon(1e-5));
    REQUIRE(fused.codes.offsets == plain.codes.offsets);
    REQUIRE(fused.codes.indices == plain.codes.indices);
    REQUIRE(fused.codes.nnz() > 0);
    for (Index i = 0; i < fused.codes.nnz(); ++i)
      REQUIRE(fused.codes.values[i] == Approx(plain.codes.values[i]).epsilon(1e-5).margin(1e-6));
    sae::zip_tensors(
        [&](const char* name, const auto& a, const auto& b) {
          INFO(name);
          REQUIRE(a.size() == b.size());
          if (b.size() == 0) return;  // no threshold
          const double scale = std::max(1e-6, static_cast<double>(b.cwiseAbs().maxCoeff()));
          REQUIRE(static_cast<double>((a - b).cwiseAbs().maxCoeff()) / scale < 1e-4);
        },
        gf, gp);
    model.after_update(fused);
  }
  (void)m;
}
}  // namespace

TEST_CASE("Fused and plain encoders give the same codes and gradients in a training step", "[core][fused]") {
  const Index d = 24, m = 200, k = 6;
  check_fused_step(sae::TopKSae<float>(sae_test::config(d, m, k)), "topk");
  check_fused_step(sae::BatchTopKSae<float>(sae_test::config(d, m, k)), "batchtopk");
  check_fused_step(sae::OrtSae<float>(sae_test::config(d, m, k)), "ortsae");
}

TEST_CASE("GEMM backends agree on the encoder product", "[core][fused]") {
  const Index d = 40, m = 130, n = 33;
  const Mat<float> W = sae_test::random_matrix<float>(d + 3, m, 1), X = sae_test::random_matrix<float>(d + 5, n, 2);
  const Mat<double> want = W.topRows(d).cast<double>().transpose() * X.topRows(d).cast<double>();
  for (const auto b : sae::gemm::available_backends()) {
    INFO(sae::gemm::backend_name(b));
    Mat<float> Z = Mat<float>::Constant(m + 2, n, std::numeric_limits<float>::quiet_NaN());
    // leading dimensions larger than the rows: the product reads W, X and writes Z through them
    sae::gemm::product_tn<float>(b, d, m, n, W.data(), d + 3, X.data(), d + 5, Z.data(), m + 2);
    REQUIRE(((Z.topRows(m).cast<double>() - want).cwiseAbs().maxCoeff()) < 1e-4);
    REQUIRE(Z.bottomRows(2).array().isNaN().all());  // padding rows untouched
  }
  REQUIRE(sae::gemm::parse_backend("eigen") == sae::gemm::Backend::Eigen);
  REQUIRE_THROWS_AS(sae::gemm::parse_backend("mkl"), std::invalid_argument);
}
