// Kernel micro-benchmarks: the pieces of one training step, each timed alone, at the shapes of
// issue 5 (d = 768, m = 16384, k = 32) with B = 1024 tokens (so one run stays short).
//
//   cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=Release -DSAE_BUILD_BENCHMARKS=ON
//   cmake --build build-bench --target bench_kernels -j2
//   OMP_NUM_THREADS=2 build-bench/bin/bench_kernels --benchmark_counters_tabular=true
//
// Counters: tokens_per_s (rate), GFLOP/s for the dense products (2 B d m flops each).
#include <sae/sae.hpp>

#include <benchmark/benchmark.h>

namespace {

constexpr sae::Index kD = 768, kM = 16384, kK = 32, kB = 1024;

struct Fixture {
  sae::TopKSae<float> model;
  sae::Mat<float> X;
  sae::TopKSae<float>::State state;
  sae::Parameters<float> grads;

  Fixture() {
    sae::SaeConfig cfg;
    cfg.d_in = kD;
    cfg.d_sae = kM;
    cfg.k = kK;
    model = sae::TopKSae<float>(cfg);
    sae::detail::Rng rng(1);
    X.resize(kD, kB);
    for (sae::Index i = 0; i < X.size(); ++i) X.data()[i] = static_cast<float>(rng.normal());
    model.initialize(X, 2);
    model.forward_backward(X, grads, state);  // sizes every buffer
  }
};

Fixture& fixture() {
  static Fixture f;
  return f;
}

void set_counters(benchmark::State& st, double flops_per_iter) {
  st.counters["tokens_per_s"] = benchmark::Counter(static_cast<double>(kB) * static_cast<double>(st.iterations()),
                                                   benchmark::Counter::kIsRate);
  if (flops_per_iter > 0)
    st.counters["GFLOP/s"] = benchmark::Counter(flops_per_iter * static_cast<double>(st.iterations()) * 1e-9,
                                                benchmark::Counter::kIsRate);
}

void BM_EncoderGemm(benchmark::State& st) {
  auto& f = fixture();
  sae::Mat<float> Z(kM, kB);
  for (auto _ : st) {
    Z.noalias() = f.model.params().W_enc.transpose() * f.X;
    benchmark::DoNotOptimize(Z.data());
  }
  set_counters(st, 2.0 * kB * kD * kM);
}
BENCHMARK(BM_EncoderGemm)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_EncodeTopK(benchmark::State& st) {  // blocked product + per-token top-k selection
  auto& f = fixture();
  for (auto _ : st) {
    f.model.encode(f.X, f.state.codes, f.state);
    benchmark::DoNotOptimize(f.state.codes.values.data());
  }
  set_counters(st, 2.0 * kB * kD * kM);
}
BENCHMARK(BM_EncodeTopK)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_SparseDecode(benchmark::State& st) {
  auto& f = fixture();
  f.model.encode(f.X, f.state.codes, f.state);
  for (auto _ : st) {
    f.model.decode(f.state.codes, f.state.X_hat);
    benchmark::DoNotOptimize(f.state.X_hat.data());
  }
  set_counters(st, 0);
}
BENCHMARK(BM_SparseDecode)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_ForwardBackward(benchmark::State& st) {  // the whole step but the optimizer
  auto& f = fixture();
  for (auto _ : st) {
    auto r = f.model.forward_backward(f.X, f.grads, f.state);
    benchmark::DoNotOptimize(r.total);
  }
  set_counters(st, 2.0 * kB * kD * kM);
}
BENCHMARK(BM_ForwardBackward)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_Adam(benchmark::State& st) {
  auto& f = fixture();
  sae::Adam<float> adam(sae::AdamOptions{}, f.model.params());
  for (auto _ : st) {
    adam.step(f.model.params(), f.grads, 1e-6);
    benchmark::DoNotOptimize(f.model.params().W_enc.data());
  }
  set_counters(st, 0);
}
BENCHMARK(BM_Adam)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace
