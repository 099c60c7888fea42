// Kernel micro-benchmarks: the pieces of one training step, each timed alone, at the shapes of
// issue 5 (d = 768, m = 16384, k = 32) with B = 1024 tokens (so one run stays short: about
// 10 s with --benchmark_min_time=0.2 on 2 cores, 1 GB of memory).
//
//   cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=Release -DSAE_BUILD_BENCHMARKS=ON
//   cmake --build build-bench --target bench_kernels -j2
//   OMP_NUM_THREADS=2 build-bench/bin/bench_kernels --benchmark_min_time=0.2
//
// What each benchmark times (all threads unless said otherwise; X is d x B, N(0, 1)):
//
//   EncoderGemm/<backend>   Z = W_enc^T X, the whole m x B product in one call of
//                           gemm::product_tn, once per backend this build has (eigen, blas)
//   FusedTopC/<backend>     kernels::fused_top_c, default Tiling: the product tile by tile and
//                           each token's top-k selected while its tile is in cache
//   PlainTopC               kernels::plain_top_c: a product per 256 tokens, then a partial sort
//   SelectOnly              the TopCHeap selection of fused_top_c over a precomputed m x B
//                           pre-activation matrix (chunks of Tiling::chunk_latents), i.e. the
//                           selection without the product; it reads Z from memory where the
//                           fused kernel reads it from cache, so it is an upper bound
//   EncodeTopK              TopKSae::encode (fused encoder + compaction into SparseCodes)
//   SparseDecode            kernels::decode from the SparseCodes
//   LatentGroupsBuild       kernels::LatentGroups::build (the counting sort by latent)
//   DecoderBackward         sparse kernels::decoder_backward (grad codes, W_dec, b_dec)
//   EncoderBackward         sparse kernels::encoder_backward (W_enc, b_enc, b_dec)
//   ForwardBackward         TopKSae::forward_backward (everything but the optimizer)
//   Adam                    Adam<float>::step over all parameters
//   Step/TopK, Step/BatchTopK
//                           a whole training step as train() runs it: forward_backward,
//                           project_decoder_gradient, Adam, after_update (AuxK adds nothing:
//                           no latent is dead this early)
//
// Every benchmark makes one untimed warm-up call first (first touch of its buffers; Google
// Benchmark 1.7 has no warm-up option). With --benchmark_min_time=0.2 the ~0.2 s benchmarks run
// one or two timed iterations: for steadier numbers raise it (e.g. 1) or add
// --benchmark_repetitions=3.
//
// Counters: tokens_per_s (B tokens per iteration, per second of wall time). GFLOP/s for the
// benchmarks that contain the encoder product: 2 B d m flops per iteration (for the encoders and
// whole steps this is the encoder-product-equivalent rate, directly comparable with
// EncoderGemm: the step's other work is O(B k d + d m)).
//
// The context printed at the start names the encoder backend the fused encoder uses
// (gemm::encoder_backend: SAE_GEMM, else the build's measured default).
#include <sae/sae.hpp>

#include "bench_data.hpp"

#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace {

using sae::Index;
using sae::Mat;
using sae::Vec;

constexpr Index kD = 768, kM = 16384, kK = 32, kB = 1024;
constexpr double kProductFlops = 2.0 * kB * kD * kM;

sae::SaeConfig shape() {
  sae::SaeConfig cfg;
  cfg.d_in = kD;
  cfg.d_sae = kM;
  cfg.k = kK;
  return cfg;
}

using bench::gaussian;

/// A TopK model after one forward/backward pass: its codes, gradients and scratch are the
/// operands of the kernel benchmarks (which only read the model).
struct Kernels {
  sae::TopKSae<float> model;
  Mat<float> X;
  sae::TopKSae<float>::State state;
  sae::Parameters<float> grads;

  Kernels() : model(shape()), X(gaussian(kD, kB, 1)) {
    model.initialize(X, 2);
    model.normalize_decoder();
    model.forward_backward(X, grads, state);  // sizes every buffer, fills codes and grad_codes
  }
  const sae::Parameters<float>& p() const { return model.params(); }
};

Kernels& kernels() {
  static Kernels k;
  return k;
}

/// A model and its optimizer after one warm-up training step, for the whole-step benchmarks.
template <class Model>
struct Training {
  Model model;
  Mat<float> X;
  typename Model::State state;
  sae::Parameters<float> grads;
  sae::Adam<float> adam;
  std::int64_t step_no = 0;

  Training() : model(shape()), X(gaussian(kD, kB, 3)) {
    model.initialize(X, 4);
    model.normalize_decoder();
    adam = sae::Adam<float>(sae::AdamOptions{}, model.params());
    step();
  }
  double step() {
    const auto r = model.forward_backward(X, grads, state, step_no++);
    model.project_decoder_gradient(grads);
    adam.step(model.params(), grads, 2e-4);
    model.after_update(state);
    return r.total;
  }
};

template <class Model>
Training<Model>& training() {
  static Training<Model> t;
  return t;
}

void set_counters(benchmark::State& st, double flops_per_iter) {
  const auto iters = static_cast<double>(st.iterations());
  st.counters["tokens_per_s"] = benchmark::Counter(static_cast<double>(kB) * iters, benchmark::Counter::kIsRate);
  if (flops_per_iter > 0)
    st.counters["GFLOP/s"] = benchmark::Counter(flops_per_iter * iters * 1e-9, benchmark::Counter::kIsRate);
}

/// Per-token slots of a top-c selection (B x cap values and latents, B counts).
struct Slots {
  std::vector<float> values;
  std::vector<std::int32_t> indices;
  std::vector<Index> count;
  explicit Slots(Index cap)
      : values(static_cast<std::size_t>(kB * cap)),
        indices(static_cast<std::size_t>(kB * cap)),
        count(static_cast<std::size_t>(kB)) {}
};

// ---------------------------------------------------------------------------------------------
// The encoder: product, fused product + selection, plain path, selection alone.

void BM_EncoderGemm(benchmark::State& st, sae::gemm::Backend backend) {
  auto& f = kernels();
  Mat<float> Z(kM, kB);
  const Mat<float>& W = f.p().W_enc;
  auto run = [&] {
    if (backend == sae::gemm::Backend::Blas) sae::gemm::set_blas_threads(sae::num_threads());
    sae::gemm::product_tn(backend, kD, kM, kB, W.data(), kD, f.X.data(), kD, Z.data(), kM);
  };
  run();  // warm-up: first touch of Z, the library's own buffers and threads
  for (auto _ : st) {
    run();
    benchmark::DoNotOptimize(Z.data());
    benchmark::ClobberMemory();
  }
  set_counters(st, kProductFlops);
}

void BM_FusedTopC(benchmark::State& st, sae::gemm::Backend backend) {
  auto& f = kernels();
  Slots out(kK);
  sae::kernels::FusedScratch<float> scratch;
  const sae::gemm::Tiling tiling;
  auto run = [&] {
    sae::kernels::fused_top_c(f.p(), f.state.c, f.X, kK, backend, sae::kernels::Precision::Native, tiling, scratch,
                              out.values.data(), out.indices.data(), out.count.data());
  };
  run();  // warm-up: sizes the tiles
  for (auto _ : st) {
    run();
    benchmark::DoNotOptimize(out.values.data());
    benchmark::ClobberMemory();
  }
  set_counters(st, kProductFlops);
}

void BM_PlainTopC(benchmark::State& st) {
  auto& f = kernels();
  Slots out(kK);
  Mat<float> Z;
  auto run = [&] {
    sae::kernels::plain_top_c(f.p(), f.state.c, f.X, kK, Z, out.values.data(), out.indices.data(), out.count.data());
  };
  run();  // warm-up: sizes the block buffer
  for (auto _ : st) {
    run();
    benchmark::DoNotOptimize(out.values.data());
    benchmark::ClobberMemory();
  }
  set_counters(st, kProductFlops);
}

void BM_SelectOnly(benchmark::State& st) {
  auto& f = kernels();
  Mat<float> Z;
  Z.noalias() = f.p().W_enc.transpose() * f.X;  // m x B products (bias added in the scan), outside the timing
  Slots out(kK);
  const Index chunk = sae::gemm::Tiling{}.chunk_latents;
  auto run = [&] {
    SAE_OMP(parallel for schedule(static))
    for (Index t = 0; t < kB; ++t) {
      sae::kernels::TopCHeap<float> h{out.values.data() + t * kK, out.indices.data() + t * kK, kK};
      for (Index j0 = 0; j0 < kM; j0 += chunk)
        h.offer_run(Z.data() + t * kM + j0, f.state.c.data() + j0, std::min(chunk, kM - j0),
                    static_cast<std::int32_t>(j0));
      h.sort_by_latent();
      out.count[static_cast<std::size_t>(t)] = h.size;
    }
  };
  run();  // warm-up
  for (auto _ : st) {
    run();
    benchmark::DoNotOptimize(out.values.data());
    benchmark::ClobberMemory();
  }
  set_counters(st, 0);
}

void BM_EncodeTopK(benchmark::State& st) {
  auto& f = kernels();
  sae::SparseCodes<float> codes;
  sae::TopKSae<float>::State s;
  f.model.encode(f.X, codes, s);  // warm-up: sizes the codes and tiles
  for (auto _ : st) {
    f.model.encode(f.X, codes, s);
    benchmark::DoNotOptimize(codes.values.data());
  }
  set_counters(st, kProductFlops);
}

// ---------------------------------------------------------------------------------------------
// The sparse kernels (operands from the fixture's forward pass). The backward kernels
// accumulate (+=) into their outputs, as in a step; the outputs are not re-zeroed between
// iterations (the zeroing is part of forward_backward, not of these kernels).

void BM_SparseDecode(benchmark::State& st) {
  auto& f = kernels();
  Mat<float> X_hat(kD, kB);
  sae::kernels::decode(f.p(), f.state.codes, X_hat);  // warm-up
  for (auto _ : st) {
    sae::kernels::decode(f.p(), f.state.codes, X_hat);
    benchmark::DoNotOptimize(X_hat.data());
    benchmark::ClobberMemory();
  }
  set_counters(st, 0);
}

void BM_LatentGroupsBuild(benchmark::State& st) {
  auto& f = kernels();
  sae::kernels::LatentGroups groups;
  groups.build(f.state.codes);
  for (auto _ : st) {
    groups.build(f.state.codes);
    benchmark::DoNotOptimize(groups.entry.data());
    benchmark::ClobberMemory();
  }
  set_counters(st, 0);
}

void BM_DecoderBackward(benchmark::State& st) {
  auto& f = kernels();
  sae::Parameters<float> grads(kD, kM);
  std::vector<float> grad_codes(f.state.codes.values.size(), 0.0f);
  sae::kernels::decoder_backward(f.p(), f.state.codes, f.state.groups, f.state.grad_xhat, grad_codes, grads);
  for (auto _ : st) {
    sae::kernels::decoder_backward(f.p(), f.state.codes, f.state.groups, f.state.grad_xhat, grad_codes, grads);
    benchmark::DoNotOptimize(grads.W_dec.data());
    benchmark::ClobberMemory();
  }
  set_counters(st, 0);
}

void BM_EncoderBackward(benchmark::State& st) {
  auto& f = kernels();
  sae::Parameters<float> grads(kD, kM);
  Vec<float> dz_sum(kM);
  const bool b_dec_in = f.model.config().apply_b_dec_to_input;
  sae::kernels::encoder_backward(f.p(), b_dec_in, f.state.codes, f.state.groups, f.X, f.state.grad_codes, grads,
                                 dz_sum);
  for (auto _ : st) {
    sae::kernels::encoder_backward(f.p(), b_dec_in, f.state.codes, f.state.groups, f.X, f.state.grad_codes, grads,
                                   dz_sum);
    benchmark::DoNotOptimize(grads.W_enc.data());
    benchmark::ClobberMemory();
  }
  set_counters(st, 0);
}

void BM_ForwardBackward(benchmark::State& st) {  // the whole step but the optimizer
  auto& f = kernels();
  sae::TopKSae<float>::State s;
  sae::Parameters<float> grads;
  f.model.forward_backward(f.X, grads, s);  // size this state's buffers outside the timing
  for (auto _ : st) {
    auto r = f.model.forward_backward(f.X, grads, s);
    benchmark::DoNotOptimize(r.total);
  }
  set_counters(st, kProductFlops);
}

// ---------------------------------------------------------------------------------------------
// The optimizer and whole training steps.

void BM_Adam(benchmark::State& st) {
  auto& f = kernels();
  sae::Parameters<float> params = f.p();  // a copy: the other benchmarks keep their weights
  sae::Adam<float> adam(sae::AdamOptions{}, params);
  adam.step(params, f.grads, 1e-6);  // warm-up
  for (auto _ : st) {
    adam.step(params, f.grads, 1e-6);
    benchmark::DoNotOptimize(params.W_enc.data());
    benchmark::ClobberMemory();
  }
  set_counters(st, 0);
}

template <class Model>
void BM_Step(benchmark::State& st) {
  auto& t = training<Model>();
  for (auto _ : st) {
    const double loss = t.step();
    benchmark::DoNotOptimize(loss);
  }
  set_counters(st, kProductFlops);
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;

  // Registered here, in this order: the encoder (product per backend, fused per backend, plain,
  // selection alone, the model's encode), the sparse kernels, the optimizer, whole steps.
  auto add = [](const std::string& name, auto&& fn, auto... args) {
    benchmark::RegisterBenchmark(name.c_str(), fn, args...)->Unit(benchmark::kMillisecond)->UseRealTime();
  };
  for (const auto b : sae::gemm::available_backends())
    add(std::string("BM_EncoderGemm/") + sae::gemm::backend_name(b), BM_EncoderGemm, b);
  for (const auto b : sae::gemm::available_backends())
    add(std::string("BM_FusedTopC/") + sae::gemm::backend_name(b), BM_FusedTopC, b);
  add("BM_PlainTopC", BM_PlainTopC);
  add("BM_SelectOnly", BM_SelectOnly);
  add("BM_EncodeTopK", BM_EncodeTopK);
  add("BM_SparseDecode", BM_SparseDecode);
  add("BM_LatentGroupsBuild", BM_LatentGroupsBuild);
  add("BM_DecoderBackward", BM_DecoderBackward);
  add("BM_EncoderBackward", BM_EncoderBackward);
  add("BM_ForwardBackward", BM_ForwardBackward);
  add("BM_Adam", BM_Adam);
  add("BM_Step/TopK", BM_Step<sae::TopKSae<float>>);
  add("BM_Step/BatchTopK", BM_Step<sae::BatchTopKSae<float>>);

  benchmark::AddCustomContext("sae_threads", std::to_string(sae::num_threads()));
  benchmark::AddCustomContext("sae_blas_linked", sae::gemm::blas_linked() ? "yes" : "no");
  benchmark::AddCustomContext("sae_encoder_backend", sae::gemm::backend_name(sae::gemm::encoder_backend()));
  benchmark::AddCustomContext("sae_default_backend", sae::gemm::backend_name(sae::gemm::default_backend()));

  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
