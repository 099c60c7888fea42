// sae train: train an SAE on activations from .npy files (one, several, or directories; streamed
// through a shuffle buffer), with optional normalisation, checkpoints and resume, and save an
// SAELens directory.
#pragma once

#include "common.hpp"

#include <bit>
#include <set>

#include <sae/core/gemm.hpp>
#include <sae/train/checkpoint.hpp>
#include <sae/train/streaming.hpp>

namespace sae_cli {

struct TrainArgs {
  std::vector<fs::path> data;            // .npy files and/or directories of them
  fs::path out;
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
  std::string gemm = "auto";             // encoder GEMM backend: auto (SAE_GEMM or the build default), eigen or blas
  // data pipeline
  std::optional<std::int64_t> shuffle_buffer;  // tokens; unset with one file: full in-memory-order shuffle
  std::string normalize = "none";
  // checkpoints
  std::int64_t checkpoint_every = 0;
  fs::path checkpoint_dir;               // default OUT/checkpoint
  fs::path resume;                       // run directory or checkpoint file to continue
  std::set<std::string> given;           // flags given on the command line ("--lr", ...)
};

/// The settings a checkpoint records (everything that shapes the run; not `given`/`resume`).
inline json train_args_to_json(const TrainArgs& a) {
  json d = json::array();
  for (const auto& p : a.data) d.push_back(p.string());
  auto opt_num = [](const std::optional<double>& v) { return v ? json(*v) : json(nullptr); };
  return {{"data", d}, {"out", a.out.string()}, {"arch", a.arch}, {"d_sae", a.d_sae}, {"k", a.k},
          {"l1", a.l1}, {"l1_warmup", a.l1_warmup}, {"l0", opt_num(a.l0)}, {"target_l0", opt_num(a.target_l0)},
          {"l0_warmup", a.l0_warmup}, {"bandwidth", a.bandwidth}, {"threshold_init", a.threshold_init},
          {"ortho", a.ortho}, {"chunks", a.chunks}, {"aux_k", a.aux_k}, {"aux_coeff", a.aux_coeff},
          {"dead_tokens", a.dead_tokens}, {"lr", opt_num(a.lr)}, {"steps", a.opt.steps}, {"batch", a.opt.batch},
          {"warmup", a.opt.warmup_steps}, {"decay", a.opt.decay_steps}, {"seed", a.opt.seed},
          {"log_every", a.opt.log_every}, {"threads", a.threads},
          {"shuffle_buffer", a.shuffle_buffer ? json(*a.shuffle_buffer) : json(nullptr)},
          {"normalize", a.normalize}, {"checkpoint_every", a.checkpoint_every},
          {"checkpoint_dir", a.checkpoint_dir.string()}};
}

inline TrainArgs train_args_from_json(const json& j) {
  TrainArgs a;
  for (const auto& p : j.at("data")) a.data.emplace_back(p.get<std::string>());
  auto opt_num = [&](const char* k) { return j.at(k).is_null() ? std::optional<double>() : j.at(k).get<double>(); };
  a.out = j.at("out").get<std::string>();
  a.arch = j.at("arch").get<std::string>();
  a.d_sae = j.at("d_sae").get<sae::Index>();
  a.k = j.at("k").get<sae::Index>();
  a.l1 = j.at("l1").get<double>();
  a.l1_warmup = j.at("l1_warmup").get<std::int64_t>();
  a.l0 = opt_num("l0");
  a.target_l0 = opt_num("target_l0");
  a.l0_warmup = j.at("l0_warmup").get<std::int64_t>();
  a.bandwidth = j.at("bandwidth").get<double>();
  a.threshold_init = j.at("threshold_init").get<double>();
  a.ortho = j.at("ortho").get<double>();
  a.chunks = j.at("chunks").get<sae::Index>();
  a.aux_k = j.at("aux_k").get<sae::Index>();
  a.aux_coeff = j.at("aux_coeff").get<double>();
  a.dead_tokens = j.at("dead_tokens").get<std::int64_t>();
  a.lr = opt_num("lr");
  a.opt.steps = j.at("steps").get<std::int64_t>();
  a.opt.batch = j.at("batch").get<sae::Index>();
  a.opt.warmup_steps = j.at("warmup").get<std::int64_t>();
  a.opt.decay_steps = j.at("decay").get<std::int64_t>();
  a.opt.seed = j.at("seed").get<std::uint64_t>();
  a.opt.log_every = j.at("log_every").get<std::int64_t>();
  a.threads = j.at("threads").get<int>();
  if (!j.at("shuffle_buffer").is_null()) a.shuffle_buffer = j.at("shuffle_buffer").get<std::int64_t>();
  a.normalize = j.at("normalize").get<std::string>();
  a.checkpoint_every = j.at("checkpoint_every").get<std::int64_t>();
  a.checkpoint_dir = j.at("checkpoint_dir").get<std::string>();
  return a;
}

/// The batches `sae train` trains on. One .npy file without --shuffle-buffer: the whole file
/// in a fresh random order every epoch (ShuffledBatches over the memory map; float16 converted
/// once into memory), as libsae always did. Several files, a directory, or --shuffle-buffer:
/// StreamingBatches (memory-mapped chunks through a shuffle buffer; data larger than memory).
/// Both report the file and row of a bad token and can seek to a checkpoint's position.
class TrainSource {
 public:
  TrainSource(const sae::NpyDataset& ds, const TrainArgs& a, double scale) {
    const std::uint64_t seed = a.opt.seed ^ 0x5ae5ae5aULL;
    if (ds.files() == 1 && !a.shuffle_buffer) {
      const sae::io::NpyReader& r = ds.file(0);
      const float* data = nullptr;
      if (r.dtype() == sae::io::NpyDtype::F32) {
        data = r.f32_data();
      } else {
        converted_.resize(ds.d_in(), static_cast<sae::Index>(ds.tokens()));
        r.copy_rows_f32(0, r.rows(), converted_.data());
        data = converted_.data();
      }
      shuffled_.emplace(data, ds.d_in(), static_cast<sae::Index>(ds.tokens()), a.opt.batch, seed);
      shuffled_->set_name(ds.file_path(0).string());
      if (scale != 1.0) shuffled_->set_scale(scale);
      describe_ = {{"kind", "shuffled"}, {"seed", seed}};
    } else {
      sae::StreamingOptions o;
      o.batch = a.opt.batch;
      o.shuffle_buffer = a.shuffle_buffer.value_or(0);
      o.seed = seed;
      o.scale = scale;
      streaming_.emplace(ds, o);
      describe_ = {{"kind", "streaming"}, {"seed", seed}, {"shuffle_buffer", streaming_->shuffle_buffer()},
                   {"chunk", streaming_->chunk()}};
    }
  }
  sae::Index d_in() const { return shuffled_ ? shuffled_->d_in() : streaming_->d_in(); }
  const sae::Mat<float>& next() { return shuffled_ ? shuffled_->next() : streaming_->next(); }
  std::string origin(sae::Index col) const { return shuffled_ ? shuffled_->origin(col) : streaming_->origin(col); }
  std::int64_t position() const { return shuffled_ ? shuffled_->position() : streaming_->position(); }
  void seek(std::int64_t p) { shuffled_ ? shuffled_->seek(p) : streaming_->seek(p); }
  /// Kind, seed and buffer sizes (plus the position) for checkpoints and logs.
  json describe() const {
    json j = describe_;
    j["position"] = position();
    return j;
  }
  std::string summary() const {
    if (shuffled_) return "full shuffle";
    return "shuffle buffer " + std::to_string(streaming_->shuffle_buffer()) + " tokens, chunks of " +
           std::to_string(streaming_->chunk());
  }

 private:
  sae::Mat<float> converted_;
  std::optional<sae::ShuffledBatches<float>> shuffled_;
  std::optional<sae::StreamingBatches<float>> streaming_;
  json describe_;
};

/// Where training continues from (sae train --resume).
struct ResumeFrom {
  fs::path file;   // the checkpoint
  json state;      // its JSON state (read_checkpoint_state)
};

/// Default peak learning rate: 2e-4 / sqrt(m / 2^14) (the 1/sqrt(m) scaling of Gao et al.
/// 2024, Fig. 3, as dictionary_learning uses it), which gives 1.1e-3 at m = 512.
inline double default_lr(sae::Index d_sae) { return 2e-4 / std::sqrt(static_cast<double>(d_sae) / 16384.0); }

/// The encoder GEMM backend of this process ("eigen" or "blas": the build's measured default
/// unless --gemm, SAE_GEMM or a checkpoint fixed it). Results of the two differ in the last
/// bits, so checkpoints record it and --resume pins it.
inline std::string gemm_backend_name() { return sae::gemm::backend_name(sae::gemm::encoder_backend()); }

/// Trains @p model (from scratch, or from the checkpoint in @p resume), writing a checkpoint
/// every --checkpoint-every steps; then folds the normalisation factor into the weights and
/// writes the SAE directory, its train_log.jsonl and the JSON result.
template <class Model>
int train_and_save(Model& model, const TrainArgs& a, const sae::NpyDataset& ds, double scale,
                   const std::optional<ResumeFrom>& resume, json meta) {
  TrainSource source(ds, a, scale);
  sae::TrainState<float> st;
  std::vector<std::string> log_lines;
  std::int64_t tokens0 = 0;  // tokens trained before this process started
  if (resume) {
    const json extra = sae::load_checkpoint(resume->file, model, st);
    for (const auto& l : extra.at("log")) log_lines.push_back(l.get<std::string>());
    const std::int64_t pos = extra.at("source").at("position").get<std::int64_t>();
    if (pos != st.tokens)
      throw sae::io::IoError(resume->file, "data position " + std::to_string(pos) + " does not match " +
                                               std::to_string(st.tokens) + " tokens trained");
    source.seek(pos);
    tokens0 = st.tokens;
    std::cerr << "sae train: resuming from " << resume->file.string() << " at step " << st.step << "/"
              << a.opt.steps << "\n";
  }
  const fs::path ckpt_dir = a.checkpoint_dir.empty() ? a.out / "checkpoint" : a.checkpoint_dir;
  if (a.checkpoint_every > 0) {
    std::error_code ec;
    fs::create_directories(ckpt_dir, ec);
    if (ec) throw sae::io::IoError(ckpt_dir, "cannot create the checkpoint directory: " + ec.message());
    sae::remove_stale_checkpoint_temps(ckpt_dir);
  }
  const json args_json = train_args_to_json(a);
  auto on_step = [&](const sae::TrainState<float>& s) {
    if (a.checkpoint_every <= 0 || s.step % a.checkpoint_every != 0) return;
    json log = json::array();
    for (const auto& l : log_lines) log.push_back(l);
    const json extra = {{"args", args_json}, {"threads", sae::num_threads()}, {"scale", scale},
                        {"scale_bits", std::bit_cast<std::uint64_t>(scale)}, {"source", source.describe()},
                        {"data", ds.fingerprint()}, {"log", log}, {"gemm_backend", gemm_backend_name()}};
    sae::save_checkpoint(ckpt_dir / sae::checkpoint_file_name, model, s, extra);
  };
  const sae::TrainResult r = sae::train_from(model, source, a.opt, st, [&](const sae::TrainProgress& p) {
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
  }, on_step);
  meta["training"]["tokens"] = r.tokens;
  meta["training"]["seconds"] = r.seconds;
  meta["training"]["gemm_backend"] = gemm_backend_name();
  if (resume) meta["training"]["resumed_from_step"] = resume->state.at("step");
  if (scale != 1.0) sae::fold_input_scale(model.params(), scale);  // the saved SAE works on raw activations
  model.config().metadata = meta;
  sae::save_sae(a.out, model);
  std::string log;
  for (const auto& l : log_lines) log += l + "\n";
  sae::io::write_file_atomic(a.out / "train_log.jsonl",
                             std::span<const std::byte>(reinterpret_cast<const std::byte*>(log.data()), log.size()));
  std::cerr << "sae train: saved " << a.out.string() << "\n";
  json result = {{"out", a.out.string()},
                 {"architecture", std::string(sae::architecture_name(model.config().architecture))},
                 {"d_in", model.d_in()},
                 {"d_sae", model.d_sae()},
                 {"k", model.config().k},
                 {"steps", r.steps},
                 {"tokens", r.tokens},
                 {"seconds", r.seconds},
                 {"tokens_per_s", r.seconds > 0 ? static_cast<double>(r.tokens - tokens0) / r.seconds : 0.0},
                 {"final_loss", r.final_loss},
                 {"l0", r.final_l0},
                 {"fvu", r.final_fvu},
                 {"dead_fraction", r.final_dead_fraction},
                 {"threads", sae::num_threads()},
                 {"gemm_backend", gemm_backend_name()}};
  if (scale != 1.0) result["normalize"] = {{"method", a.normalize}, {"scale", scale}};
  if (resume) result["resumed_from_step"] = resume->state.at("step");
  print_result(result);
  return 0;
}

/// Default lambda for JumpReLU: 1e-2 for lambda * L0 and 1.0 for the target-L0 penalty
/// (measured on data of mean squared norm about 1; see docs/variants.md).
inline double default_l0(const TrainArgs& a) { return a.target_l0 ? 1.0 : 1e-2; }

/// Flags that may accompany --resume; every other setting comes from the checkpoint.
inline const std::set<std::string>& resume_flags() {
  static const std::set<std::string> f = {"--resume", "--threads", "--checkpoint-every", "--checkpoint-dir",
                                          "--out", "--data", "--log-every", "--gemm"};
  return f;
}

/// The SaeConfig of a run of @p a on data of dimension @p d_in, after checking the model
/// settings; also sets a.opt.lr (--lr or default_lr) and a.opt.dead_tokens.
inline sae::SaeConfig training_config(TrainArgs& a, sae::Index d_in) {
  sae::SaeConfig cfg;
  cfg.d_in = d_in;
  cfg.d_sae = a.d_sae;
  cfg.architecture = sae::parse_architecture(a.arch);
  const bool uses_k = sae::architecture_uses_k(cfg.architecture);
  cfg.k = uses_k ? a.k : 0;
  if (uses_k && (a.k <= 0 || a.k > a.d_sae))
    throw std::invalid_argument("--k must be in [1, d_sae=" + std::to_string(a.d_sae) + "], got " + std::to_string(a.k));
  if (!(a.bandwidth > 0)) throw std::invalid_argument("--bandwidth must be positive");
  if (a.target_l0 && !(*a.target_l0 > 0)) throw std::invalid_argument("--target-l0 must be positive");
  if (a.chunks < 1) throw std::invalid_argument("--chunks must be at least 1");
  a.opt.lr = a.lr.value_or(default_lr(a.d_sae));
  a.opt.dead_tokens = a.dead_tokens;
  if (!(a.opt.lr > 0)) throw std::invalid_argument("--lr must be positive");
  return cfg;
}

/// Builds the model `sae train` trains for @p a and @p cfg (architecture, loss coefficients and
/// their warm-ups, AuxK, JumpReLU and OrtSAE settings), records those settings in @p tr
/// (metadata["training"]) and returns @p f(model). Shared by `sae train` and `sae bench`.
template <class F>
auto with_training_model(const TrainArgs& a, const sae::SaeConfig& cfg, json& tr, F&& f) {
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
  switch (cfg.architecture) {
    case sae::Architecture::Standard: {
      sae::ReluSae<float> model(cfg);
      auto& l1 = model.loss().get<sae::L1Sparsity>();
      l1.coefficient = a.l1;
      l1.warmup_steps = a.l1_warmup >= 0 ? a.l1_warmup : coeff_warmup;
      tr["l1_coefficient"] = l1.coefficient;
      tr["l1_warmup_steps"] = l1.warmup_steps;
      return f(model);
    }
    case sae::Architecture::TopK: {
      sae::TopKSae<float> model(cfg);
      set_aux(model);
      return f(model);
    }
    case sae::Architecture::BatchTopK: {
      sae::BatchTopKSae<float> model(cfg);
      set_aux(model);
      return f(model);
    }
    case sae::Architecture::OrtSAE: {
      sae::OrtSae<float> model(cfg);
      set_aux(model);
      auto& o = model.loss().get<sae::Orthogonality>();
      o.coefficient = a.ortho;
      o.chunks = a.chunks;
      tr["ortho"] = a.ortho;
      tr["chunks"] = a.chunks;
      return f(model);
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
        return f(model);
      }
      sae::JumpReluSae<float> model(cfg);
      set_jumprelu(model);
      auto& l0 = model.loss().get<sae::L0Sparsity>();
      l0.coefficient = lam;
      l0.warmup_steps = warm;
      return f(model);
    }
  }
  throw std::invalid_argument("unsupported architecture");
}

inline int run_train(TrainArgs a) {
  std::optional<ResumeFrom> resume;
  if (!a.resume.empty()) {
    ResumeFrom rf;
    rf.file = sae::find_checkpoint(a.resume);
    rf.state = sae::read_checkpoint_state(rf.file);
    for (const auto& g : a.given)
      if (!resume_flags().count(g))
        throw std::invalid_argument(g + " cannot be changed when resuming: the settings come from the checkpoint " +
                                    rf.file.string());
    TrainArgs saved;
    json extra;
    try {
      extra = rf.state.at("extra");
      saved = train_args_from_json(extra.at("args"));
    } catch (const json::exception& e) {
      throw sae::io::IoError(rf.file, std::string("checkpoint was not written by sae train: ") + e.what());
    }
    if (a.given.count("--data")) saved.data = a.data;
    if (a.given.count("--out")) saved.out = a.out;
    if (a.given.count("--checkpoint-every")) saved.checkpoint_every = a.checkpoint_every;
    if (a.given.count("--checkpoint-dir")) saved.checkpoint_dir = a.checkpoint_dir;
    if (a.given.count("--log-every")) saved.opt.log_every = a.opt.log_every;
    const int ran_with = extra.value("threads", 0);
    saved.threads = a.given.count("--threads") ? a.threads : ran_with;
    if (ran_with > 0 && saved.threads > 0 && saved.threads != ran_with)
      std::cerr << "sae train: warning: the run used " << ran_with << " threads, resuming with " << saved.threads
                << ": the weights will not be bit-identical to an uninterrupted run\n";
    // The encoder backend the run used (Eigen and BLAS differ in the last bits): pinned unless
    // --gemm eigen|blas overrides it.
    const std::string ran_gemm = extra.value("gemm_backend", std::string());
    saved.gemm = a.gemm != "auto" ? a.gemm : (ran_gemm.empty() ? "auto" : ran_gemm);
    if (!ran_gemm.empty() && saved.gemm != ran_gemm)
      std::cerr << "sae train: warning: the run used the " << ran_gemm << " GEMM backend, resuming with "
                << saved.gemm << ": the weights will not be bit-identical to an uninterrupted run\n";
    if (saved.gemm == "blas" && a.gemm == "auto" && !sae::gemm::blas_linked()) {
      std::cerr << "sae train: warning: the run used the blas GEMM backend and this build has no BLAS, resuming "
                   "with eigen: the weights will not be bit-identical to an uninterrupted run\n";
      saved.gemm = "eigen";
    }
    saved.given = a.given;
    a = std::move(saved);
    resume = std::move(rf);
  }
  sae::set_num_threads(a.threads);
  if (a.gemm != "auto") sae::gemm::set_encoder_backend(sae::gemm::parse_backend(a.gemm));
  const sae::Architecture arch = sae::parse_architecture(a.arch);
  const sae::Normalization norm = sae::parse_normalization(a.normalize);
  const sae::NpyDataset ds = sae::NpyDataset::open(a.data);
  if (a.d_sae <= 0) throw std::invalid_argument("--d-sae must be positive");
  if (a.opt.batch <= 0) throw std::invalid_argument("--batch must be positive");
  if (a.opt.steps <= 0) throw std::invalid_argument("--steps must be positive");
  if (a.shuffle_buffer && *a.shuffle_buffer <= 0) throw std::invalid_argument("--shuffle-buffer must be positive");
  if (a.checkpoint_every < 0) throw std::invalid_argument("--checkpoint-every must be >= 0");
  double scale = 1.0;
  if (resume) {
    const json& extra = resume->state.at("extra");
    scale = std::bit_cast<double>(extra.at("scale_bits").get<std::uint64_t>());
    const json& was = extra.at("data");
    const json now = ds.fingerprint();
    bool same = was.at("d_in") == now.at("d_in") && was.at("tokens") == now.at("tokens") &&
                was.at("files").size() == now.at("files").size();
    for (std::size_t f = 0; same && f < now.at("files").size(); ++f)
      same = was.at("files")[f].at("rows") == now.at("files")[f].at("rows") &&
             was.at("files")[f].at("dtype") == now.at("files")[f].at("dtype");
    if (!same)
      throw sae::io::IoError(resume->file, "the activation files differ from the ones the run was trained on (" +
                                               was.dump() + ")");
  } else {
    scale = sae::estimate_scale(ds, norm);
  }
  const sae::SaeConfig cfg = training_config(a, ds.d_in());
  const bool uses_k = sae::architecture_uses_k(arch);
  const std::string data_name = ds.files() == 1 ? a.data.front().string()
                                                : std::to_string(ds.files()) + " files";
  std::cerr << "sae train: " << sae::architecture_name(arch) << " d_in " << cfg.d_in << " d_sae " << cfg.d_sae;
  if (uses_k) std::cerr << " k " << cfg.k;
  std::cerr << ", " << ds.tokens() << " tokens from " << data_name << ", " << a.opt.steps << " steps of "
            << a.opt.batch << ", lr " << a.opt.lr << ", " << sae::num_threads() << " threads\n";
  if (norm != sae::Normalization::None)
    std::cerr << "sae train: normalisation " << a.normalize << ": activations scaled by " << scale << "\n";

  json meta = {{"libsae_version", sae::version_string}};
  if (a.data.size() == 1) {
    meta["dataset_path"] = a.data.front().string();
  } else {
    meta["dataset_path"] = json::array();
    for (const auto& p : a.data) meta["dataset_path"].push_back(p.string());
  }
  if (norm != sae::Normalization::None)
    meta["activation_normalization"] = {{"method", a.normalize}, {"scale", scale}, {"folded_into_weights", true}};
  json& tr = meta["training"];
  tr = {{"architecture", std::string(sae::architecture_name(arch))}, {"steps", a.opt.steps},
        {"batch", a.opt.batch}, {"lr", a.opt.lr}, {"seed", a.opt.seed},
        {"warmup_steps", a.opt.schedule().warmup_steps}, {"decay_steps", a.opt.schedule().decay_steps}};
  if (ds.files() > 1 || a.shuffle_buffer) tr["shuffle_buffer"] = a.shuffle_buffer ? json(*a.shuffle_buffer) : json("default");
  return with_training_model(a, cfg, tr, [&](auto& model) { return train_and_save(model, a, ds, scale, resume, meta); });
}

inline CLI::App* add_train(CLI::App& app, Command& chosen) {
  auto a = std::make_shared<TrainArgs>();
  auto* c = app.add_subcommand("train", "Train an SAE on activations from .npy files, save an SAELens directory");
  c->add_option("--data", a->data,
                "Activations: .npy files [tokens, d_in] (float32 or float16) and/or directories of them")
      ->check(CLI::ExistingPath);
  c->add_option("--arch", a->arch, "Architecture: relu (= standard), topk, batchtopk, jumprelu or ortsae")
      ->capture_default_str()->check(CLI::IsMember({"relu", "standard", "topk", "batchtopk", "jumprelu", "ortsae"}));
  c->add_option("--d-sae", a->d_sae, "Number of latents")->check(CLI::PositiveNumber);
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
  c->add_option("--gemm", a->gemm,
                "Encoder GEMM backend: auto ($SAE_GEMM, else the one measured faster when libsae was "
                "configured), eigen or blas; --resume uses the checkpoint's")
      ->capture_default_str()->check(CLI::IsMember({"auto", "eigen", "blas"}));
  c->add_option("--out", a->out, "Output SAE directory (SAELens layout)");
  c->add_option("--shuffle-buffer", a->shuffle_buffer,
                "Tokens held in the shuffle buffer (streams the files; default with several files: 256 MiB of tokens)")
      ->check(CLI::PositiveNumber);
  c->add_option("--normalize", a->normalize,
                "Scale activations: none, expected-norm (mean norm sqrt(d_in)) or unit-mean-square (mean squared "
                "norm 1); folded into the saved weights")
      ->capture_default_str()->check(CLI::IsMember({"none", "expected-norm", "unit-mean-square"}));
  c->add_option("--checkpoint-every", a->checkpoint_every, "Write a checkpoint every N steps (0: never)")
      ->capture_default_str()->check(CLI::NonNegativeNumber);
  c->add_option("--checkpoint-dir", a->checkpoint_dir, "Checkpoint directory (default OUT/checkpoint)");
  c->add_option("--resume", a->resume,
                "Continue the run whose checkpoint is in this directory (its --out or --checkpoint-dir) or file")
      ->check(CLI::ExistingPath);
  c->callback([a, c, &chosen] {
    a->given.clear();
    for (const CLI::Option* o : c->get_options())
      if (o->count() > 0 && !o->get_lnames().empty()) a->given.insert("--" + o->get_lnames().front());
    if (a->resume.empty())
      for (const char* flag : {"--data", "--d-sae", "--out"})
        if (!a->given.count(flag)) throw CLI::RequiredError(flag);
    chosen = [a] { return run_train(*a); };
  });
  return c;
}

}  // namespace sae_cli
