// sae report: one self-contained HTML report of an SAE on activations (training curves,
// feature density, top features with their top activating examples).
#pragma once

#include <fstream>

#include "common.hpp"

namespace sae_cli {

struct ReportArgs {
  fs::path sae_dir, data, out;
  std::string images;  // "HxW"
  std::optional<fs::path> labels;
  std::string order = "mass";
  std::vector<sae::Index> feature_ids;
  sae::interp::ReportOptions opt;
  sae::Index top_n = 0;  // examples kept per latent; 0: max(examples, 16)
  sae::Index batch = 4096;
  sae::Index limit = 0;
  int threads = 0;
};

/// "28x28" -> (28, 28); throws on anything else.
inline std::pair<int, int> parse_image_shape(const std::string& s) {
  const auto x = s.find_first_of("xX");
  int h = 0, w = 0;
  try {
    std::size_t p1 = 0, p2 = 0;
    if (x == std::string::npos) throw std::invalid_argument("");
    h = std::stoi(s.substr(0, x), &p1);
    w = std::stoi(s.substr(x + 1), &p2);
    if (p1 != x || p2 != s.size() - x - 1) throw std::invalid_argument("");
  } catch (const std::exception&) {
    throw std::invalid_argument("--images must look like HxW (e.g. 28x28), got '" + s + "'");
  }
  if (h <= 0 || w <= 0) throw std::invalid_argument("--images must have positive sides, got '" + s + "'");
  return {h, w};
}

inline int run_report(ReportArgs a) {
  sae::set_num_threads(a.threads);
  const auto t0 = std::chrono::steady_clock::now();
  if (a.batch <= 0) throw std::invalid_argument("--batch must be positive");
  const sae::AnySae model = sae::load_sae(a.sae_dir);
  const sae::interp::NpyBatches X(a.data);
  const sae::Index d_in = std::visit([](const auto& m) { return m.d_in(); }, model);
  if (X.d_in() != d_in)
    throw std::invalid_argument(a.data.string() + " has d_in=" + std::to_string(X.d_in()) + " but the SAE in " +
                                a.sae_dir.string() + " has d_in=" + std::to_string(d_in));
  if (!a.images.empty()) {
    const auto [h, w] = parse_image_shape(a.images);
    if (static_cast<sae::Index>(h) * w != d_in)
      throw std::invalid_argument("--images " + a.images + " has " + std::to_string(h * w) + " pixels but d_in=" +
                                  std::to_string(d_in));
    a.opt.image_height = h;
    a.opt.image_width = w;
  }
  a.opt.order = sae::interp::parse_feature_order(a.order);
  a.opt.feature_ids = a.feature_ids;
  std::vector<std::string> labels;
  if (a.labels) {
    std::ifstream in(*a.labels);
    if (!in) throw sae::io::IoError(*a.labels, "cannot open the labels file");
    for (std::string line; std::getline(in, line);) labels.push_back(line);
  }

  const sae::Index n = a.limit > 0 ? std::min(a.limit, X.tokens()) : X.tokens();
  if (a.labels && static_cast<sae::Index>(labels.size()) < n)
    throw sae::io::IoError(*a.labels, "has " + std::to_string(labels.size()) + " lines, fewer than the " +
                                          std::to_string(n) + " examples");
  sae::interp::AnalyzeOptions ao;
  ao.batch = a.batch;
  ao.limit = n;
  ao.tracker.top_n = a.top_n > 0 ? a.top_n : std::max<sae::Index>(a.opt.examples, 16);
  sae::Index last = 0;
  ao.on_progress = [&](sae::Index done, sae::Index total) {
    if (done - last >= 100000 || done == total) {
      last = done;
      std::cerr << "sae report: encoded " << done << "/" << total << " tokens\n";
    }
  };
  std::cerr << "sae report: " << a.sae_dir.string() << " on " << n << " tokens of " << a.data.string() << "\n";
  const sae::interp::Analysis an = std::visit([&](const auto& m) { return sae::interp::analyze(m, X, ao); }, model);

  const sae::Mat<float>& W_dec = std::visit([](const auto& m) -> const sae::Mat<float>& { return m.params().W_dec; }, model);
  sae::interp::ReportInput in(an.tracker, W_dec);
  in.metrics = an.metrics;
  const sae::SaeConfig cfg = std::visit([](const auto& m) { return m.config(); }, model);
  in.summary = {{"SAE", a.sae_dir.string()},
                {"architecture", std::string(sae::architecture_name(cfg.architecture))},
                {"d_in", cfg.d_in},
                {"d_sae", cfg.d_sae},
                {"data", a.data.string()}};
  if (sae::architecture_uses_k(cfg.architecture)) in.summary["k"] = cfg.k;
  in.b_dec = std::visit([](const auto& m) { return sae::Vec<float>(m.params().b_dec); }, model);
  in.example = [&](sae::Index t) { return X.token(t); };
  if (a.labels) in.example_label = [&](sae::Index t) { return labels[static_cast<std::size_t>(t)]; };
  const fs::path log_path = a.sae_dir / "train_log.jsonl";
  if (fs::exists(log_path)) in.train_log = sae::interp::read_train_log(log_path);
  if (a.opt.title == "SAE report") a.opt.title = "SAE report: " + a.sae_dir.filename().string();

  const std::string html = sae::interp::render_report(in, a.opt);
  sae::interp::write_report(a.out, html);
  const auto dead = an.tracker.density().dead_latents();
  const auto dense = an.tracker.density().dense_latents(a.opt.dense_threshold);
  std::cerr << "sae report: wrote " << a.out.string() << " (" << html.size() / 1024 << " KiB)\n";
  print_result({{"out", a.out.string()},
                {"tokens", n},
                {"features", sae::interp::select_features(an.tracker, a.opt).size()},
                {"dead", dead.size()},
                {"dense", dense.size()},
                {"l0", an.metrics.l0},
                {"fvu", an.metrics.fvu},
                {"train_log", in.train_log.has_value()},
                {"bytes", html.size()},
                {"seconds", seconds_since(t0)}});
  return 0;
}

inline CLI::App* add_report(CLI::App& app, Command& chosen) {
  auto a = std::make_shared<ReportArgs>();
  auto* c = app.add_subcommand("report", "Write a self-contained HTML report of an SAE on activations (.npy)");
  add_sae_and_data(c, a->sae_dir, a->data,
                   "SAE (any supported format; its directory may hold the train_log.jsonl that sae train writes)");
  c->add_option("--out", a->out, "Output .html")->required();
  c->add_option("--images", a->images, "Show examples and decoder directions as HxW images (e.g. 28x28)");
  c->add_option("--labels", a->labels, "Text file with one label per example (shown with the examples)")->check(CLI::ExistingFile);
  c->add_option("--features", a->opt.features, "Number of top features shown")->capture_default_str();
  c->add_option("--feature-ids", a->feature_ids, "Show these latents instead (e.g. --feature-ids 3 17 42)");
  c->add_option("--order", a->order, "Top features by: mass (sum of activations), frequency, max")->capture_default_str()
      ->check(CLI::IsMember({"mass", "frequency", "max"}));
  c->add_flag("--include-dense", a->opt.include_dense, "Let dense latents (frequency > 0.1) into the top features");
  c->add_option("--examples", a->opt.examples, "Top activating examples per feature")->capture_default_str();
  c->add_option("--intervals", a->opt.intervals, "Quantile intervals sampled per feature (0: none)")->capture_default_str();
  c->add_option("--title", a->opt.title, "Page title");
  c->add_option("--batch", a->batch, "Tokens per batch")->capture_default_str()->check(CLI::PositiveNumber);
  c->add_option("--limit", a->limit, "Analyse only the first N tokens")->check(CLI::NonNegativeNumber);
  c->add_option("--threads", a->threads, "Threads")->check(CLI::NonNegativeNumber);
  c->callback([a, &chosen] { chosen = [a] { return run_report(*a); }; });
  return c;
}

}  // namespace sae_cli
