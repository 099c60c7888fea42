// sae bench: training throughput and memory of one variant at a given shape, on random data, with
// the real training loop and the model `sae train` builds; plus the encoder-GEMM bound of this
// machine measured in the same run, so that tokens/s can be read as a fraction of it.
#pragma once

#include "common.hpp"
#include "train.hpp"

#include <algorithm>
#include <fstream>
#include <sstream>

#include <sae/core/gemm.hpp>
#include <sae/detail/random.hpp>

namespace sae_cli {

struct BenchArgs {
  std::string arch = "topk";
  sae::Index d_in = 768;
  sae::Index d_sae = 16384;
  sae::Index k = 32;
  sae::Index batch = 4096;
  std::int64_t steps = 5;
  std::int64_t warmup = 1;
  int threads = 0;
  std::uint64_t seed = 0;
  nlohmann::json options = nlohmann::json::object();  ///< the variant's own options, as `sae train`
  std::string gemm = "auto";
  std::string precision = "auto";
  bool no_bound = false;
};

/// A value in kB of /proc/self/status ("VmHWM", "VmRSS"), in MiB; -1 if unavailable.
inline double proc_status_mb(const std::string& key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind(key + ":", 0) == 0) {
      std::istringstream in(line.substr(key.size() + 1));
      double kb = -1;
      in >> kb;
      return kb >= 0 ? kb / 1024.0 : -1.0;
    }
  return -1.0;
}

/// CPU model name and whether it has AVX-512F, from /proc/cpuinfo.
inline json cpu_info() {
  std::ifstream f("/proc/cpuinfo");
  std::string line, model;
  bool avx512f = false, seen_flags = false;
  auto value = [](const std::string& l) {
    const auto c = l.find(':');
    std::string v = c == std::string::npos ? std::string() : l.substr(c + 1);
    v.erase(0, v.find_first_not_of(" \t"));
    return v;
  };
  while (std::getline(f, line)) {
    if (model.empty() && line.rfind("model name", 0) == 0) model = value(line);
    if (!seen_flags && line.rfind("flags", 0) == 0) {
      seen_flags = true;
      std::istringstream in(value(line));
      for (std::string flag; in >> flag;)
        if (flag == "avx512f") avx512f = true;
    }
  }
  return {{"model", model.empty() ? json(nullptr) : json(model)}, {"avx512f", avx512f}};
}

/// Batches for the benchmark: a fixed pool of N(0, 1) batches handed out in turn.
class BenchSource {
 public:
  BenchSource(sae::Index d_in, sae::Index batch, int pool, std::uint64_t seed) {
    sae::detail::Rng rng(seed ^ 0xbe7c4b3a5e11ULL);
    batches_.resize(static_cast<std::size_t>(pool));
    for (auto& X : batches_) {
      X.resize(d_in, batch);
      float* p = X.data();
      for (sae::Index i = 0, n = X.size(); i < n; ++i) p[i] = static_cast<float>(rng.normal());
    }
  }
  sae::Index d_in() const { return batches_.front().rows(); }
  const sae::Mat<float>& next() { return batches_[next_++ % batches_.size()]; }

 private:
  std::vector<sae::Mat<float>> batches_;
  std::size_t next_ = 0;
};

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

inline int run_bench(const BenchArgs& b) {
  const double baseline_mb = proc_status_mb("VmRSS");
  if (b.d_in <= 0) throw std::invalid_argument("--d-in must be positive");
  if (b.d_sae <= 0) throw std::invalid_argument("--d-sae must be positive");
  if (b.batch <= 0) throw std::invalid_argument("--batch must be positive");
  if (b.steps < 1) throw std::invalid_argument("--steps must be at least 1");
  if (b.warmup < 0) throw std::invalid_argument("--warmup must be >= 0");
  if (b.threads < 0) throw std::invalid_argument("--threads must be >= 0");

  // The settings of `sae train` with the benchmark's shape: same defaults (lr, AuxK, ...).
  TrainArgs a;
  a.arch = b.arch;
  a.d_sae = b.d_sae;
  a.k = b.k;
  a.options = b.options;
  a.opt.batch = b.batch;
  a.opt.steps = b.warmup + b.steps;
  a.opt.seed = b.seed;
  a.opt.log_every = 0;  // one progress report, after the last step
  a.threads = b.threads;
  const sae::SaeConfig cfg = sae::training_config(a, b.d_in);

  sae::set_num_threads(a.threads);
  if (b.gemm != "auto") sae::gemm::set_encoder_backend(sae::gemm::parse_backend(b.gemm));
  if (b.precision != "auto") sae::kernels::set_encoder_precision(sae::kernels::parse_precision(b.precision));
  // bf16 products: the TopK family's (exact) candidate proposals, or the dense variants' mixed precision
  const bool bf16 = cfg.k > 0 ? sae::kernels::encoder_precision<float>() == sae::kernels::Precision::BFloat16
                              : sae::kernels::dense_bf16<float>();
  const char* precision = bf16 ? "bf16" : "fp32";
  const int threads = sae::num_threads();
  const bool uses_k = cfg.k > 0;
  std::cerr << "sae bench: " << cfg.architecture << " d_in " << cfg.d_in << " d_sae " << cfg.d_sae;
  if (uses_k) std::cerr << " k " << cfg.k;
  std::cerr << ", batch " << b.batch << ", " << b.warmup << " warm-up + " << b.steps << " timed steps, " << threads
            << " threads, gemm " << sae::gemm::backend_name(sae::gemm::encoder_backend()) << ", encoder precision "
            << precision << "\n";

  const int pool = static_cast<int>(std::min<std::int64_t>(4, a.opt.steps));
  BenchSource source(cfg.d_in, b.batch, pool, b.seed);

  using clock = std::chrono::steady_clock;
  std::vector<double> step_seconds;
  double peak_mb = -1, final_loss = 0, final_l0 = 0;
  json tr = json::object();  // the settings the model was built with (metadata of `sae train`)
  sae::with_training_model(a, cfg, tr, [&](auto& model) {
    sae::TrainState<float> st;
    auto last = clock::now();
    const sae::TrainResult r = sae::train_from(
        model, source, a.opt, st, [](const sae::TrainProgress&) {},
        [&](const sae::TrainState<float>& s) {
          const auto now = clock::now();
          const double dt = std::chrono::duration<double>(now - last).count();
          last = now;
          const bool timed = s.step > b.warmup;
          if (timed) step_seconds.push_back(dt);
          char line[160];
          if (timed)
            std::snprintf(line, sizeof line, "sae bench: step %lld/%lld  %.4f s  %s tok/s",
                          static_cast<long long>(s.step - b.warmup), static_cast<long long>(b.steps), dt,
                          human_rate(static_cast<double>(b.batch) / dt).c_str());
          else
            std::snprintf(line, sizeof line, "sae bench: warm-up step %lld/%lld  %.4f s",
                          static_cast<long long>(s.step), static_cast<long long>(b.warmup), dt);
          std::cerr << line << std::endl;
        });
    peak_mb = proc_status_mb("VmHWM");
    final_loss = r.final_loss;
    final_l0 = r.final_l0;
    return 0;
  });

  const double d = static_cast<double>(cfg.d_in), m = static_cast<double>(cfg.d_sae);
  const double flop_per_token = 2.0 * d * m;  // encoder product W_enc^T x
  const double sec = median(step_seconds);
  const double tokens_per_s = static_cast<double>(b.batch) / sec;
  const sae::gemm::Backend used = sae::gemm::encoder_backend();

  json result = {{"arch", b.arch},
                 {"architecture", cfg.architecture},
                 {"d_in", cfg.d_in},
                 {"d_sae", cfg.d_sae},
                 {"k", cfg.k},
                 {"batch", b.batch},
                 {"steps", b.steps},
                 {"warmup", b.warmup},
                 {"threads", threads},
                 {"gemm_backend", sae::gemm::backend_name(used)},
                 {"encoder_precision", precision},
                 {"tokens_per_s", tokens_per_s},
                 {"seconds_per_step", sec},
                 {"step_seconds", step_seconds},
                 {"peak_rss_mb", peak_mb},
                 {"baseline_rss_mb", baseline_mb},
                 {"training_mb", peak_mb - baseline_mb},
                 {"encoder_gflop_per_s", flop_per_token * static_cast<double>(b.batch) / sec * 1e-9},
                 {"final_loss", final_loss},
                 {"l0", final_l0},
                 {"gemm_default", sae::gemm::backend_name(sae::gemm::default_backend())},
                 {"cpu", cpu_info()}};

  if (!b.no_bound) {
    std::cerr << "sae bench: measuring the encoder GEMM bound (" << cfg.d_sae << " x " << b.batch << " x " << cfg.d_in
              << ")" << std::endl;
    sae::gemm::Tiling tiling;  // the fused encoder's default tiles, cut to the shape as it cuts them
    tiling.block_tokens = std::min(tiling.block_tokens, b.batch);
    tiling.chunk_latents = std::min(tiling.chunk_latents, cfg.d_sae);
    json gemms = json::array();
    double best = 0;
    for (const sae::gemm::Backend be : sae::gemm::available_backends()) {
      const double whole = sae::gemm::measure_whole(be, cfg.d_in, cfg.d_sae, b.batch);
      const double tiles = sae::gemm::measure_tiled(be, cfg.d_in, cfg.d_sae, b.batch, tiling);
      best = std::max({best, whole, tiles});
      gemms.push_back(
          {{"backend", sae::gemm::backend_name(be)}, {"whole_gflop_per_s", whole}, {"tiles_gflop_per_s", tiles}});
      char line[160];
      std::snprintf(line, sizeof line,
                    "sae bench: %s GEMM: whole product %.1f GFLOP/s, tiles of %lld latents x %lld tokens %.1f GFLOP/s",
                    sae::gemm::backend_name(be), whole, static_cast<long long>(tiling.chunk_latents),
                    static_cast<long long>(tiling.block_tokens), tiles);
      std::cerr << line << std::endl;
    }
    if (sae::gemm::bf16_hardware()) {  // the bf16 product; part of the bound when the run used it
      const double whole = sae::gemm::measure_whole_bf16(cfg.d_in, cfg.d_sae, b.batch);
      const double tiles = sae::gemm::measure_tiled_bf16(cfg.d_in, cfg.d_sae, b.batch, tiling);
      if (bf16) best = std::max({best, whole, tiles});
      gemms.push_back({{"backend", "dnnl-bf16"}, {"whole_gflop_per_s", whole}, {"tiles_gflop_per_s", tiles}});
      char line[256];
      std::snprintf(line, sizeof line,
                    "sae bench: dnnl bf16 GEMM: whole product %.1f GFLOP/s, tiles of %lld latents x %lld tokens %.1f "
                    "GFLOP/s%s",
                    whole, static_cast<long long>(tiling.chunk_latents), static_cast<long long>(tiling.block_tokens),
                    tiles, bf16 ? "" : " (not used by this run, not in the bound)");
      std::cerr << line << std::endl;
    }
    const double bound = best * 1e9 / flop_per_token;
    result["gemm"] = gemms;
    result["gemm_tile"] = {{"latents", tiling.chunk_latents}, {"tokens", tiling.block_tokens}};
    result["gemm_gflop_per_s"] = best;
    result["gemm_bound_tokens_per_s"] = bound;
    result["fraction_of_gemm_bound"] = tokens_per_s / bound;
  }
  char line[200];
  std::snprintf(line, sizeof line, "sae bench: %s tok/s (median step %.4f s), encoder %.1f GFLOP/s, peak RSS %.0f MB",
                human_rate(tokens_per_s).c_str(), sec, result["encoder_gflop_per_s"].get<double>(), peak_mb);
  std::cerr << line;
  if (!b.no_bound) {
    std::snprintf(line, sizeof line, ", %.1f%% of the GEMM bound",
                  100.0 * result["fraction_of_gemm_bound"].get<double>());
    std::cerr << line;
  }
  std::cerr << std::endl;
  print_result(result);
  return 0;
}

inline CLI::App* add_bench(CLI::App& app, Command& chosen) {
  auto b = std::make_shared<BenchArgs>();
  auto* c = app.add_subcommand(
      "bench",
      "Training throughput and memory of one variant on random data (the `sae train` model and loop), and the "
      "encoder-GEMM bound of this machine");
  add_arch_option(c, b->arch);
  c->add_option("--d-in", b->d_in, "Input dimension d")->capture_default_str();
  c->add_option("--d-sae", b->d_sae, "Number of latents m")->capture_default_str();
  c->add_option("--k", b->k, "Active latents per token (variants that use k: see sae variants)")->capture_default_str();
  c->add_option("--batch", b->batch, "Tokens per step")->capture_default_str();
  c->add_option("--steps", b->steps, "Timed steps (tokens_per_s is batch / the median step time)")
      ->capture_default_str();
  c->add_option("--warmup", b->warmup, "Untimed steps first (the first one initialises the model)")
      ->capture_default_str();
  c->add_option("--threads", b->threads, "Threads (default: all cores / OMP_NUM_THREADS)");
  c->add_option("--seed", b->seed, "Seed of the random data and the initialisation")->capture_default_str();
  add_variant_options(c, b->options);
  c->add_option("--gemm", b->gemm, "Encoder GEMM backend: auto (measured, or $SAE_GEMM), eigen, blas or dnnl")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "eigen", "blas", "dnnl"}));
  c->add_option("--precision", b->precision,
                "Precision of the products: as `sae train --precision` (TopK family: bf16 proposals, same codes; "
                "relu, jumprelu: bf16 mixed precision)")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "fp32", "bf16"}));
  c->add_flag("--no-bound", b->no_bound, "Skip measuring the encoder-GEMM bound");
  c->footer(
      "JSON: arch, d_in, d_sae, k, batch, steps, warmup, threads, gemm_backend, encoder_precision, tokens_per_s, "
      "seconds_per_step "
      "(median), step_seconds, peak_rss_mb (VmHWM after the timed steps), baseline_rss_mb, training_mb, "
      "encoder_gflop_per_s (2*batch*d_in*d_sae encoder flops per step / median step time), gemm_default, "
      "cpu; unless --no-bound: gemm (per backend: whole product and fused-encoder tiles GFLOP/s; dnnl-bf16: "
      "the bf16 product, where the CPU has bf16 units, in the bound when the run used it), gemm_tile, "
      "gemm_gflop_per_s (the best), gemm_bound_tokens_per_s, fraction_of_gemm_bound. MB = 2^20 bytes.");
  c->callback([b, &chosen] { chosen = [b] { return run_bench(*b); }; });
  return c;
}

}  // namespace sae_cli
