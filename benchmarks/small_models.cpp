// Training steps of small and large models on 1 and 2 threads (issue 24, part 5): what waking
// the threads costs a small model, and that large ones keep their threads.
//
//   cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=Release -DSAE_BUILD_BENCHMARKS=ON
//   cmake --build build-bench --target bench_small_models -j2
//   OMP_WAIT_POLICY=passive build-bench/bin/bench_small_models --benchmark_counters_tabular=true
//
// Each benchmark times one training step as train() runs it (forward_backward, the decoder
// projection for unit-norm variants, Adam, after_update) on a fixed N(0, 1) batch, after one
// untimed warm-up step, with sae::set_num_threads(threads) (the /threads:N suffix). Shapes:
//
//   tiny      d 20, m 96, B 512      the model of issue 24 (python/tests/test_transcoder.py):
//                                    relu, jumprelu, topk (k 4), and a jumprelu skip transcoder
//                                    20 -> 12 (d_out 12, W_skip)
//   readme    d 32, m 128, B 512     the README's example (topk, k 2)
//   demo      d 64, m 512, B 1024    scripts/demo.sh (topk, k 4)
//   medium    d 256, m 1024, B 512   relu: one tile of every kernel, above the size at which
//                                    libsae uses its threads (Eigen threads the products)
//   large     d 768, m 16384         topk k 32 at B 4096 (issue 5's shape) and relu at B 1024;
//                                    3 iterations each (seconds per step)
//
// and the two measurements behind sae::detail::min_parallel_flops (detail/omp.hpp), each on
// 1 and 2 threads whatever its size:
//
//   product/DxMxB   Eigen's Z = W^T X (W: d x m, X: d x B) as one product, threaded by Eigen
//   adam/N          Adam's update of N coefficients as one OpenMP loop (Adam::update_range's
//                   arithmetic, without its size test)
//
// Measure with OMP_WAIT_POLICY=passive (the test command's setting, and the one that made
// small models slow) and without it; on a machine shared with other work, compare numbers
// from one run only, e.g. with --benchmark_repetitions=3. Counters: tokens_per_s (steps),
// GFLOP/s (products).
#include <sae/sae.hpp>

#include "bench_data.hpp"

#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace {

using sae::Index;
using sae::Mat;

using bench::gaussian;

struct Shape {
  Index d, m, B, k;
  Index d_out = 0;  ///< > 0: a skip transcoder d -> d_out
};

/// One model, its batch (and targets) and optimizer; step() is one training step.
template <class Model>
struct Training {
  Model model;
  Mat<float> X, Y;
  typename Model::State state;
  sae::Parameters<float> grads;
  sae::Adam<float> adam;
  std::int64_t step_no = 0;

  static sae::SaeConfig config(const Shape& s) {
    sae::SaeConfig cfg;
    cfg.d_in = s.d;
    cfg.d_sae = s.m;
    cfg.k = s.k;
    if (s.d_out > 0) {
      cfg.d_out = s.d_out;
      cfg.skip = true;
      cfg.apply_b_dec_to_input = false;
    }
    return cfg;
  }

  explicit Training(const Shape& s)
      : model(config(s)), X(gaussian(s.d, s.B, 3)), Y(s.d_out > 0 ? gaussian(s.d_out, s.B, 5) : Mat<float>()) {
    if (s.d_out > 0)
      model.initialize(X, Y, 4);
    else
      model.initialize(X, 4);
    if constexpr (Model::activation_type::unit_norm_decoder) model.normalize_decoder();
    adam = sae::Adam<float>(sae::AdamOptions{}, model.params());
  }
  double step() {
    const auto r = Y.size() > 0 ? model.forward_backward(X, Y, grads, state, step_no)
                                : model.forward_backward(X, grads, state, step_no);
    ++step_no;
    if constexpr (Model::activation_type::unit_norm_decoder) model.project_decoder_gradient(grads);
    adam.step(model.params(), grads, 1e-4);
    model.after_update(state);
    return r.total;
  }
};

template <class Model>
void BM_Step(benchmark::State& st, Shape shape) {
  const int threads = static_cast<int>(st.range(0));
  sae::set_num_threads(threads);
  Training<Model> t(shape);
  t.step();  // warm-up: sizes every buffer
  for (auto _ : st) {
    const double loss = t.step();
    benchmark::DoNotOptimize(loss);
  }
  st.counters["tokens_per_s"] = benchmark::Counter(static_cast<double>(shape.B) * static_cast<double>(st.iterations()),
                                                   benchmark::Counter::kIsRate);
}

void BM_Product(benchmark::State& st, Index d, Index m, Index B) {
  const int threads = static_cast<int>(st.range(0));
  sae::set_num_threads(threads);
  Eigen::setNbThreads(threads);  // the product's own threads, as Eigen chooses them
  const Mat<float> W = gaussian(d, m, 1), X = gaussian(d, B, 2);
  Mat<float> Z(m, B);
  Z.noalias() = W.transpose() * X;  // warm-up
  for (auto _ : st) {
    Z.noalias() = W.transpose() * X;
    benchmark::DoNotOptimize(Z.data());
    benchmark::ClobberMemory();
  }
  Eigen::setNbThreads(0);
  st.counters["GFLOP/s"] = benchmark::Counter(
      2.0 * static_cast<double>(d * m * B) * static_cast<double>(st.iterations()) * 1e-9, benchmark::Counter::kIsRate);
}

void BM_AdamLoop(benchmark::State& st, Index n) {
  const int threads = static_cast<int>(st.range(0));
  std::vector<float> p(static_cast<std::size_t>(n), 1.0f), g(static_cast<std::size_t>(n), 0.5f),
      mo(static_cast<std::size_t>(n), 0.0f), v(static_cast<std::size_t>(n), 0.0f);
  float* __restrict pp = p.data();
  const float* __restrict gp = g.data();
  float* __restrict mp = mo.data();
  float* __restrict vp = v.data();
  for (auto _ : st) {
    SAE_OMP(parallel for simd schedule(static) num_threads(threads))
    for (Index i = 0; i < n; ++i) {
      const float gi = gp[i];
      const float mi = 0.9f * mp[i] + 0.1f * gi;
      const float vi = 0.999f * vp[i] + 0.001f * gi * gi;
      mp[i] = mi;
      vp[i] = vi;
      pp[i] -= 1e-4f * mi / (std::sqrt(vi) * 1.0001f + 1e-8f);
    }
    benchmark::ClobberMemory();
  }
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;

  auto add = [](const std::string& name, auto fn, Shape s, int iterations = 0) {
    auto* b = benchmark::RegisterBenchmark(name.c_str(), fn, s);
    b->ArgName("threads")->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
    if (iterations > 0) b->Iterations(iterations);
  };
  const Shape tiny{20, 96, 512, 4}, readme{32, 128, 512, 2}, demo{64, 512, 1024, 4}, medium{256, 1024, 512, 0};
  add("tiny/relu", BM_Step<sae::ReluSae<float>>, tiny);
  add("tiny/jumprelu", BM_Step<sae::JumpReluSae<float>>, tiny);
  add("tiny/topk", BM_Step<sae::TopKSae<float>>, tiny);
  add("tiny/jumprelu_skip_transcoder", BM_Step<sae::JumpReluSae<float>>, Shape{20, 96, 512, 0, 12});
  add("readme/topk", BM_Step<sae::TopKSae<float>>, readme);
  add("demo/topk", BM_Step<sae::TopKSae<float>>, demo);
  add("medium/relu", BM_Step<sae::ReluSae<float>>, medium);
  add("large/topk_B4096", BM_Step<sae::TopKSae<float>>, Shape{768, 16384, 4096, 32}, 3);
  add("large/relu_B1024", BM_Step<sae::ReluSae<float>>, Shape{768, 16384, 1024, 0}, 3);
  const Index products[][3] = {{20, 96, 512},  {32, 128, 512}, {32, 256, 512},  {64, 256, 512},
                               {64, 512, 512}, {96, 512, 512}, {128, 512, 512}, {256, 1024, 512}};
  for (const auto& s : products) {
    auto* b = benchmark::RegisterBenchmark(
        ("product/" + std::to_string(s[0]) + "x" + std::to_string(s[1]) + "x" + std::to_string(s[2])).c_str(),
        BM_Product, s[0], s[1], s[2]);
    b->ArgName("threads")->Arg(1)->Arg(2)->Unit(benchmark::kMicrosecond)->UseRealTime();
  }
  for (const Index n : {Index(4096), Index(16384), Index(65536), Index(262144), Index(1048576)}) {
    auto* b = benchmark::RegisterBenchmark(("adam/" + std::to_string(n)).c_str(), BM_AdamLoop, n);
    b->ArgName("threads")->Arg(1)->Arg(2)->Unit(benchmark::kMicrosecond)->UseRealTime();
  }

  benchmark::AddCustomContext("sae_encoder_backend", sae::gemm::backend_name(sae::gemm::encoder_backend()));
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
