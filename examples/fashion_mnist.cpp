// fashion_mnist: train SAEs on Fashion-MNIST images and write feature reports.
//
//   fashion_mnist [--data-dir /usr/share/datasets/fashion-mnist] [--out fashion_mnist_out]
//                 [--d-sae 512] [--k 16] [--steps 1500] [--jumprelu-steps 1000] [--batch 1024]
//                 [--threads T] [--seed 0] [--features 24] [--no-jumprelu]
//
// Reads the IDX files of Debian's `dataset-fashion-mnist` package directly (gzip-compressed,
// through sae/io/idx.hpp), scales pixels to [0, 1], trains a TopK SAE and a JumpReLU SAE (with
// the target-L0 penalty, target = k) on the 60,000 training images, evaluates both on the
// 10,000 test images, and writes for each an SAE directory (SAELens layout + train_log.jsonl)
// and a self-contained HTML report of its features on the test images. Also writes the test
// images as a .npy and their class names as a text file, so `sae report` / `sae steer` can be
// run on them. Progress on stderr; the last line of stdout is one JSON object.
#include <sae/io/idx.hpp>
#include <sae/sae.hpp>

#include <CLI/CLI.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

const char* const kClassNames[10] = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                     "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

struct Args {
  fs::path data_dir = "/usr/share/datasets/fashion-mnist";
  fs::path out = "fashion_mnist_out";
  sae::Index d_sae = 512;
  sae::Index k = 16;
  std::int64_t steps = 1500;
  std::int64_t jumprelu_steps = 1000;  // a JumpReLU step costs ~3x a TopK step (dense codes)
  sae::Index batch = 1024;
  int threads = 0;
  std::uint64_t seed = 0;
  bool jumprelu = true;
  double l0_coefficient = 0;  // JumpReLU target-L0 lambda; 0: mean squared norm / 1.4
  sae::Index report_features = 24;
};

/// Finds NAME or NAME.gz in the data directory.
fs::path idx_file(const fs::path& dir, const std::string& name) {
  for (const fs::path& p : {dir / (name + ".gz"), dir / name})
    if (fs::exists(p)) return p;
  throw sae::io::IoError(dir / (name + ".gz"), "not found (install Debian's dataset-fashion-mnist or pass --data-dir)");
}

/// Trains @p model, logging progress to stderr and into train_log.jsonl rows.
template <class Model>
sae::TrainResult train_model(Model& model, const char* name, const sae::Mat<float>& X, const Args& a,
                             std::int64_t steps, double lr, std::vector<std::string>& log) {
  sae::ShuffledBatches<float> batches(X.data(), X.rows(), X.cols(), a.batch, a.seed ^ 0x5ae5ae5aULL);
  sae::TrainOptions opt;
  opt.steps = steps;
  opt.batch = a.batch;
  opt.lr = lr;
  opt.seed = a.seed;
  opt.log_every = std::max<std::int64_t>(steps / 20, 1);
  return sae::train(model, batches, opt, [&](const sae::TrainProgress& p) {
    char line[256];
    std::snprintf(line, sizeof line, "%s: step %lld/%lld  loss %.4g  l0 %.2f  fvu %.4f  dead %.1f%%  %.1fk img/s", name,
                  static_cast<long long>(p.step), static_cast<long long>(p.steps), p.loss, p.l0, p.fvu,
                  100.0 * p.dead_fraction, p.tokens_per_s / 1e3);
    std::cerr << line << std::endl;
    json j = {{"step", p.step}, {"tokens", p.tokens},   {"loss", p.loss},
              {"l0", p.l0},     {"fvu", p.fvu},         {"dead_fraction", p.dead_fraction},
              {"lr", p.lr},     {"seconds", p.seconds}, {"tokens_per_s", p.tokens_per_s}};
    for (const auto& [term, v] : p.terms) j[term] = v;
    log.push_back(j.dump());
  });
}

/// Saves the SAE and its log, evaluates it on the test images, writes its report; returns
/// the figures for the summary.
template <class Model>
json finish_model(Model& model, const std::string& name, const sae::TrainResult& tr,
                  const std::vector<std::string>& log, const sae::Mat<float>& X_test,
                  const std::vector<std::uint8_t>& y_test, const Args& a) {
  const fs::path dir = a.out / name;
  model.set_metadata({{"dataset", "fashion-mnist"},
                      {"training", {{"steps", tr.steps}, {"tokens", tr.tokens}, {"seconds", tr.seconds}}}});
  std::string text;
  for (const auto& l : log) text += l + "\n";
  sae::io::DirectoryWriter out(dir, sae::io::saelens_config_file, sae::io::saelens_owned_files());
  sae::save_sae(out, model);  // the SAE and its log change together
  out.write_file("train_log.jsonl",
                 std::span<const std::byte>(reinterpret_cast<const std::byte*>(text.data()), text.size()));
  out.commit();

  const auto t0 = std::chrono::steady_clock::now();
  sae::interp::AnalyzeOptions ao;
  ao.tracker.top_n = 16;
  const sae::interp::Analysis an = sae::interp::analyze(model, sae::interp::MatrixBatches(X_test), ao);
  sae::interp::ReportInput in(an.tracker, model.params().W_dec);
  in.metrics = an.metrics;
  in.summary = {{"SAE", dir.string()},
                {"architecture", model.config().architecture},
                {"d_in", model.d_in()},
                {"d_sae", model.d_sae()},
                {"data", "Fashion-MNIST test images (10,000), pixels in [0, 1]"},
                {"training", std::to_string(tr.steps) + " steps of " + std::to_string(a.batch) + " images, " +
                                 sae::interp::svg::num(tr.seconds, 3) + " s"}};
  if (model.config().k > 0) in.summary["k"] = model.config().k;
  in.b_dec = model.params().b_dec;
  in.example = [&](sae::Index t) { return sae::Vec<float>(X_test.col(t)); };
  in.example_label = [&](sae::Index t) { return std::string(kClassNames[y_test[static_cast<std::size_t>(t)]]); };
  in.train_log = sae::interp::read_train_log(dir / "train_log.jsonl");
  sae::interp::ReportOptions ro;
  ro.title = "Fashion-MNIST " + name + " SAE";
  ro.features = a.report_features;
  ro.examples = 12;
  ro.image_height = ro.image_width = 28;
  const fs::path report = a.out / (name + "_report.html");
  sae::interp::write_report(report, sae::interp::render_report(in, ro));

  // Class purity of the top examples of the features that fired: how often the 12 best
  // examples of a feature share its most common class.
  double purity = 0;
  int counted = 0;
  for (sae::Index j = 0; j < model.d_sae(); ++j) {
    const auto top = an.tracker.top().top(j);
    if (top.size() < 12) continue;
    int per[10] = {0};
    for (std::size_t i = 0; i < 12; ++i) ++per[y_test[static_cast<std::size_t>(top[i].example)]];
    purity += *std::max_element(per, per + 10) / 12.0;
    ++counted;
  }
  const sae::EvalMetrics& m = an.metrics;
  const auto dense = an.tracker.density().dense_latents(0.1);
  std::cerr << name << ": test fvu " << m.fvu << "  l0 " << m.l0 << "  dead " << m.dead_fraction << "  -> "
            << report.string() << " (" << seconds_since(t0) << " s)\n";
  return {{"architecture", model.config().architecture},
          {"dir", dir.string()},
          {"report", report.string()},
          {"train_seconds", tr.seconds},
          {"train_fvu", tr.final_fvu},
          {"train_l0", tr.final_l0},
          {"test_fvu", m.fvu},
          {"test_explained_variance", m.explained_variance},
          {"test_l0", m.l0},
          {"test_dead_fraction", m.dead_fraction},
          {"test_dense_latents", dense.size()},
          {"top12_class_purity", counted ? purity / counted : 0.0}};
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  CLI::App app{"Train TopK and JumpReLU SAEs on Fashion-MNIST and write feature reports"};
  app.add_option("--data-dir", a.data_dir, "Directory with the IDX files (.gz or not)")->capture_default_str();
  app.add_option("--out", a.out, "Output directory")->capture_default_str();
  app.add_option("--d-sae", a.d_sae, "Latents")->capture_default_str();
  app.add_option("--k", a.k, "TopK k; also the JumpReLU target L0")->capture_default_str();
  app.add_option("--steps", a.steps, "Training steps of the TopK SAE")->capture_default_str();
  app.add_option("--jumprelu-steps", a.jumprelu_steps, "Training steps of the JumpReLU SAE")->capture_default_str();
  app.add_option("--batch", a.batch, "Images per step")->capture_default_str();
  app.add_option("--threads", a.threads, "Threads (default: all cores)");
  app.add_option("--seed", a.seed, "Seed")->capture_default_str();
  app.add_option("--l0-coefficient", a.l0_coefficient, "JumpReLU target-L0 lambda (default: mean squared norm / 1.4)");
  app.add_option("--features", a.report_features, "Features shown in each report")->capture_default_str();
  app.add_flag("!--no-jumprelu", a.jumprelu, "Train only the TopK SAE");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }

  try {
    const auto t_start = std::chrono::steady_clock::now();
    sae::set_num_threads(a.threads);
    fs::create_directories(a.out);

    std::size_t h = 0, w = 0;
    const sae::Mat<float> X_train = sae::io::read_idx_images(idx_file(a.data_dir, "train-images-idx3-ubyte"), &h, &w);
    const sae::Mat<float> X_test = sae::io::read_idx_images(idx_file(a.data_dir, "t10k-images-idx3-ubyte"));
    const std::vector<std::uint8_t> y_test = sae::io::read_idx_labels(idx_file(a.data_dir, "t10k-labels-idx1-ubyte"));
    if (h != 28 || w != 28 || X_test.rows() != X_train.rows() ||
        static_cast<sae::Index>(y_test.size()) != X_test.cols())
      throw std::runtime_error("unexpected Fashion-MNIST shapes");
    for (auto y : y_test)
      if (y > 9) throw std::runtime_error("test label " + std::to_string(y) + " is not a class 0-9");
    const double ms_norm = X_train.colwise().squaredNorm().mean();
    std::cerr << "fashion_mnist: " << X_train.cols() << " training and " << X_test.cols() << " test images of " << h
              << "x" << w << " (mean squared norm " << ms_norm << "), read in " << seconds_since(t_start) << " s, "
              << sae::num_threads() << " threads\n";

    // The test set as files for the `sae` tool.
    sae::io::save_npy_matrix(a.out / "test_images.npy", X_test);
    {
      std::string labels;
      for (auto y : y_test) labels += std::string(kClassNames[y]) + "\n";
      sae::io::write_file_atomic(
          a.out / "test_labels.txt",
          std::span<const std::byte>(reinterpret_cast<const std::byte*>(labels.data()), labels.size()));
    }

    sae::SaeConfig cfg;
    cfg.d_in = X_train.rows();
    cfg.d_sae = a.d_sae;
    const double lr = sae::default_lr(a.d_sae);
    json results = json::array();

    {
      cfg.k = a.k;
      sae::TopKSae<float> model(cfg);
      std::vector<std::string> log;
      const sae::TrainResult tr = train_model(model, "topk", X_train, a, a.steps, lr, log);
      results.push_back(finish_model(model, "topk", tr, log, X_test, y_test, a));
    }
    if (a.jumprelu) {
      // The library's threshold and kernel-width defaults (epsilon = theta_0 = 0.3) fit here:
      // at initialisation a pre-activation is a random projection of x - b_dec, about
      // ||x - mean|| / sqrt(784) ~ 0.3 for these images, the scale those defaults were set for.
      cfg.k = 0;
      sae::JumpReluTargetSae<float> model(cfg);
      // The reconstruction loss is a squared norm, ~100x larger on these images (mean
      // squared norm 162) than on the data the penalty's default lambda = 1 was set for (1.4),
      // so lambda scales with the mean squared norm to keep the same balance.
      auto& l0 = model.loss().get<sae::TargetL0>();
      l0.target = static_cast<double>(a.k);
      l0.coefficient = a.l0_coefficient > 0 ? a.l0_coefficient : ms_norm / 1.4;
      l0.warmup_steps = a.jumprelu_steps / 10;
      std::vector<std::string> log;
      const sae::TrainResult tr = train_model(model, "jumprelu", X_train, a, a.jumprelu_steps, lr, log);
      results.push_back(finish_model(model, "jumprelu", tr, log, X_test, y_test, a));
    }

    std::cout << "\n  model      train s   test fvu   test l0   dead    dense   top-12 class purity\n";
    for (const json& r : results) {
      char line[200];
      std::snprintf(line, sizeof line, "  %-9s  %7.1f   %8.4f   %7.2f   %5.3f   %5d   %.3f\n",
                    r["architecture"].get<std::string>().c_str(), r["train_seconds"].get<double>(),
                    r["test_fvu"].get<double>(), r["test_l0"].get<double>(), r["test_dead_fraction"].get<double>(),
                    r["test_dense_latents"].get<int>(), r["top12_class_purity"].get<double>());
      std::cout << line;
    }
    std::cout << "\n";
    std::cout << json({{"out", a.out.string()},
                       {"train_images", X_train.cols()},
                       {"test_images", X_test.cols()},
                       {"d_sae", a.d_sae},
                       {"k", a.k},
                       {"steps", a.steps},
                       {"jumprelu_steps", a.jumprelu ? a.jumprelu_steps : 0},
                       {"batch", a.batch},
                       {"threads", sae::num_threads()},
                       {"models", results},
                       {"seconds", seconds_since(t_start)}})
                     .dump()
              << std::endl;
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "fashion_mnist: error: " << e.what() << std::endl;
    return 1;
  }
}
