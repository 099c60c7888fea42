// sae steer: scale, clamp or add one latent in activations, keeping the SAE's reconstruction
// error: x' = x + (f'_j - f_j) W_dec[:, j].
#pragma once

#include "common.hpp"

namespace sae_cli {

struct SteerArgs {
  fs::path sae_dir, data, out;
  sae::Index latent = -1;
  std::optional<double> scale, clamp, add;
  sae::Index batch = 4096;
  sae::Index limit = 0;
  int threads = 0;
};

inline int run_steer(const SteerArgs& a) {
  sae::set_num_threads(a.threads);
  const auto t0 = std::chrono::steady_clock::now();
  if (a.batch <= 0) throw std::invalid_argument("--batch must be positive");
  const int modes = int(a.scale.has_value()) + int(a.clamp.has_value()) + int(a.add.has_value());
  if (modes != 1) throw UsageError("give exactly one of --scale S, --clamp V, --add A");
  sae::interp::SteerEdit edit;
  edit.latent = a.latent;
  std::string mode;
  if (a.scale) edit.mode = sae::interp::SteerMode::Scale, edit.value = *a.scale, mode = "scale";
  if (a.clamp) edit.mode = sae::interp::SteerMode::Clamp, edit.value = *a.clamp, mode = "clamp";
  if (a.add) edit.mode = sae::interp::SteerMode::Add, edit.value = *a.add, mode = "add";
  if (!std::isfinite(edit.value)) throw std::invalid_argument("--" + mode + " must be a finite number");

  const sae::AnySae model = sae::load_sae(a.sae_dir);
  const sae::interp::NpyBatches X(a.data);
  const sae::Index d_in = model.d_in();
  const sae::Index d_sae = model.d_sae();
  model.check_d_in(X.d_in(), a.data.string(), a.sae_dir);
  if (a.latent < 0 || a.latent >= d_sae)
    throw UsageError("--latent " + std::to_string(a.latent) + " is outside [0, d_sae=" + std::to_string(d_sae) + ")");
  const sae::Index n = a.limit > 0 ? std::min(a.limit, X.tokens()) : X.tokens();
  std::cerr << "sae steer: latent " << a.latent << " " << mode << " " << edit.value << " on " << n << " tokens of "
            << a.data.string() << "\n";

  sae::interp::NpyStreamWriter w(a.out, n, d_in);
  double sum_before = 0, sum_after = 0, sum_shift = 0;
  std::int64_t active = 0;
  std::visit(
      [&](const auto& m) {
        using Model = std::decay_t<decltype(m)>;
        sae::interp::SteeringWorkspace<Model> ws;
        sae::Mat<float> Y;
        X.for_each(
            a.batch,
            [&](sae::Index t0, const Eigen::Map<const sae::Mat<float>>& Xb) {
              sae::check_finite_tokens(Xb, t0, a.data.string());
              sae::interp::apply_steering(m, Xb, std::span<const sae::interp::SteerEdit>(&edit, 1), Y, ws);
              w.add(Y);
              sum_before += static_cast<double>(ws.before.sum());
              sum_after += static_cast<double>(ws.after.sum());
              active += (ws.before.array() != 0.0f).count();
              sum_shift += (Y - Xb).colwise().norm().sum();
            },
            0, n);
      },
      model);
  w.commit();
  const double N = static_cast<double>(n);
  json j = {{"out", a.out.string()},
            {"tokens", n},
            {"latent", a.latent},
            {"mode", mode},
            {"value", edit.value},
            {"mean_before", sum_before / N},
            {"mean_after", sum_after / N},
            {"active_fraction", static_cast<double>(active) / N},
            {"mean_shift_norm", sum_shift / N},
            {"seconds", seconds_since(t0)}};
  if (edit.mode == sae::interp::SteerMode::Add) {
    j.erase("mean_before");  // not encoded: only the shift is known
    j.erase("mean_after");
    j.erase("active_fraction");
  }
  print_result(j);
  return 0;
}

inline CLI::App* add_steer(CLI::App& app, Command& chosen) {
  auto a = std::make_shared<SteerArgs>();
  auto* c = app.add_subcommand("steer",
                               "Scale, clamp or add one SAE latent in activations, keeping the reconstruction error");
  add_sae_and_data(c, a->sae_dir, a->data);
  c->add_option("--latent", a->latent, "Latent index j")->required()->check(CLI::NonNegativeNumber);
  c->add_option("--scale", a->scale, "f_j -> S * f_j")->check(finite);
  c->add_option("--clamp", a->clamp, "f_j -> V on every token")->check(finite);
  c->add_option("--add", a->add, "x -> x + A * W_dec[:, j] (no encoding)")->check(finite);
  c->add_option("--out", a->out, "Steered activations .npy float32 [tokens, d_in]")->required();
  c->add_option("--batch", a->batch, "Tokens per batch")->capture_default_str()->check(CLI::PositiveNumber);
  c->add_option("--limit", a->limit, "Steer only the first N tokens")->check(CLI::NonNegativeNumber);
  c->add_option("--threads", a->threads, "Threads")->check(CLI::NonNegativeNumber);
  c->callback([a, &chosen] { chosen = [a] { return run_steer(*a); }; });
  return c;
}

}  // namespace sae_cli
