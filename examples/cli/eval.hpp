// sae eval: metrics of an SAE directory on activations.
#pragma once

#include "common.hpp"

namespace sae_cli {

struct EvalArgs {
  fs::path sae_dir, data;
  std::optional<fs::path> target;
  std::optional<fs::path> features;
  sae::Index limit = 0;
  sae::Index batch = 4096;
  int threads = 0;
};

inline int run_eval(const EvalArgs& a) {
  sae::set_num_threads(a.threads);
  const auto t0 = std::chrono::steady_clock::now();
  const sae::AnySae model = sae::load_sae(a.sae_dir);
  const Activations X(a.data);
  model.check_d_in(X.d_in(), a.data.string(), a.sae_dir);
  std::optional<Activations> Y;
  if (model.is_transcoder() && !a.target)
    throw std::invalid_argument(a.sae_dir.string() + " is a transcoder (d_out=" + std::to_string(model.d_out()) +
                                "): give --target, the activations it predicts for --data's");
  if (a.target) {
    if (!model.is_transcoder())
      throw std::invalid_argument("--target is for transcoders; " + a.sae_dir.string() +
                                  " is an SAE (it reconstructs --data itself)");
    Y.emplace(*a.target);
    if (Y->d_in() != model.d_out())
      throw std::invalid_argument(a.target->string() + " has d=" + std::to_string(Y->d_in()) +
                                  " but the transcoder in " + a.sae_dir.string() +
                                  " has d_out=" + std::to_string(model.d_out()));
    if (Y->tokens() != X.tokens())
      throw std::invalid_argument(a.target->string() + " has " + std::to_string(Y->tokens()) + " rows but " +
                                  a.data.string() + " has " + std::to_string(X.tokens()) +
                                  " (targets pair with inputs row by row)");
  }
  std::optional<Activations> F;
  if (a.features) {
    F.emplace(*a.features);
    if (F->d_in() != model.d_out())
      throw std::invalid_argument(a.features->string() + " has feature dimension " + std::to_string(F->d_in()) +
                                  " but the SAE's decoder has " + std::to_string(model.d_out()));
  }
  if (a.batch <= 0) throw std::invalid_argument("--batch must be positive");
  const sae::Index n = a.limit > 0 ? std::min(a.limit, X.tokens()) : X.tokens();
  std::cerr << "sae eval: " << a.sae_dir.string() << " on " << n << " tokens of " << a.data.string() << "\n";
  sae::EvalMetrics r;
  try {
    r = std::visit(
        [&](const auto& m) { return sae::evaluate(m, X.matrix(), Y ? Y->matrix() : X.matrix(), n, a.batch); }, model);
  } catch (const sae::NumericalError& e) {
    const std::string what = e.what();
    const bool in_targets = what.rfind("targets: ", 0) == 0;
    throw sae::NumericalError((in_targets ? a.target->string() + what.substr(7) : a.data.string() + ": " + what));
  }
  if (F) r.mmcs = sae::mmcs(model.params().W_dec, F->matrix());
  json j = r.to_json();
  j["sae"] = a.sae_dir.string();
  j["data"] = a.data.string();
  j["architecture"] = model.config().architecture;
  if (Y) {
    j["target"] = a.target->string();
    j["d_out"] = model.d_out();
  }
  j["seconds"] = seconds_since(t0);
  print_result(j);
  return 0;
}

inline CLI::App* add_eval(CLI::App& app, Command& chosen) {
  auto a = std::make_shared<EvalArgs>();
  auto* c = app.add_subcommand("eval", "Evaluate an SAE directory on activations (.npy)");
  add_sae_and_data(c, a->sae_dir, a->data);
  c->add_option("--target", a->target,
                "A transcoder's targets .npy [tokens, d_out]: what it predicts for --data (row by row); the metrics "
                "compare its output with them")
      ->check(CLI::ExistingFile);
  c->add_option("--features", a->features, "True features .npy [features, d_in], adds mmcs")->check(CLI::ExistingFile);
  c->add_option("--limit", a->limit, "Evaluate only the first N tokens")->check(CLI::NonNegativeNumber);
  c->add_option("--batch", a->batch, "Tokens per evaluation batch")->capture_default_str()->check(CLI::PositiveNumber);
  c->add_option("--threads", a->threads, "Threads")->check(CLI::NonNegativeNumber);
  c->callback([a, &chosen] { chosen = [a] { return run_eval(*a); }; });
  return c;
}

}  // namespace sae_cli
