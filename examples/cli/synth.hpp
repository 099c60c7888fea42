// sae synth: synthetic superposition data with known features (and, with --target-out, the
// paired targets a transcoder learns to predict).
#pragma once

#include "common.hpp"

namespace sae_cli {

struct SynthArgs {
  fs::path out;
  std::optional<fs::path> features_out;
  sae::SyntheticOptions opt;
  // transcoder pairs (make_transcoder_pairs): targets and their output directions
  std::optional<fs::path> target_out;
  sae::Index d_out = 32;
  double linear = 0.0, noise = 0.0, input_noise = 0.0;
};

inline int run_synth(const SynthArgs& a) {
  const auto t0 = std::chrono::steady_clock::now();
  const fs::path fout = a.features_out.value_or(features_path_for(a.out));
  if (fs::weakly_canonical(fout) == fs::weakly_canonical(a.out))
    throw UsageError("--features-out " + fout.string() + " is the same file as --out");
  std::cerr << "sae synth: " << a.opt.samples << " samples, d_in " << a.opt.d_in << ", " << a.opt.features
            << " features, p " << a.opt.active_prob << ", seed " << a.opt.seed << "\n";
  json result = {{"out", a.out.string()}, {"features_out", fout.string()}, {"samples", a.opt.samples},
                 {"d_in", a.opt.d_in},    {"features", a.opt.features},    {"active_prob", a.opt.active_prob},
                 {"seed", a.opt.seed}};
  if (a.target_out) {
    const fs::path tf = features_path_for(*a.target_out);
    for (const fs::path& p : {*a.target_out, tf})
      if (fs::weakly_canonical(p) == fs::weakly_canonical(a.out) ||
          fs::weakly_canonical(p) == fs::weakly_canonical(fout))
        throw UsageError("--target-out writes " + p.string() + ", which is also an input or feature file");
    const sae::SyntheticPairs d = sae::make_transcoder_pairs(a.opt, a.d_out, a.linear, a.noise, a.input_noise);
    sae::io::save_npy_matrix(a.out, d.X);
    sae::io::save_npy_matrix(fout, d.features);
    sae::io::save_npy_matrix(*a.target_out, d.Y);
    sae::io::save_npy_matrix(tf, d.out_features);
    std::cerr << "sae synth: wrote " << a.out.string() << ", " << fout.string() << ", " << a.target_out->string()
              << " and " << tf.string() << "\n";
    result["target_out"] = a.target_out->string();
    result["target_features_out"] = tf.string();
    result["d_out"] = a.d_out;
    result["linear"] = a.linear;
    result["noise"] = a.noise;
    result["input_noise"] = a.input_noise;
  } else {
    const sae::SyntheticData d = sae::make_superposition(a.opt);
    sae::io::save_npy_matrix(a.out, d.X);
    sae::io::save_npy_matrix(fout, d.features);
    std::cerr << "sae synth: wrote " << a.out.string() << " and " << fout.string() << "\n";
  }
  result["seconds"] = seconds_since(t0);
  print_result(result);
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
  c->add_option("--target-out", a->target_out,
                "Also write transcoder targets .npy [samples, d_out]: y = sum c_i v_i + M x + noise with the sample's "
                "features and coefficients (output directions to <stem>_features.npy)");
  c->add_option("--d-out", a->d_out, "With --target-out: width of the targets")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  c->add_option("--linear", a->linear, "With --target-out: scale of the dense linear part M x (0: none)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  c->add_option("--noise", a->noise, "With --target-out: standard deviation of the targets' noise")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  c->add_option("--input-noise", a->input_noise,
                "With --target-out: standard deviation of a dense part of x no feature explains")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  c->callback([a, &chosen] { chosen = [a] { return run_synth(*a); }; });
  return c;
}

}  // namespace sae_cli
