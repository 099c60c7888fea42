// sae synth: synthetic superposition data with known features.
#pragma once

#include "common.hpp"

namespace sae_cli {

struct SynthArgs {
  fs::path out;
  std::optional<fs::path> features_out;
  sae::SyntheticOptions opt;
};

inline int run_synth(const SynthArgs& a) {
  const auto t0 = std::chrono::steady_clock::now();
  const fs::path fout = a.features_out.value_or(features_path_for(a.out));
  if (fs::weakly_canonical(fout) == fs::weakly_canonical(a.out))
    throw UsageError("--features-out " + fout.string() + " is the same file as --out");
  std::cerr << "sae synth: " << a.opt.samples << " samples, d_in " << a.opt.d_in << ", " << a.opt.features
            << " features, p " << a.opt.active_prob << ", seed " << a.opt.seed << "\n";
  const sae::SyntheticData d = sae::make_superposition(a.opt);
  sae::io::save_npy_matrix(a.out, d.X);
  sae::io::save_npy_matrix(fout, d.features);
  std::cerr << "sae synth: wrote " << a.out.string() << " and " << fout.string() << "\n";
  print_result({{"out", a.out.string()},
                {"features_out", fout.string()},
                {"samples", a.opt.samples},
                {"d_in", a.opt.d_in},
                {"features", a.opt.features},
                {"active_prob", a.opt.active_prob},
                {"seed", a.opt.seed},
                {"seconds", seconds_since(t0)}});
  return 0;
}

inline CLI::App* add_synth(CLI::App& app, Command& chosen) {
  auto a = std::make_shared<SynthArgs>();
  auto* c = app.add_subcommand("synth", "Write synthetic superposition data with known features (.npy)");
  c->add_option("--out", a->out, "Output .npy [samples, d_in]; features go to <stem>_features.npy")->required();
  c->add_option("--features-out", a->features_out, "Output .npy for the true features [features, d_in]");
  c->add_option("--d-in", a->opt.d_in, "Dimension of each sample")->capture_default_str()->check(CLI::PositiveNumber);
  c->add_option("--features", a->opt.features, "Number of ground-truth features")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  c->add_option("--samples", a->opt.samples, "Number of samples")->capture_default_str()->check(CLI::PositiveNumber);
  c->add_option("--active-prob", a->opt.active_prob, "Probability that a feature is active in a sample")
      ->capture_default_str()
      ->check(CLI::Range(1e-12, 1.0));
  c->add_option("--seed", a->opt.seed, "Random seed")->capture_default_str();
  c->callback([a, &chosen] { chosen = [a] { return run_synth(*a); }; });
  return c;
}

}  // namespace sae_cli
