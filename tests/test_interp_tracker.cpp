// Tests for sae/interp/top_examples.hpp, feature_stats.hpp and tracker.hpp: the streaming
// tracker against brute force on small sets, quantiles against a sorted array.
#include <catch2/catch.hpp>

#include "helpers.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include <sae/interp/interp.hpp>

using sae::Index;
using sae::Mat;
using sae::interp::Activation;

namespace {

/// Codes with many zeros and many tied values (values on a grid of 0.25): m x B.
Mat<float> tied_codes(Index m, Index B, std::uint64_t seed, double p_active = 0.3) {
  sae::detail::Rng rng(seed);
  Mat<float> F = Mat<float>::Zero(m, B);
  for (Index t = 0; t < B; ++t)
    for (Index j = 0; j < m; ++j)
      if (rng.uniform() < p_active) F(j, t) = 0.25f * static_cast<float>(1 + rng.below(12));
  return F;
}

/// Brute force: all (value, example) with value != 0 of row j, sorted by value desc then
/// example asc, first n.
std::vector<Activation> brute_top(const Mat<float>& F, Index j, Index n) {
  std::vector<Activation> v;
  for (Index t = 0; t < F.cols(); ++t)
    if (F(j, t) != 0) v.push_back({F(j, t), t});
  std::sort(v.begin(), v.end(), [](const Activation& a, const Activation& b) {
    return a.value != b.value ? a.value > b.value : a.example < b.example;
  });
  if (static_cast<Index>(v.size()) > n) v.resize(static_cast<std::size_t>(n));
  return v;
}

/// SparseCodes holding the nonzeros of F (latents in increasing order per token).
sae::SparseCodes<float> to_sparse(const Mat<float>& F) {
  sae::SparseCodes<float> c;
  c.reset(F.rows(), F.cols());
  for (Index t = 0; t < F.cols(); ++t) {
    for (Index j = 0; j < F.rows(); ++j)
      if (F(j, t) != 0) {
        c.indices.push_back(static_cast<std::int32_t>(j));
        c.values.push_back(F(j, t));
      }
    c.offsets[static_cast<std::size_t>(t) + 1] = c.nnz();
  }
  return c;
}

/// NumPy's default ("linear") quantile of v, written out independently of the library.
double numpy_quantile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  const double pos = q * static_cast<double>(v.size() - 1);
  const std::size_t i = static_cast<std::size_t>(pos);
  if (i + 1 >= v.size()) return v.back();
  return v[i] * (1.0 - (pos - static_cast<double>(i))) + v[i + 1] * (pos - static_cast<double>(i));
}

}  // namespace

TEST_CASE("TopActivations: equals a brute-force top-N (ties by example index) for dense and sparse codes", "[interp]") {
  const Index m = 37, B = 613, n = 9;
  const Mat<float> F = tied_codes(m, B, 11);
  sae::interp::TopActivations dense(m, n), sparse(m, n);
  // Uneven batches, fed in order.
  const Index cuts[] = {0, 1, 8, 100, 101, 400, B};
  for (std::size_t c = 0; c + 1 < std::size(cuts); ++c) {
    const Index t0 = cuts[c], b = cuts[c + 1] - cuts[c];
    const Mat<float> Fb = F.middleCols(t0, b);
    dense.add(Fb, t0);
    sparse.add(to_sparse(Fb), t0);
  }
  for (Index j = 0; j < m; ++j) {
    const auto want = brute_top(F, j, n);
    INFO("latent " << j);
    CHECK(dense.top(j) == want);
    CHECK(sparse.top(j) == want);
    CHECK(dense.count(j) == static_cast<Index>(want.size()));
    CHECK(dense.max_value(j) == (want.empty() ? 0.0f : want.front().value));
  }
}

TEST_CASE("TopActivations: a large dense batch (parallel over latents) equals brute force", "[interp]") {
  const Index m = 300, B = 1200, n = 5;  // large enough for threads (the threaded path)
  REQUIRE(sae::detail::parallel_worth(sae::detail::streamed(m * B)));
  const Mat<float> F = tied_codes(m, B, 5, 0.05);
  sae::interp::TopActivations tr(m, n);
  tr.add(F, 1000);
  for (Index j = 0; j < m; ++j) {
    auto want = brute_top(F, j, n);
    for (auto& a : want) a.example += 1000;
    REQUIRE(tr.top(j) == want);
  }
}

TEST_CASE("TopActivations: trackers of disjoint shards merged in any order equal one pass", "[interp]") {
  const Index m = 23, B = 500, n = 7;
  const Mat<float> F = tied_codes(m, B, 3);
  sae::interp::TopActivations whole(m, n), a(m, n), b(m, n), c(m, n);
  whole.add(F, 0);
  a.add(Mat<float>(F.middleCols(0, 170)), 0);
  b.add(Mat<float>(F.middleCols(170, 200)), 170);
  c.add(Mat<float>(F.middleCols(370, 130)), 370);
  sae::interp::TopActivations m1 = c;
  m1.merge(a);
  m1.merge(b);
  sae::interp::TopActivations m2 = b;
  m2.merge(c);
  m2.merge(a);
  for (Index j = 0; j < m; ++j) {
    CHECK(m1.top(j) == whole.top(j));
    CHECK(m2.top(j) == whole.top(j));
  }
  CHECK_THROWS_AS(m1.merge(sae::interp::TopActivations(m, n + 1)), std::invalid_argument);
  CHECK_THROWS_AS(whole.add(Mat<float>(Mat<float>::Zero(m + 1, 2)), 0), std::invalid_argument);
}

TEST_CASE("FeatureDensity: counts, frequencies, dead and dense latents, log10 histogram", "[interp]") {
  const Index m = 10, B = 1000;
  Mat<float> F = Mat<float>::Zero(m, B);
  // latent j fires on the first fire[j] tokens with value 2.
  const Index fire[m] = {0, 1, 10, 100, 1000, 500, 0, 3, 50, 200};
  for (Index j = 0; j < m; ++j) F.row(j).head(fire[j]).setConstant(2.0f);
  sae::interp::FeatureDensity d(m), d2(m), d3(m);
  d.add(F);
  d2.add(Mat<float>(F.leftCols(400)));
  d3.add(to_sparse(Mat<float>(F.rightCols(600))));
  d2.merge(d3);
  for (Index j = 0; j < m; ++j) {
    CHECK(d.count(j) == fire[j]);
    CHECK(d2.count(j) == fire[j]);
    CHECK(d.frequency(j) == Approx(static_cast<double>(fire[j]) / B));
    CHECK(d.sum(j) == Approx(2.0 * fire[j]));
    CHECK(d.mean_when_active(j) == (fire[j] ? 2.0 : 0.0));
  }
  CHECK(d.tokens() == B);
  CHECK(d2.tokens() == B);
  CHECK(d.dead_latents() == std::vector<Index>{0, 6});
  CHECK(d.dense_latents(0.1) == std::vector<Index>{4, 5, 9});
  // log10 frequencies: -3, -2, -1, 0, -0.301, -2.52, -1.30, -0.699 over [-3, 0] in 3 bins.
  const auto h = d.log10_histogram(3);
  CHECK(h.log10_lo == -3.0);
  CHECK(h.log10_hi == 0.0);
  CHECK(h.dead == 2);
  CHECK(h.counts == std::vector<std::int64_t>{2, 2, 4});
}

TEST_CASE("ActivationSampler: quantiles are exact (equal a sorted array's) while the sample holds everything",
          "[interp]") {
  const Index m = 6, B = 300;
  sae::detail::Rng rng(9);
  Mat<float> F = Mat<float>::Zero(m, B);
  for (Index t = 0; t < B; ++t)
    for (Index j = 0; j < m; ++j)
      if (rng.uniform() < 0.5) F(j, t) = static_cast<float>(rng.uniform_open0() * (j + 1));
  sae::interp::ActivationSampler s(m, 400, 1);
  s.add(F, 0);
  const std::vector<double> qs = {0, 0.1, 0.25, 0.5, 0.77, 0.9, 0.99, 1};
  for (Index j = 0; j < m; ++j) {
    std::vector<double> vals;
    for (Index t = 0; t < B; ++t)
      if (F(j, t) != 0) vals.push_back(F(j, t));
    REQUIRE(s.exact(j));
    REQUIRE(s.seen(j) == static_cast<std::int64_t>(vals.size()));
    const auto got = s.quantiles(j, qs);
    for (std::size_t i = 0; i < qs.size(); ++i) {
      CHECK(got[i] == Approx(numpy_quantile(vals, qs[i])).epsilon(1e-12));
      CHECK(s.quantile(j, qs[i]) == got[i]);
    }
  }
  CHECK(std::isnan(sae::interp::ActivationSampler(2, 4).quantile(0, 0.5)));
}

TEST_CASE("ActivationSampler: a reservoir of a long stream is a uniform sample, independent of batch sizes",
          "[interp]") {
  // One latent, 40000 activations t/40000 for t = 1..40000: quantile q should be about q.
  const Index B = 40000, R = 1000;
  Mat<float> F(1, B);
  for (Index t = 0; t < B; ++t) F(0, t) = static_cast<float>(t + 1) / static_cast<float>(B);
  sae::interp::ActivationSampler s1(1, R, 7), s2(1, R, 7);
  s1.add(F, 0);
  for (Index t0 = 0; t0 < B; t0 += 333) {
    const Index b = std::min<Index>(333, B - t0);
    s2.add(Mat<float>(F.middleCols(t0, b)), t0);
  }
  CHECK(!s1.exact(0));
  CHECK(s1.sample(0) == s2.sample(0));
  CHECK(static_cast<Index>(s1.sample(0).size()) == R);
  for (double q : {0.1, 0.25, 0.5, 0.75, 0.9}) CHECK(s1.quantile(0, q) == Approx(q).margin(0.05));
  // Each example was sampled with its own value.
  for (const Activation& a : s1.sample(0)) CHECK(a.value == F(0, a.example));
  // Interval samples cover the range from the top down.
  const auto iv = s1.intervals(0, 4, 3);
  REQUIRE(iv.size() == 4);
  CHECK(iv[0].q_hi == 1.0);
  CHECK(iv[3].q_lo == 0.0);
  for (std::size_t k = 0; k < 4; ++k) {
    CHECK(iv[k].examples.size() == 3);
    CHECK(iv[k].value_lo <= iv[k].value_hi);
    for (const Activation& a : iv[k].examples) CHECK((a.value >= iv[k].value_lo && a.value <= iv[k].value_hi));
    if (k > 0) CHECK(iv[k].value_hi <= iv[k - 1].value_lo);
  }
}

TEST_CASE("ActivationSampler: merging keeps unions exact and weights large streams by their counts", "[interp]") {
  // Small: union fits, merged sample holds every activation.
  Mat<float> A = tied_codes(4, 50, 1, 0.2), Bm = tied_codes(4, 50, 2, 0.2);
  sae::interp::ActivationSampler sa(4, 200), sb(4, 200), whole(4, 200);
  sa.add(A, 0);
  sb.add(Bm, 50);
  whole.add(A, 0);
  whole.add(Bm, 50);
  sa.merge(sb);
  for (Index j = 0; j < 4; ++j) {
    CHECK(sa.sample(j) == whole.sample(j));
    CHECK(sa.seen(j) == whole.seen(j));
  }
  // Large: 30000 activations in (0, 1] and 10000 in (1, 2]; a quarter of the merged sample
  // should come from the second stream.
  const Index R = 2000;
  Mat<float> X(1, 30000), Y(1, 10000);
  for (Index t = 0; t < X.cols(); ++t) X(0, t) = static_cast<float>(t + 1) / 30000.0f;
  for (Index t = 0; t < Y.cols(); ++t) Y(0, t) = 1.0f + static_cast<float>(t + 1) / 10000.0f;
  sae::interp::ActivationSampler sx(1, R, 3), sy(1, R, 4);
  sx.add(X, 0);
  sy.add(Y, 30000);
  sx.merge(sy);
  CHECK(sx.seen(0) == 40000);
  const auto smp = sx.sample(0);
  REQUIRE(static_cast<Index>(smp.size()) == R);
  Index from_y = 0;
  for (const Activation& a : smp) from_y += a.example >= 30000;
  CHECK(static_cast<double>(from_y) / R == Approx(0.25).margin(0.04));
  CHECK(sx.quantile(0, 0.5) == Approx(2.0 / 3.0).margin(0.06));  // median of the union
}

TEST_CASE("analyze: one streamed pass gives the brute-force top examples and the evaluate() metrics", "[interp]") {
  const Index d = 12, m = 40, N = 900;
  sae::SaeConfig cfg;
  cfg.d_in = d;
  cfg.d_sae = m;
  cfg.k = 4;
  sae::TopKSae<float> model(cfg);
  model.set_params(sae_test::random_params<float>(d, m, 21));
  const Mat<float> X = sae_test::random_matrix<float>(d, N, 22);
  sae::interp::AnalyzeOptions opt;
  opt.batch = 128;
  opt.tracker.top_n = 6;
  Index progress_calls = 0;
  opt.on_progress = [&](Index done, Index total) {
    ++progress_calls;
    CHECK(total == N);
    CHECK(done <= N);
  };
  const auto r = sae::interp::analyze(model, sae::interp::MatrixBatches(X), opt);
  CHECK(progress_calls == (N + 127) / 128);
  const Mat<float> F = model.encode(X).to_dense();
  for (Index j = 0; j < m; ++j) {
    CHECK(r.tracker.top().top(j) == brute_top(F, j, 6));
    CHECK(r.tracker.density().count(j) == (F.row(j).array() != 0).count());
  }
  const sae::EvalMetrics e = sae::evaluate(model, X);
  CHECK(r.metrics.tokens == N);
  CHECK(r.metrics.l0 == Approx(e.l0));
  CHECK(r.metrics.fvu == Approx(e.fvu));
  CHECK(r.metrics.dead_fraction == Approx(e.dead_fraction));

  // A dense-code model (ReLU) through the same path, and a limit.
  sae::ReluSae<float> relu(cfg);
  relu.set_params(sae_test::random_params<float>(d, m, 23));
  opt.limit = 500;
  opt.on_progress = nullptr;
  const auto r2 = sae::interp::analyze(relu, sae::interp::MatrixBatches(X), opt);
  const Mat<float> F2 = relu.encode(X.leftCols(500));
  CHECK(r2.tracker.tokens() == 500);
  for (Index j = 0; j < m; ++j) CHECK(r2.tracker.top().top(j) == brute_top(F2, j, 6));
}
