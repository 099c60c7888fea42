// The TopK family's exact selection from approximate products (fused_encoder.hpp): the canonical
// dot product is the documented summation order bit for bit; the score bound of
// score_bounds.hpp holds for every token and latent, fp32 and bf16, on every backend; and the
// fused encoder's codes equal plain_top_c's (all canonical values, sorted) bit for bit, from
// fp32 or bf16 products, on random, structured and adversarial near-tie inputs, so training
// with bf16 proposals gives the fp32 weights bit for bit.
#include "helpers.hpp"

#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

using sae::Index;
using sae::Mat;
using sae::kernels::Precision;

namespace {

/// The order canonical_dot.hpp documents, written out independently: 16 partial sums,
/// acc[i mod 16] = fma(w_i, x_i, acc[i mod 16]) over i < ceil16(d) with zeros past d, then the
/// tree acc[l] += acc[l + h] for h = 8, 4, 2, 1.
template <class Scalar>
Scalar documented_dot(const Scalar* w, const Scalar* x, Index d) {
  Scalar acc[16] = {};
  const Index n = (d + 15) / 16 * 16;
  for (Index i = 0; i < n; ++i) {
    const Scalar wi = i < d ? w[i] : Scalar(0), xi = i < d ? x[i] : Scalar(0);
    acc[i % 16] = std::fma(wi, xi, acc[i % 16]);
  }
  for (Index h = 8; h >= 1; h /= 2)
    for (Index l = 0; l < h; ++l) acc[l] += acc[l + h];
  return acc[0];
}

template <class Scalar>
auto bits(Scalar v) {
  if constexpr (sizeof(Scalar) == 4)
    return std::bit_cast<std::uint32_t>(v);
  else
    return std::bit_cast<std::uint64_t>(v);
}

/// Values spread over many binades (so the summation order shows in the last bits).
template <class Scalar>
Mat<Scalar> wide_range(Index rows, Index cols, std::uint64_t seed) {
  Mat<Scalar> M = sae_test::random_matrix<Scalar>(rows, cols, seed);
  sae::detail::Rng rng(seed + 100);
  for (Index j = 0; j < cols; ++j)
    for (Index i = 0; i < rows; ++i) M(i, j) *= static_cast<Scalar>(std::pow(10.0, 4.0 * rng.uniform() - 2.0));
  return M;
}

/// Codes of one selection.
struct Codes {
  std::vector<float> values;
  std::vector<std::int32_t> indices;
  std::vector<Index> count;
  Codes(Index B, Index cap)
      : values(static_cast<std::size_t>(B * cap), -1.0f),
        indices(static_cast<std::size_t>(B * cap), -1),
        count(static_cast<std::size_t>(B), -1) {}
};

/// Every slot bit for bit (values compared as bit patterns).
void require_same(const Codes& a, const Codes& b, Index cap) {
  REQUIRE(a.count == b.count);
  for (std::size_t t = 0; t < a.count.size(); ++t)
    for (Index i = 0; i < a.count[t]; ++i) {
      const auto s = t * static_cast<std::size_t>(cap) + static_cast<std::size_t>(i);
      INFO("token " << t << " slot " << i);
      REQUIRE(a.indices[s] == b.indices[s]);
      REQUIRE(bits(a.values[s]) == bits(b.values[s]));
    }
}

struct Outcome {
  Codes codes;
  Index rescored;    ///< latents rescored canonically
  Index exhaustive;  ///< tokens computed over every latent
};

Outcome run_fused(const sae::Parameters<float>& p, const sae::Vec<float>& c, const Mat<float>& X, Index cap,
                  sae::gemm::Backend backend, Precision precision, sae::gemm::Tiling tiling) {
  Outcome o{Codes(X.cols(), cap), 0, 0};
  sae::kernels::FusedScratch<float> scratch;
  sae::kernels::fused_top_c(p, c, X, cap, backend, precision, tiling, scratch, o.codes.values.data(),
                            o.codes.indices.data(), o.codes.count.data());
  o.rescored = scratch.last_rescored;
  o.exhaustive = scratch.last_exhaustive;
  return o;
}

Codes run_plain(const sae::Parameters<float>& p, const sae::Vec<float>& c, const Mat<float>& X, Index cap) {
  Codes out(X.cols(), cap);
  Mat<float> Z;
  sae::kernels::plain_top_c(p, c, X, cap, Z, out.values.data(), out.indices.data(), out.count.data());
  return out;
}

}  // namespace

TEMPLATE_TEST_CASE("canonical_dot is the documented summation order, bit for bit", "[core][certified]", float, double) {
  using Scalar = TestType;
  const Mat<Scalar> W = wide_range<Scalar>(800, 2, 7);
  Index order_mattered = 0;
  for (const Index d : {1, 5, 15, 16, 17, 31, 32, 33, 100, 768, 800}) {
    CAPTURE(d);
    const Scalar got = sae::kernels::canonical_dot(W.col(0).data(), W.col(1).data(), d);
    REQUIRE(bits(got) == bits(documented_dot(W.col(0).data(), W.col(1).data(), d)));
    Scalar sequential = 0;
    for (Index i = 0; i < d; ++i) sequential += W(i, 0) * W(i, 1);
    order_mattered += bits(sequential) != bits(got);
    const double exact = W.col(0).head(d).template cast<double>().dot(W.col(1).head(d).template cast<double>());
    const double mag =
        (W.col(0).head(d).cwiseAbs().template cast<double>()).dot(W.col(1).head(d).cwiseAbs().template cast<double>());
    REQUIRE(std::abs(static_cast<double>(got) - exact) <= 2.0 * d * std::numeric_limits<Scalar>::epsilon() * mag);
  }
  REQUIRE(order_mattered > 0);  // the data is such that the order shows
}

TEST_CASE("The score bound holds for every token and latent, fp32 and bf16, on every backend", "[core][certified]") {
  // Column and token scales over 6 decades, some tiny entries, d not a multiple of 16.
  const Index d = 83, m = 150, B = 40;
  sae::Parameters<float> p(d, m, false);
  p.W_enc = wide_range<float>(d, m, 1);
  p.b_enc = sae_test::random_matrix<float>(m, 1, 2, 3.0);
  Mat<float> X = wide_range<float>(d, B, 3);
  X.col(0).setZero();            // only the bias
  X.col(1).setConstant(1e-39f);  // subnormal inputs
  p.W_enc.col(2).setConstant(1e-30f);
  sae::Vec<float> c;
  sae::kernels::encoder_bias(p, false, c);
  Mat<float> canon(m, B);
  for (Index t = 0; t < B; ++t)
    for (Index j = 0; j < m; ++j) canon(j, t) = sae::kernels::canonical_score(p.W_enc, X.col(t).data(), j, c[j]);
  for (const auto backend : sae::gemm::available_backends())
    for (const Precision prec : {Precision::Native, Precision::BFloat16}) {
      INFO(sae::gemm::backend_name(backend) << " " << sae::kernels::precision_name(prec));
      sae::kernels::ScoreBounds<float> bd;
      bd.prepare_latents(p.W_enc, prec);
      bd.prepare_tokens(X.data(), d, B, d, prec);
      Mat<float> Z(m, B);
      std::vector<float> ww, wx;
      if (prec == Precision::BFloat16)
        sae::gemm::product_tn_bf16(backend, d, m, B, bd.W16.data(), d, bd.X16.data(), d, Z.data(), m, ww, wx);
      else
        sae::gemm::product_tn<float>(backend, d, m, B, p.W_enc.data(), d, X.data(), d, Z.data(), m);
      double worst = 0;  // largest |ẑ - z| / E seen
      for (Index t = 0; t < B; ++t)
        for (Index j = 0; j < m; ++j) {
          const auto ts = static_cast<std::size_t>(t), js = static_cast<std::size_t>(j);
          const float zh = Z(j, t) + c[j];
          const float e = std::fma(bd.a[js], bd.K1[ts],
                                   std::fma(bd.b[js], bd.K2[ts], std::fma(bd.r, std::abs(zh), bd.Tt[ts] + bd.T[js])));
          const float z = canon(j, t);
          CAPTURE(t, j, zh, e, z);
          REQUIRE(zh + e >= z);
          REQUIRE(zh - e <= z);
          if (e > 0) worst = std::max(worst, std::abs(static_cast<double>(zh) - z) / e);
        }
      // the bound is not vacuous: errors reach a visible part of it
      REQUIRE(worst > (prec == Precision::BFloat16 ? 0.01 : 1e-4));
    }
}

namespace {
/// fused_top_c against plain_top_c, both precisions, every backend: identical codes. Returns the
/// outcomes of the first backend (Eigen) in fp32 and in bf16.
std::pair<Outcome, Outcome> check_exact(const sae::Parameters<float>& p, const Mat<float>& X, Index cap,
                                        sae::gemm::Tiling tiling) {
  sae::Vec<float> c;
  sae::kernels::encoder_bias(p, true, c);
  const Codes want = run_plain(p, c, X, cap);
  std::vector<Outcome> first;
  for (const auto backend : sae::gemm::available_backends())
    for (const Precision prec : {Precision::Native, Precision::BFloat16}) {
      INFO(sae::gemm::backend_name(backend) << " " << sae::kernels::precision_name(prec));
      Outcome got = run_fused(p, c, X, cap, backend, prec, tiling);
      require_same(got.codes, want, cap);
      if (first.size() < 2) first.push_back(std::move(got));
    }
  return {first[0], first[1]};
}
}  // namespace

TEST_CASE("Fused codes from fp32 or bf16 products equal the canonical top-c bit for bit", "[core][certified]") {
  SECTION("random weights and inputs, several tile shapes") {
    for (const auto& [d, m, B, cap, bt, mc] : std::vector<std::array<Index, 6>>{
             {24, 300, 70, 12, 32, 64}, {100, 1000, 64, 40, 64, 200}, {33, 257, 9, 1, 4, 7}, {16, 64, 20, 64, 8, 16}}) {
      CAPTURE(d, m, B, cap, bt, mc);
      const auto p = sae_test::random_params<float>(d, m, 11 + static_cast<std::uint64_t>(m));
      const Mat<float> X = sae_test::random_matrix<float>(d, B, 5);
      const auto [fp32, bf16] = check_exact(p, X, cap, {bt, mc});
      REQUIRE(bf16.rescored >= fp32.rescored);  // wider bounds rescore at least as many
      REQUIRE(fp32.exhaustive == 0);
      // far fewer rescored than all m (unless cap = m: then every positive latent is a candidate)
      if (4 * cap < m) REQUIRE(bf16.rescored < B * m / 4);
    }
  }
  SECTION("structured: inputs are sparse sums of the encoder's own directions") {
    const Index d = 64, m = 512, B = 80, cap = 8;
    auto p = sae_test::random_params<float>(d, m, 3);
    p.W_enc.colwise().normalize();
    Mat<float> X = Mat<float>::Zero(d, B);
    sae::detail::Rng rng(9);
    for (Index t = 0; t < B; ++t)
      for (int q = 0; q < 5; ++q)
        X.col(t) += static_cast<float>(1 + 3 * rng.uniform()) * p.W_enc.col(static_cast<Index>(rng.uniform() * m) % m);
    check_exact(p, X, cap, {16, 100});
  }
  SECTION("adversarial near-ties: columns equal in bf16, different in fp32; exact duplicates; zero inputs") {
    const Index d = 48, m = 400, B = 30, cap = 6;
    auto p = sae_test::random_params<float>(d, m, 21);
    p.b_enc.setZero();
    p.b_dec.setZero();
    sae::detail::Rng rng(4);
    // 200 columns that round to the same bf16 column as column 0 (relative perturbations of
    // 1e-4, below bf16's 2^-8): their bf16 products tie, their fp32 values do not
    for (Index j = 1; j < 200; ++j)
      for (Index i = 0; i < d; ++i)
        p.W_enc(i, j) = p.W_enc(i, 0) * static_cast<float>(1 + 1e-4 * (2 * rng.uniform() - 1));
    for (Index j = 200; j < 230; ++j) p.W_enc.col(j) = p.W_enc.col(0);  // exact ties: lower latent wins
    Mat<float> X = sae_test::random_matrix<float>(d, B, 6);
    X.col(0) = p.W_enc.col(0);  // every near-tie column at its maximum
    X.col(1).setZero();         // all values equal the (zero) bias: no positive code
    const auto [fp32, bf16] = check_exact(p, X, cap, {8, 64});
    // the near-ties overflow the candidate lists of bf16: those tokens were computed exhaustively
    REQUIRE(bf16.exhaustive > 0);
    REQUIRE(bf16.rescored > 10 * cap * B);
    (void)fp32;
  }
}

TEST_CASE("Training with bf16 proposals gives the fp32 weights bit for bit", "[core][certified]") {
  auto run = [](auto model, Precision prec) {
    using Model = decltype(model);
    const Index d = model.d_in(), B = 90;
    const Mat<float> X = sae_test::random_matrix<float>(d, B, 3);
    model.initialize(X, 4);
    model.normalize_decoder();
    typename Model::State s;
    s.encoder.precision = prec;
    s.encoder.tiling = sae::gemm::Tiling{32, 64};
    sae::Parameters<float> g;
    std::vector<std::int32_t> all_indices;
    for (std::int64_t step = 0; step < 6; ++step) {
      model.forward_backward(X, g, s, step);
      all_indices.insert(all_indices.end(), s.codes.indices.begin(), s.codes.indices.end());
      sae::zip_tensors([&](const char*, auto& w, const auto& gw) { w -= 0.05f * gw; }, model.params(), g);
      model.after_update(s);
    }
    return std::make_pair(model.params(), all_indices);
  };
  auto check = [&](auto model, const char* what) {
    INFO(what);
    const auto [pf, cf] = run(model, Precision::Native);
    const auto [pb, cb] = run(model, Precision::BFloat16);
    REQUIRE(cf == cb);
    REQUIRE(!cf.empty());
    sae::zip_tensors(
        [&](const char* name, const auto& a, const auto& b) {
          INFO(name);
          REQUIRE(a.size() == b.size());
          for (Index i = 0; i < a.size(); ++i) REQUIRE(bits(a.data()[i]) == bits(b.data()[i]));
        },
        pf, pb);
  };
  const Index d = 40, m = 320, k = 5;
  check(sae::TopKSae<float>(sae_test::config(d, m, k)), "topk");
  check(sae::BatchTopKSae<float>(sae_test::config(d, m, k)), "batchtopk");
  check(sae::OrtSae<float>(sae_test::config(d, m, k)), "ortsae");
}
