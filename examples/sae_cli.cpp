// sae: the libsae command-line tool.
//
//   sae synth  --out toy.npy [--d-in 64] [--features 256] [--samples 100000] [--active-prob 0.016] [--seed 7]
//   sae train  --data X.npy --arch relu|topk --d-sae M [--k K] [--l1 C] [--steps S] [--batch B]
//              [--lr LR] [--seed N] [--threads T] --out DIR
//   sae eval   --sae DIR --data X.npy [--features F.npy] [--limit N]
//
// Progress goes to stderr; the last line of stdout is one JSON object with the results.
// Errors are one line on stderr ("sae: error: ...") and a non-zero exit code.
#include <sae/sae.hpp>

#include <CLI/CLI.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

/// A [N, d] .npy file seen as a d x N float matrix: mapped when float32, converted once when
/// float16.
class Activations {
 public:
  explicit Activations(const fs::path& path) : reader_(sae::io::NpyReader::open(path)) {
    if (reader_.shape().size() != 2)
      throw sae::io::IoError(path, "expected a 2-D array [tokens, d_in], got " +
                                       std::to_string(reader_.shape().size()) + " dimensions");
    if (reader_.rows() == 0 || reader_.cols() == 0)
      throw sae::io::IoError(path, "the array is empty");
    if (reader_.dtype() == sae::io::NpyDtype::F16) {
      converted_.resize(static_cast<sae::Index>(reader_.cols()), static_cast<sae::Index>(reader_.rows()));
      reader_.copy_rows_f32(0, reader_.rows(), converted_.data());
    }
  }
  const float* data() const {
    return reader_.dtype() == sae::io::NpyDtype::F32 ? reader_.f32_data() : converted_.data();
  }
  sae::Index d_in() const { return static_cast<sae::Index>(reader_.cols()); }
  sae::Index tokens() const { return static_cast<sae::Index>(reader_.rows()); }
  Eigen::Map<const sae::Mat<float>> matrix() const { return {data(), d_in(), tokens()}; }
  const fs::path& path() const { return reader_.path(); }

 private:
  sae::io::NpyReader reader_;
  sae::Mat<float> converted_;
};

std::string human_rate(double r) {
  char buf[32];
  if (r >= 1e6) std::snprintf(buf, sizeof buf, "%.2fM", r / 1e6);
  else if (r >= 1e3) std::snprintf(buf, sizeof buf, "%.1fk", r / 1e3);
  else std::snprintf(buf, sizeof buf, "%.0f", r);
  return buf;
}

std::string human_seconds(double s) {
  char buf[32];
  if (s >= 3600) std::snprintf(buf, sizeof buf, "%dh%02dm", int(s / 3600), int(std::fmod(s, 3600) / 60));
  else if (s >= 60) std::snprintf(buf, sizeof buf, "%dm%02ds", int(s / 60), int(std::fmod(s, 60)));
  else std::snprintf(buf, sizeof buf, "%.0fs", s);
  return buf;
}

fs::path features_path_for(const fs::path& out) {
  fs::path p = out;
  const std::string stem = out.extension() == ".npy" ? out.stem().string() : out.filename().string();
  return p.replace_filename(stem + "_features.npy");
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// ---------------------------------------------------------------- synth
struct SynthArgs {
  fs::path out;
  std::optional<fs::path> features_out;
  sae::SyntheticOptions opt;
};

int run_synth(const SynthArgs& a) {
  const auto t0 = std::chrono::steady_clock::now();
  const fs::path fout = a.features_out.value_or(features_path_for(a.out));
  std::cerr << "sae synth: " << a.opt.samples << " samples, d_in " << a.opt.d_in << ", "
            << a.opt.features << " features, p " << a.opt.active_prob << ", seed " << a.opt.seed << "\n";
  const sae::SyntheticData d = sae::make_superposition(a.opt);
  sae::io::save_npy_matrix(a.out, d.X);
  sae::io::save_npy_matrix(fout, d.features);
  std::cerr << "sae synth: wrote " << a.out.string() << " and " << fout.string() << "\n";
  std::cout << json{{"out", a.out.string()},
                    {"features_out", fout.string()},
                    {"samples", a.opt.samples},
                    {"d_in", a.opt.d_in},
                    {"features", a.opt.features},
                    {"active_prob", a.opt.active_prob},
                    {"seed", a.opt.seed},
                    {"seconds", seconds_since(t0)}}
                   .dump()
            << std::endl;
  return 0;
}

// ---------------------------------------------------------------- train
struct TrainArgs {
  fs::path data, out;
  std::string arch = "topk";
  sae::Index d_sae = 0;
  sae::Index k = 32;
  double l1 = 0.3;
  std::int64_t l1_warmup = -1;
  std::optional<double> lr;
  sae::TrainOptions opt;
  int threads = 0;
};

/// Default peak learning rate: 2e-4 / sqrt(m / 2^14) (the 1/sqrt(m) scaling of Gao et al.
/// 2024, Fig. 3, as dictionary_learning uses it), which gives 1.1e-3 at m = 512.
double default_lr(sae::Index d_sae) { return 2e-4 / std::sqrt(static_cast<double>(d_sae) / 16384.0); }

template <class Model>
int train_model(Model& model, const TrainArgs& a, const Activations& X, json& meta) {
  sae::ShuffledBatches<float> batches(X.data(), X.d_in(), X.tokens(), a.opt.batch, a.opt.seed ^ 0x5ae5ae5aULL);
  std::vector<std::string> log_lines;
  const sae::TrainResult r = sae::train(model, batches, a.opt, [&](const sae::TrainProgress& p) {
    char line[256];
    std::snprintf(line, sizeof line, "step %lld/%lld  loss %.5g  l0 %.2f  fvu %.4f  lr %.2e  %s tok/s  ETA %s",
                  static_cast<long long>(p.step), static_cast<long long>(p.steps), p.loss, p.l0, p.fvu,
                  p.lr, human_rate(p.tokens_per_s).c_str(), human_seconds(p.eta_seconds).c_str());
    std::cerr << line << std::endl;
    json j = {{"step", p.step}, {"tokens", p.tokens}, {"loss", p.loss}, {"l0", p.l0}, {"fvu", p.fvu},
              {"lr", p.lr}, {"seconds", p.seconds}, {"tokens_per_s", p.tokens_per_s}};
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
  std::cout << json{{"out", a.out.string()},
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
                    {"threads", sae::num_threads()}}
                   .dump()
            << std::endl;
  return 0;
}

int run_train(TrainArgs a) {
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
  cfg.k = arch == sae::Architecture::TopK ? a.k : 0;
  if (arch == sae::Architecture::TopK && (a.k <= 0 || a.k > a.d_sae))
    throw std::invalid_argument("--k must be in [1, d_sae=" + std::to_string(a.d_sae) + "], got " + std::to_string(a.k));
  a.opt.lr = a.lr.value_or(default_lr(a.d_sae));
  if (!(a.opt.lr > 0)) throw std::invalid_argument("--lr must be positive");
  std::cerr << "sae train: " << a.arch << " d_in " << cfg.d_in << " d_sae " << cfg.d_sae;
  if (arch == sae::Architecture::TopK) std::cerr << " k " << cfg.k;
  else std::cerr << " l1 " << a.l1;
  std::cerr << ", " << X.tokens() << " tokens from " << a.data.string() << ", " << a.opt.steps << " steps of "
            << a.opt.batch << ", lr " << a.opt.lr << ", " << sae::num_threads() << " threads\n";

  json meta = {{"libsae_version", sae::version_string}, {"dataset_path", a.data.string()}};
  meta["training"] = {{"steps", a.opt.steps}, {"batch", a.opt.batch}, {"lr", a.opt.lr}, {"seed", a.opt.seed},
                      {"warmup_steps", a.opt.schedule().warmup_steps},
                      {"decay_steps", a.opt.schedule().decay_steps}};
  if (arch == sae::Architecture::TopK) {
    sae::TopKSae<float> model(cfg);
    return train_model(model, a, X, meta);
  }
  sae::ReluSae<float> model(cfg);
  auto& l1 = model.loss().get<sae::L1Sparsity>();
  l1.coefficient = a.l1;
  l1.warmup_steps = a.l1_warmup >= 0 ? a.l1_warmup : a.opt.steps / 20;
  meta["training"]["l1_coefficient"] = l1.coefficient;
  meta["training"]["l1_warmup_steps"] = l1.warmup_steps;
  return train_model(model, a, X, meta);
}

// ---------------------------------------------------------------- eval
struct EvalArgs {
  fs::path sae_dir, data;
  std::optional<fs::path> features;
  sae::Index limit = 0;
  sae::Index batch = 4096;
  int threads = 0;
};

int run_eval(const EvalArgs& a) {
  sae::set_num_threads(a.threads);
  const auto t0 = std::chrono::steady_clock::now();
  const sae::AnySae model = sae::load_sae(a.sae_dir);
  const sae::Index d_in = std::visit([](const auto& m) { return m.d_in(); }, model);
  const Activations X(a.data);
  if (X.d_in() != d_in)
    throw std::invalid_argument(a.data.string() + " has d_in=" + std::to_string(X.d_in()) + " but the SAE in " +
                                a.sae_dir.string() + " has d_in=" + std::to_string(d_in));
  std::optional<Activations> F;
  if (a.features) {
    F.emplace(*a.features);
    if (F->d_in() != d_in)
      throw std::invalid_argument(a.features->string() + " has feature dimension " + std::to_string(F->d_in()) +
                                  " but the SAE has d_in=" + std::to_string(d_in));
  }
  if (a.batch <= 0) throw std::invalid_argument("--batch must be positive");
  const sae::Index n = a.limit > 0 ? std::min(a.limit, X.tokens()) : X.tokens();
  std::cerr << "sae eval: " << a.sae_dir.string() << " on " << n << " tokens of " << a.data.string() << "\n";
  sae::EvalMetrics r = std::visit([&](const auto& m) { return sae::evaluate(m, X.matrix(), n, a.batch); }, model);
  if (F) r.mmcs = std::visit([&](const auto& m) { return sae::mmcs(m.params().W_dec, F->matrix()); }, model);
  json j = r.to_json();
  j["sae"] = a.sae_dir.string();
  j["data"] = a.data.string();
  j["architecture"] = std::visit([](const auto& m) { return std::string(sae::architecture_name(m.config().architecture)); }, model);
  j["seconds"] = seconds_since(t0);
  std::cout << j.dump() << std::endl;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"sae: train, evaluate and inspect sparse autoencoders (libsae " + std::string(sae::version_string) + ")"};
  app.set_version_flag("--version", std::string(sae::version_string));
  app.require_subcommand(1, 1);

  SynthArgs sa;
  auto* synth = app.add_subcommand("synth", "Write synthetic superposition data with known features (.npy)");
  synth->add_option("--out", sa.out, "Output .npy [samples, d_in]; features go to <stem>_features.npy")->required();
  synth->add_option("--features-out", sa.features_out, "Output .npy for the true features [features, d_in]");
  synth->add_option("--d-in", sa.opt.d_in, "Dimension of each sample")->capture_default_str()->check(CLI::PositiveNumber);
  synth->add_option("--features", sa.opt.features, "Number of ground-truth features")->capture_default_str()->check(CLI::PositiveNumber);
  synth->add_option("--samples", sa.opt.samples, "Number of samples")->capture_default_str()->check(CLI::PositiveNumber);
  synth->add_option("--active-prob", sa.opt.active_prob, "Probability that a feature is active in a sample")
      ->capture_default_str()->check(CLI::Range(1e-12, 1.0));
  synth->add_option("--seed", sa.opt.seed, "Random seed")->capture_default_str();

  TrainArgs ta;
  auto* train = app.add_subcommand("train", "Train an SAE on activations from a .npy file, save an SAELens directory");
  train->add_option("--data", ta.data, "Activations .npy [tokens, d_in] (float32 or float16)")->required()->check(CLI::ExistingFile);
  train->add_option("--arch", ta.arch, "Architecture: relu (= standard) or topk")->capture_default_str()
      ->check(CLI::IsMember({"relu", "standard", "topk"}));
  train->add_option("--d-sae", ta.d_sae, "Number of latents")->required()->check(CLI::PositiveNumber);
  train->add_option("--k", ta.k, "Active latents per token (topk)")->capture_default_str();
  train->add_option("--l1", ta.l1, "L1 coefficient (relu)")->capture_default_str()->check(CLI::NonNegativeNumber);
  train->add_option("--l1-warmup", ta.l1_warmup, "Steps of linear L1 warm-up (relu; default steps/20)");
  train->add_option("--steps", ta.opt.steps, "Training steps")->capture_default_str();
  train->add_option("--batch", ta.opt.batch, "Tokens per step")->capture_default_str();
  train->add_option("--lr", ta.lr, "Peak learning rate (default 2e-4/sqrt(d_sae/16384))");
  train->add_option("--warmup", ta.opt.warmup_steps, "Steps of linear lr warm-up (default min(100, steps/10))");
  train->add_option("--decay", ta.opt.decay_steps, "Final steps of linear lr decay (default steps/5)");
  train->add_option("--seed", ta.opt.seed, "Seed for initialisation and batch order")->capture_default_str();
  train->add_option("--threads", ta.threads, "Threads (default: all cores / OMP_NUM_THREADS)");
  train->add_option("--log-every", ta.opt.log_every, "Progress line every N steps")->capture_default_str();
  train->add_option("--out", ta.out, "Output SAE directory (SAELens layout)")->required();

  EvalArgs ea;
  auto* eval = app.add_subcommand("eval", "Evaluate an SAE directory on activations (.npy)");
  eval->add_option("--sae", ea.sae_dir, "SAE directory (cfg.json + sae_weights.safetensors)")->required();
  eval->add_option("--data", ea.data, "Activations .npy [tokens, d_in]")->required()->check(CLI::ExistingFile);
  eval->add_option("--features", ea.features, "True features .npy [features, d_in], adds mmcs")->check(CLI::ExistingFile);
  eval->add_option("--limit", ea.limit, "Evaluate only the first N tokens");
  eval->add_option("--batch", ea.batch, "Tokens per evaluation batch")->capture_default_str();
  eval->add_option("--threads", ea.threads, "Threads");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help, --version
    std::cerr << "sae: error: " << e.what() << " (see sae --help)" << std::endl;
    return 2;
  }
  try {
    if (*synth) return run_synth(sa);
    if (*train) return run_train(ta);
    if (*eval) return run_eval(ea);
  } catch (const std::exception& e) {
    std::cerr << "sae: error: " << e.what() << std::endl;
    return 1;
  }
  return 1;
}
