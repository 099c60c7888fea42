// sae train: train an SAE on activations from a .npy file and save an SAELens directory.
#pragma once

#include "common.hpp"

namespace sae_cli {

struct TrainArgs {
  fs::path data, out;
  std::string arch = "topk";
  sae::Index d_sae = 0;
  sae::Index k = 32;
  double l1 = 0.3;
  std::int64_t l1_warmup = -1;
  std::optional<double> l0;              // jumprelu: lambda of lambda*L0 or of the target-L0 penalty
  std::optional<double> target_l0;       // jumprelu: use the target-L0 penalty
  std::int64_t l0_warmup = -1;
  double bandwidth = sae::JumpReLU{}.bandwidth;
  double threshold_init = sae::JumpReLU{}.initial_threshold;
  double ortho = sae::Orthogonality{}.coefficient;
  sae::Index chunks = sae::Orthogonality{}.chunks;
  sae::Index aux_k = 0;                  // 0: d_in / 2
  double aux_coeff = sae::AuxK{}.coefficient;
  std::int64_t dead_tokens = sae::AuxK{}.dead_tokens;
  std::optional<double> lr;
  sae::TrainOptions opt;
  int threads = 0;
};

/// Default peak learning rate: 2e-4 / sqrt(m / 2^14) (the 1/sqrt(m) scaling of Gao et al.
/// 2024, Fig. 3, as dictionary_learning uses it), which gives 1.1e-3 at m = 512.
inline double default_lr(sae::Index d_sae) { return 2e-4 / std::sqrt(static_cast<double>(d_sae) / 16384.0); }

/// Trains @p model, then writes the SAE directory, its train_log.jsonl and the JSON result.
template <class Model>
int train_and_save(Model& model, const TrainArgs& a, const Activations& X, json meta) {
  sae::ShuffledBatches<float> batches(X.data(), X.d_in(), X.tokens(), a.opt.batch, a.opt.seed ^ 0x5ae5ae5aULL);
  std::vector<std::string> log_lines;
  const sae::TrainResult r = sae::train(model, batches, a.opt, [&](const sae::TrainProgress& p) {
    char line[256];
    std::snprintf(line, sizeof line,
                  "step %lld/%lld  loss %.5g  l0 %.2f  fvu %.4f  dead %.1f%%  lr %.2e  %s tok/s  ETA %s",
                  static_cast<long long>(p.step), static_cast<long long>(p.steps), p.loss, p.l0, p.fvu,
                  100.0 * p.dead_fraction, p.lr, human_rate(p.tokens_per_s).c_str(),
                  human_seconds(p.eta_seconds).c_str());
    std::cerr << line << std::endl;
    json j = {{"step", p.step}, {"tokens", p.tokens}, {"loss", p.loss}, {"l0", p.l0}, {"fvu", p.fvu},
              {"dead_fraction", p.dead_fraction}, {"lr", p.lr}, {"seconds", p.seconds},
              {"tokens_per_s", p.tokens_per_s}};
    for (const auto& [name, v] : p.terms) j[name] = v;
    log_lines.push_back(j.dump());
  });
  meta["training"]["tokens"] = r.tokens;
  meta["training"]["seconds"] = r.seconds;
  model.config().metadata = meta;
  sae::save_sae(a.out, model);
  std::string log;
  for (const auto& l : log_lines) log += l + "\n";
  sae::io::write_file_atomic(a.out / "train_log.jsonl",
                             std::span<const std::byte>(reinterpret_cast<const std::byte*>(log.data()), log.size()));
  std::cerr << "sae train: saved " << a.out.string() << "\n";
  print_result({{"out", a.out.string()},
                {"architecture", std::string(sae::architecture_name(model.config().architecture))},
                {"d_in", model.d_in()},
                {"d_sae", model.d_sae()},
                {"k", model.config().k},
                {"steps", r.steps},
                {"tokens", r.tokens},
                {"seconds", r.seconds},
                {"tokens_per_s", r.seconds > 0 ? static_cast<double>(r.tokens) / r.seconds : 0.0},
                {"final_loss", r.final_loss},
                {"l0", r.final_l0},
                {"fvu", r.final_fvu},
                {"dead_fraction", r.final_dead_fraction},
                {"threads", sae::num_threads()}});
  return 0;
}

/// Default lambda for JumpReLU: 1e-2 for lambda * L0 and 1.0 for the target-L0 penalty
/// (measured on data of mean squared norm about 1; see docs/variants.md).
inline double default_l0(const TrainArgs& a) { return a.target_l0 ? 1.0 : 1e-2; }

inline int run_train(TrainArgs a) {
  sae::set_num_threads(a.threads);
  const sae::Architecture arch = sae::parse_architecture(a.arch);
  const Activations X(a.data);
  if (a.d_sae <= 0) throw std::invalid_argument("--d-sae must be positive");
  if (a.opt.batch <= 0) throw std::invalid_argument("--batch must be positive");
  if (a.opt.steps <= 0) throw std::invalid_argument("--steps must be positive");
  sae::SaeConfig cfg;
  cfg.d_in = X.d_in();
  cfg.d_sae = a.d_sae;
  cfg.architecture = arch;
  const bool uses_k = sae::architecture_uses_k(arch);
  cfg.k = uses_k ? a.k : 0;
  if (uses_k && (a.k <= 0 || a.k > a.d_sae))
    throw std::invalid_argument("--k must be in [1, d_sae=" + std::to_string(a.d_sae) + "], got " + std::to_string(a.k));
  if (!(a.bandwidth > 0)) throw std::invalid_argument("--bandwidth must be positive");
  if (a.target_l0 && !(*a.target_l0 > 0)) throw std::invalid_argument("--target-l0 must be positive");
  if (a.chunks < 1) throw std::invalid_argument("--chunks must be at least 1");
  a.opt.lr = a.lr.value_or(default_lr(a.d_sae));
  a.opt.dead_tokens = a.dead_tokens;
  if (!(a.opt.lr > 0)) throw std::invalid_argument("--lr must be positive");
  std::cerr << "sae train: " << sae::architecture_name(arch) << " d_in " << cfg.d_in << " d_sae " << cfg.d_sae;
  if (uses_k) std::cerr << " k " << cfg.k;
  std::cerr << ", " << X.tokens() << " tokens from " << a.data.string() << ", " << a.opt.steps << " steps of "
            << a.opt.batch << ", lr " << a.opt.lr << ", " << sae::num_threads() << " threads\n";

  json meta = {{"libsae_version", sae::version_string}, {"dataset_path", a.data.string()}};
  json& tr = meta["training"];
  tr = {{"architecture", std::string(sae::architecture_name(arch))}, {"steps", a.opt.steps},
        {"batch", a.opt.batch}, {"lr", a.opt.lr}, {"seed", a.opt.seed},
        {"warmup_steps", a.opt.schedule().warmup_steps}, {"decay_steps", a.opt.schedule().decay_steps}};
  auto set_aux = [&](auto& model) {
    auto& aux = model.loss().template get<sae::AuxK>();
    aux.k_aux = a.aux_k;
    aux.coefficient = a.aux_coeff;
    aux.dead_tokens = a.dead_tokens;
    tr["aux_k"] = a.aux_k > 0 ? a.aux_k : std::max<sae::Index>(1, cfg.d_in / 2);
    tr["aux_coeff"] = a.aux_coeff;
    tr["dead_tokens"] = a.dead_tokens;
  };
  auto set_jumprelu = [&](auto& model) {
    model.activation().bandwidth = a.bandwidth;
    model.activation().initial_threshold = a.threshold_init;
    tr["bandwidth"] = a.bandwidth;
    tr["threshold_init"] = a.threshold_init;
  };
  const std::int64_t coeff_warmup = a.opt.steps / 20;
  switch (arch) {
    case sae::Architecture::Standard: {
      sae::ReluSae<float> model(cfg);
      auto& l1 = model.loss().get<sae::L1Sparsity>();
      l1.coefficient = a.l1;
      l1.warmup_steps = a.l1_warmup >= 0 ? a.l1_warmup : coeff_warmup;
      tr["l1_coefficient"] = l1.coefficient;
      tr["l1_warmup_steps"] = l1.warmup_steps;
      return train_and_save(model, a, X, meta);
    }
    case sae::Architecture::TopK: {
      sae::TopKSae<float> model(cfg);
      set_aux(model);
      return train_and_save(model, a, X, meta);
    }
    case sae::Architecture::BatchTopK: {
      sae::BatchTopKSae<float> model(cfg);
      set_aux(model);
      return train_and_save(model, a, X, meta);
    }
    case sae::Architecture::OrtSAE: {
      sae::OrtSae<float> model(cfg);
      set_aux(model);
      auto& o = model.loss().get<sae::Orthogonality>();
      o.coefficient = a.ortho;
      o.chunks = a.chunks;
      tr["ortho"] = a.ortho;
      tr["chunks"] = a.chunks;
      return train_and_save(model, a, X, meta);
    }
    case sae::Architecture::JumpReLU: {
      const double lam = a.l0.value_or(default_l0(a));
      const std::int64_t warm = a.l0_warmup >= 0 ? a.l0_warmup : coeff_warmup;
      tr["l0_coefficient"] = lam;
      tr["l0_warmup_steps"] = warm;
      if (a.target_l0) {
        sae::JumpReluTargetSae<float> model(cfg);
        set_jumprelu(model);
        auto& t = model.loss().get<sae::TargetL0>();
        t.coefficient = lam;
        t.target = *a.target_l0;
        t.warmup_steps = warm;
        tr["target_l0"] = *a.target_l0;
        return train_and_save(model, a, X, meta);
      }
      sae::JumpReluSae<float> model(cfg);
      set_jumprelu(model);
      auto& l0 = model.loss().get<sae::L0Sparsity>();
      l0.coefficient = lam;
      l0.warmup_steps = warm;
      return train_and_save(model, a, X, meta);
    }
  }
  throw std::invalid_argument("unsupported architecture");
}

inline CLI::App* add_train(CLI::App& app, Command& chosen) {
  auto a = std::make_shared<TrainArgs>();
  auto* c = app.add_subcommand("train", "Train an SAE on activations from a .npy file, save an SAELens directory");
  c->add_option("--data", a->data, "Activations .npy [tokens, d_in] (float32 or float16)")->required()->check(CLI::ExistingFile);
  c->add_option("--arch", a->arch, "Architecture: relu (= standard), topk, batchtopk, jumprelu or ortsae")
      ->capture_default_str()->check(CLI::IsMember({"relu", "standard", "topk", "batchtopk", "jumprelu", "ortsae"}));
  c->add_option("--d-sae", a->d_sae, "Number of latents")->required()->check(CLI::PositiveNumber);
  c->add_option("--k", a->k, "Active latents per token (topk; mean per token for batchtopk, ortsae)")->capture_default_str();
  c->add_option("--l1", a->l1, "L1 coefficient (relu)")->capture_default_str()->check(CLI::NonNegativeNumber);
  c->add_option("--l1-warmup", a->l1_warmup, "Steps of linear L1 warm-up (relu; default steps/20)");
  c->add_option("--l0", a->l0, "L0 coefficient lambda (jumprelu; default 1e-2, or 1.0 with --target-l0)")
      ->check(CLI::NonNegativeNumber);
  c->add_option("--target-l0", a->target_l0, "jumprelu: penalise lambda*(L0/target - 1)^2 instead of lambda*L0");
  c->add_option("--l0-warmup", a->l0_warmup, "Steps of linear L0-coefficient warm-up (jumprelu; default steps/20)");
  c->add_option("--bandwidth", a->bandwidth, "JumpReLU straight-through kernel width epsilon")->capture_default_str();
  c->add_option("--threshold-init", a->threshold_init, "JumpReLU initial threshold")->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  c->add_option("--ortho", a->ortho, "OrtSAE orthogonality coefficient gamma")->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  c->add_option("--chunks", a->chunks, "OrtSAE: random chunks of latents per step (cost m^2 d / K)")->capture_default_str();
  c->add_option("--aux-k", a->aux_k, "AuxK: dead latents used to reconstruct the residual (default d_in/2)");
  c->add_option("--aux-coeff", a->aux_coeff, "AuxK coefficient alpha (0 disables)")->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  c->add_option("--dead-tokens", a->dead_tokens, "Tokens without firing after which a latent is dead")
      ->capture_default_str()->check(CLI::PositiveNumber);
  c->add_option("--steps", a->opt.steps, "Training steps")->capture_default_str();
  c->add_option("--batch", a->opt.batch, "Tokens per step")->capture_default_str();
  c->add_option("--lr", a->lr, "Peak learning rate (default 2e-4/sqrt(d_sae/16384))");
  c->add_option("--warmup", a->opt.warmup_steps, "Steps of linear lr warm-up (default min(100, steps/10))");
  c->add_option("--decay", a->opt.decay_steps, "Final steps of linear lr decay (default steps/5)");
  c->add_option("--seed", a->opt.seed, "Seed for initialisation and batch order")->capture_default_str();
  c->add_option("--threads", a->threads, "Threads (default: all cores / OMP_NUM_THREADS)");
  c->add_option("--log-every", a->opt.log_every, "Progress line every N steps")->capture_default_str();
  c->add_option("--out", a->out, "Output SAE directory (SAELens layout)")->required();
  c->callback([a, &chosen] { chosen = [a] { return run_train(*a); }; });
  return c;
}

}  // namespace sae_cli
