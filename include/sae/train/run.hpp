/// @file sae/train/run.hpp
/// A whole training run as `sae train` and `libsae.train` do it: settings with their defaults,
/// the data (activation files streamed, or a borrowed in-memory array), normalisation folded
/// into the weights, checkpoints, resume, interruption between steps, and the saved SAE.
///
///     sae::TrainSettings s;            // every `sae train` flag, with its default
///     s.data = {"acts/"};  s.arch = "topk";  s.d_sae = 4096;  s.k = 32;  s.out = "my_sae";
///     sae::TrainRun run = sae::run_training(s);   // run.sae: the trained SAE, run.result: JSON
///
/// The command-line tool only parses flags into TrainSettings and prints what the hooks report;
/// the Python package passes its keywords and, for an array, a TrainData::borrow view. The same
/// settings, data and seed give the same weights through either.
#pragma once

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <iterator>
#include <optional>
#include <set>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "../any_sae.hpp"
#include "../config.hpp"
#include "../core/gemm.hpp"
#include "../core/sparse_autoencoder.hpp"
#include "../io/atomic_file.hpp"
#include "../io/directory.hpp"
#include "../io/error.hpp"
#include "../variants/list.hpp"
#include "../version.hpp"
#include "batches.hpp"
#include "checkpoint.hpp"
#include "settings.hpp"
#include "streaming.hpp"
#include "trainer.hpp"

namespace sae {

/// The settings a checkpoint records (everything that shapes the run; not `given`/`resume`),
/// flat: the variant options of every variant (the run's, given or default; others' as given),
/// beside the common settings. These keys are also libsae.train's keywords.
inline nlohmann::json train_settings_to_json(const TrainSettings& a) {
  using nlohmann::json;
  json d = json::array();
  for (const auto& p : a.data) d.push_back(p.string());
  json t = json::array();
  for (const auto& p : a.target) t.push_back(p.string());
  json j = {{"data", d},
            {"target", t},
            {"skip", a.skip},
            {"out", a.out.string()},
            {"arch", a.arch},
            {"d_sae", a.d_sae},
            {"k", a.k},
            {"dead_tokens", a.dead_tokens},
            {"lr", a.lr ? json(*a.lr) : json(nullptr)},
            {"steps", a.opt.steps},
            {"batch", a.opt.batch},
            {"warmup", a.opt.warmup_steps},
            {"decay", a.opt.decay_steps},
            {"seed", a.opt.seed},
            {"log_every", a.opt.log_every},
            {"threads", a.threads},
            {"shuffle_buffer", a.shuffle_buffer ? json(*a.shuffle_buffer) : json(nullptr)},
            {"normalize", a.normalize},
            {"checkpoint_every", a.checkpoint_every},
            {"checkpoint_dir", a.checkpoint_dir.string()}};
  for (const DeclaredOption& o : all_variant_options()) {
    const auto it = a.options.find(o.spec.key);
    j[o.spec.key] = it != a.options.end() ? *it : o.spec.default_value;
  }
  return j;
}

/// Inverse of train_settings_to_json (throws nlohmann::json::exception on a missing common
/// field; a variant option missing from an older checkpoint takes its default).
inline TrainSettings train_settings_from_json(const nlohmann::json& j) {
  TrainSettings a;
  for (const auto& p : j.at("data")) a.data.emplace_back(p.get<std::string>());
  if (const auto it = j.find("target"); it != j.end())  // absent in checkpoints of libsae < 0.9
    for (const auto& p : *it) a.target.emplace_back(p.get<std::string>());
  a.skip = j.value("skip", false);
  a.out = j.at("out").get<std::string>();
  a.arch = j.at("arch").get<std::string>();
  a.d_sae = j.at("d_sae").get<Index>();
  a.k = j.at("k").get<Index>();
  a.dead_tokens = j.at("dead_tokens").get<std::int64_t>();
  if (!j.at("lr").is_null()) a.lr = j.at("lr").get<double>();
  a.opt.steps = j.at("steps").get<std::int64_t>();
  a.opt.batch = j.at("batch").get<Index>();
  a.opt.warmup_steps = j.at("warmup").get<std::int64_t>();
  a.opt.decay_steps = j.at("decay").get<std::int64_t>();
  a.opt.seed = j.at("seed").get<std::uint64_t>();
  a.opt.log_every = j.at("log_every").get<std::int64_t>();
  a.threads = j.at("threads").get<int>();
  if (!j.at("shuffle_buffer").is_null()) a.shuffle_buffer = j.at("shuffle_buffer").get<std::int64_t>();
  a.normalize = j.at("normalize").get<std::string>();
  a.checkpoint_every = j.at("checkpoint_every").get<std::int64_t>();
  a.checkpoint_dir = j.at("checkpoint_dir").get<std::string>();
  for (const DeclaredOption& o : all_variant_options())
    if (const auto it = j.find(o.spec.key); it != j.end()) a.options[o.spec.key] = *it;
  return a;
}

/// The activations a run trains on: .npy files (memory-mapped, NpyDataset), or an in-memory
/// d x N column-major float matrix borrowed from the caller (a C-order [N, d] float32 array
/// is exactly that; it must outlive the run).
class TrainData {
 public:
  /// Opens @p paths (files and/or directories; see expand_npy_paths).
  static TrainData open(const std::vector<std::filesystem::path>& paths) {
    TrainData t;
    t.files_ = NpyDataset::open(paths);
    return t;
  }
  /// Borrows @p data (d x N column-major floats); @p name appears in messages ("NAME row R").
  static TrainData borrow(const float* data, Index d, std::int64_t N, std::string name = "array") {
    if (data == nullptr || d <= 0 || N <= 0) throw std::invalid_argument("training data is empty");
    TrainData t;
    t.memory_ = data;
    t.d_ = d;
    t.n_ = N;
    t.name_ = std::move(name);
    return t;
  }

  bool in_memory() const { return memory_ != nullptr; }
  Index d_in() const { return in_memory() ? d_ : files_.d_in(); }
  std::int64_t tokens() const { return in_memory() ? n_ : files_.tokens(); }
  std::size_t files() const { return in_memory() ? 0 : files_.files(); }
  const NpyDataset& dataset() const { return files_; }
  const float* memory() const { return memory_; }
  /// What messages call the data: the file, "N files", or the array's name.
  std::string name() const {
    if (in_memory()) return name_;
    return files_.files() == 1 ? files_.file_path(0).string() : std::to_string(files_.files()) + " files";
  }
  /// The normalisation factor (estimate_scale over the files or the array, same sampling).
  double scale(Normalization how) const {
    return in_memory() ? estimate_scale(memory_, d_, n_, how) : estimate_scale(files_, how);
  }
  /// What a checkpoint records to recognise the data (NpyDataset::fingerprint; an array is one
  /// "file" named after it).
  nlohmann::json fingerprint() const {
    if (!in_memory()) return files_.fingerprint();
    return {{"d_in", d_},
            {"tokens", n_},
            {"files", nlohmann::json::array({{{"path", name_}, {"rows", n_}, {"dtype", "float32"}}})}};
  }

 private:
  NpyDataset files_;
  const float* memory_ = nullptr;
  Index d_ = 0;
  std::int64_t n_ = 0;
  std::string name_;
};

/// The batches a run trains on. One .npy file (or an array) without a shuffle buffer: the whole
/// data in a fresh random order every epoch (ShuffledBatches over the memory map; a float16
/// file converted once into memory). Several files, a directory, or a shuffle buffer:
/// StreamingBatches (memory-mapped chunks through a shuffle buffer; data larger than memory).
/// Both report the file and row of a bad token and can seek to a checkpoint's position.
///
/// With @p target data (a transcoder's: check_paired_data), a second source of the same kind,
/// seed, shuffle buffer and chunk size runs in lockstep over the targets: both orders are
/// functions of the seed and the files' row counts only, so column t of target() is the target
/// of column t of next() (token i of the inputs pairs with token i of the targets).
class TrainSource {
 public:
  TrainSource(const TrainData& data, const TrainSettings& a, double scale, const TrainData* target = nullptr) {
    const std::uint64_t seed = a.opt.seed ^ 0x5ae5ae5aULL;
    if (data.in_memory() && a.shuffle_buffer)
      throw std::invalid_argument(
          "shuffle_buffer applies to streamed .npy files; an in-memory array is shuffled whole");
    x_.emplace(data, a, scale, seed, 0, 0);
    describe_ = x_->describe();
    if (target) {
      if (target->in_memory() != data.in_memory())
        throw std::invalid_argument("inputs and targets must both be arrays or both be .npy files");
      y_.emplace(*target, a, scale, seed, x_->streaming ? x_->streaming->shuffle_buffer() : 0,
                 x_->streaming ? x_->streaming->chunk() : 0);
    }
  }
  Index d_in() const { return x_->d_in(); }
  const Mat<float>& next() {
    if (y_) y_->next();
    return x_->next();
  }
  /// Transcoders: targets are present, their width, and those of the last next() (d_out x B).
  bool has_target() const { return y_.has_value(); }
  Index d_out() const { return y_ ? y_->d_in() : x_->d_in(); }
  const Mat<float>& target() const { return y_ ? y_->last() : x_->last(); }
  std::string origin(Index col) const { return x_->origin(col); }
  std::string target_origin(Index col) const { return y_ ? y_->origin(col) : x_->origin(col); }
  std::int64_t position() const { return x_->position(); }
  void seek(std::int64_t p) {
    x_->seek(p);
    if (y_) y_->seek(p);
  }
  /// Kind, seed and buffer sizes (plus the position) for checkpoints and logs.
  nlohmann::json describe() const {
    nlohmann::json j = describe_;
    j["position"] = position();
    if (y_) j["paired_targets"] = true;
    return j;
  }

 private:
  /// One side (inputs or targets): a ShuffledBatches or a StreamingBatches over one TrainData.
  /// Not movable: the shuffled source borrows `converted`.
  struct Side {
    std::uint64_t seed;
    Mat<float> converted;
    std::optional<ShuffledBatches<float>> shuffled;
    std::optional<StreamingBatches<float>> streaming;
    const Mat<float>* last_batch = nullptr;

    Side(const TrainData& data, const TrainSettings& a, double scale, std::uint64_t seed, std::int64_t buffer,
         std::int64_t chunk)
        : seed(seed) {
      const bool whole = data.in_memory() || (data.files() == 1 && !a.shuffle_buffer);
      if (whole) {
        const float* x = data.memory();
        if (!x) {
          const io::NpyReader& r = data.dataset().file(0);
          if (r.dtype() == io::NpyDtype::F32) {
            x = r.f32_data();
          } else {
            converted.resize(data.d_in(), static_cast<Index>(data.tokens()));
            r.copy_rows_f32(0, r.rows(), converted.data());
            x = converted.data();
          }
        }
        shuffled.emplace(x, data.d_in(), static_cast<Index>(data.tokens()), a.opt.batch, seed);
        shuffled->set_name(data.name());
        if (scale != 1.0) shuffled->set_scale(scale);
      } else {
        StreamingOptions o;
        o.batch = a.opt.batch;
        o.shuffle_buffer = buffer > 0 ? buffer : a.shuffle_buffer.value_or(0);
        o.chunk = chunk;
        o.seed = seed;
        o.scale = scale;
        streaming.emplace(data.dataset(), o);
      }
    }
    Side(const Side&) = delete;
    Side& operator=(const Side&) = delete;

    Index d_in() const { return shuffled ? shuffled->d_in() : streaming->d_in(); }
    const Mat<float>& next() { return *(last_batch = shuffled ? &shuffled->next() : &streaming->next()); }
    const Mat<float>& last() const {
      if (!last_batch) throw std::logic_error("TrainSource: target() before next()");
      return *last_batch;
    }
    std::string origin(Index col) const { return shuffled ? shuffled->origin(col) : streaming->origin(col); }
    std::int64_t position() const { return shuffled ? shuffled->position() : streaming->position(); }
    void seek(std::int64_t p) { shuffled ? shuffled->seek(p) : streaming->seek(p); }
    nlohmann::json describe() const {
      if (shuffled) return {{"kind", "shuffled"}, {"seed", seed}};
      return {{"kind", "streaming"},
              {"seed", streaming->seed()},
              {"shuffle_buffer", streaming->shuffle_buffer()},
              {"chunk", streaming->chunk()}};
    }
  };

  std::optional<Side> x_, y_;
  nlohmann::json describe_;
};

/// Checks that @p target pairs token for token with @p data (a transcoder's inputs and targets):
/// the same number of files with the same rows each (so the shuffles line up), or arrays of
/// the same length. io::IoError naming the first target file that differs.
inline void check_paired_data(const TrainData& data, const TrainData& target) {
  if (data.in_memory() || target.in_memory()) {
    if (data.tokens() != target.tokens())
      throw std::invalid_argument("targets have " + std::to_string(target.tokens()) + " tokens, the inputs " +
                                  std::to_string(data.tokens()) + ": every input token needs its target");
    return;
  }
  if (data.files() != target.files())
    throw std::invalid_argument("--target names " + std::to_string(target.files()) + " .npy files, --data " +
                                std::to_string(data.files()) +
                                ": give one target file per input file (same order, same rows)");
  for (std::size_t f = 0; f < data.files(); ++f)
    if (data.dataset().file_tokens(f) != target.dataset().file_tokens(f))
      throw io::IoError(target.dataset().file_path(f),
                        "has " + std::to_string(target.dataset().file_tokens(f)) + " rows, but its input file " +
                            data.dataset().file_path(f).string() + " has " +
                            std::to_string(data.dataset().file_tokens(f)) + " (targets pair with inputs row by row)");
}

/// What a run reports while it works. Every member may be empty (then: progress lines and
/// messages go to std::cerr, and the run is never asked to stop).
struct TrainHooks {
  /// After every progress window: the numbers and the formatted progress line.
  std::function<void(const TrainProgress&, const std::string& line)> progress;
  /// One-line messages ("resuming from ...", warnings, "saved ...").
  std::function<void(const std::string&)> message;
  /// Asked after every step; true stops the run there (see TrainingInterrupted).
  std::function<bool()> stop;
  /// Data-parallel training over these ranks (sae/train/distributed.hpp; MpiCollectives in
  /// sae/train/mpi.hpp), or nullptr: one process. Every rank calls run_training with the same
  /// settings; rank 0 alone writes checkpoints and `out`; a stop asked on any rank stops all.
  Collectives* collectives = nullptr;
};

/// Thrown by run_training when TrainHooks::stop asked it to stop: nothing was saved to `out`,
/// but with checkpointing on, a checkpoint of the last finished step was written first.
struct TrainingInterrupted : std::runtime_error {
  std::int64_t step = 0;             ///< steps finished
  std::filesystem::path checkpoint;  ///< the checkpoint written, or empty
  TrainingInterrupted(std::int64_t s, std::filesystem::path ckpt)
      : std::runtime_error(ckpt.empty()
                               ? "training interrupted after step " + std::to_string(s) +
                                     " (no checkpoint: checkpointing is off)"
                               : "training interrupted after step " + std::to_string(s) + "; checkpoint written to " +
                                     ckpt.string() + " (continue with --resume / resume=)"),
        step(s),
        checkpoint(std::move(ckpt)) {}
};

/// The outcome of a run: the trained SAE in its inference form (BatchTopK-family models as
/// JumpReLU with their threshold, the normalisation folded in) and the JSON result `sae train`
/// prints.
struct TrainRun {
  AnySae sae;
  nlohmann::json result;
};

namespace detail {
/// 12.3k, 4.56M: a rate for progress lines.
inline std::string human_rate(double r) {
  char buf[32];
  if (r >= 1e6)
    std::snprintf(buf, sizeof buf, "%.2fM", r / 1e6);
  else if (r >= 1e3)
    std::snprintf(buf, sizeof buf, "%.1fk", r / 1e3);
  else
    std::snprintf(buf, sizeof buf, "%.0f", r);
  return buf;
}
/// 1h02m, 3m05s, 42s: a duration for progress lines.
inline std::string human_seconds(double s) {
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%dh%02dm", int(s / 3600), int(std::fmod(s, 3600) / 60));
  else if (s >= 60)
    std::snprintf(buf, sizeof buf, "%dm%02ds", int(s / 60), int(std::fmod(s, 60)));
  else
    std::snprintf(buf, sizeof buf, "%.0fs", s);
  return buf;
}
}  // namespace detail

/// The progress line of `sae train`.
inline std::string progress_line(const TrainProgress& p) {
  char line[256];
  std::snprintf(
      line, sizeof line, "step %lld/%lld  loss %.5g  l0 %.2f  fvu %.4f  dead %.1f%%  lr %.2e  %s tok/s  ETA %s",
      static_cast<long long>(p.step), static_cast<long long>(p.steps), p.loss, p.l0, p.fvu, 100.0 * p.dead_fraction,
      p.lr, detail::human_rate(p.tokens_per_s).c_str(), detail::human_seconds(p.eta_seconds).c_str());
  return line;
}

namespace detail {

inline void say(const TrainHooks& h, const std::string& line) {
  if (h.message)
    h.message(line);
  else
    std::cerr << line << std::endl;
}

/// Where training continues from (TrainSettings::resume).
struct ResumeFrom {
  std::filesystem::path file;  ///< the checkpoint
  nlohmann::json state;        ///< its JSON state (read_checkpoint_state)
};

/// The settings of the checkpointed run @p a.resume points to, with the few @p a may change
/// (resume_settings_allowed) taken from @p a. Warns through @p h when the thread count or GEMM
/// backend differ from the run's (the weights are then not bit-identical).
inline TrainSettings resume_settings(const TrainSettings& a, ResumeFrom& rf, const TrainHooks& h) {
  using nlohmann::json;
  rf.file = find_checkpoint(a.resume);
  rf.state = read_checkpoint_state(rf.file);
  std::set<std::string> given;
  for (const auto& g : a.given) {
    if (!resume_settings_allowed().count(setting_key(g)))
      throw std::invalid_argument(g + " cannot be changed when resuming: the settings come from the checkpoint " +
                                  rf.file.string());
    given.insert(setting_key(g));
  }
  TrainSettings saved;
  json extra;
  try {
    extra = rf.state.at("extra");
    saved = train_settings_from_json(extra.at("args"));
  } catch (const json::exception& e) {
    throw io::IoError(rf.file, std::string("checkpoint was not written by sae train: ") + e.what());
  }
  if (given.count("data")) saved.data = a.data;
  // Where the SAE and the next checkpoints go follows where the checkpoint was found, not the
  // directory this process runs in: a run copied elsewhere and resumed there writes there.
  namespace fs = std::filesystem;
  const fs::path found_in = rf.file.parent_path().empty() ? fs::path(".") : rf.file.parent_path();
  const bool default_layout = saved.checkpoint_dir.empty() && !saved.out.empty() && found_in.filename() == "checkpoint";
  if (given.count("out")) {
    saved.out = a.out;
  } else if (default_layout) {  // OUT/checkpoint/checkpoint.safetensors
    saved.out = found_in.parent_path().empty() ? fs::path(".") : found_in.parent_path();
  } else if (!saved.out.empty() && extra.contains("cwd") && extra.at("cwd").is_string()) {
    const fs::path cwd = extra.at("cwd").get<std::string>();
    const fs::path written_in =
        saved.checkpoint_dir.empty() ? cwd / saved.out / "checkpoint" : cwd / saved.checkpoint_dir;
    std::error_code e1, e2;
    if (fs::weakly_canonical(written_in, e1) != fs::weakly_canonical(fs::absolute(found_in), e2))
      throw std::invalid_argument("the checkpoint " + rf.file.string() + " was written in " + written_in.string() +
                                  " and has moved: give --out for the SAE (the run saved it to " +
                                  (cwd / saved.out).string() + ")");
    saved.out = cwd / saved.out;
  }
  if (given.count("checkpoint_every")) saved.checkpoint_every = a.checkpoint_every;
  if (given.count("checkpoint_dir"))
    saved.checkpoint_dir = a.checkpoint_dir;
  else if (!default_layout)
    saved.checkpoint_dir = found_in;  // else OUT/checkpoint, where it was found
  if (given.count("log_every")) saved.opt.log_every = a.opt.log_every;
  const int ran_with = extra.value("threads", 0);
  saved.threads = given.count("threads") ? a.threads : ran_with;
  if (ran_with > 0 && saved.threads > 0 && saved.threads != ran_with)
    say(h, "sae train: warning: the run used " + std::to_string(ran_with) + " threads, resuming with " +
               std::to_string(saved.threads) + ": the weights will not be bit-identical to an uninterrupted run");
  // The encoder backend the run used (Eigen and BLAS differ in the last bits): pinned unless
  // gemm eigen|blas overrides it.
  const std::string ran_gemm = extra.value("gemm_backend", std::string());
  saved.gemm = a.gemm != "auto" ? a.gemm : (ran_gemm.empty() ? "auto" : ran_gemm);
  if (!ran_gemm.empty() && saved.gemm != ran_gemm)
    say(h, "sae train: warning: the run used the " + ran_gemm + " GEMM backend, resuming with " + saved.gemm +
               ": the weights will not be bit-identical to an uninterrupted run");
  const bool missing = (saved.gemm == "blas" && !gemm::blas_linked()) || (saved.gemm == "dnnl" && !gemm::dnnl_linked());
  if (missing && a.gemm == "auto") {
    say(h, "sae train: warning: the run used the " + saved.gemm + " GEMM backend and this build has no " +
               (saved.gemm == "blas" ? "BLAS" : "oneDNN") +
               ", resuming with eigen: the weights will not be bit-identical to an uninterrupted run");
    saved.gemm = "eigen";
  }
  // The precision: the TopK family's codes do not depend on it, the dense variants' weights do
  // (mixed precision), so it is pinned like the backend unless given.
  const std::string ran_precision = extra.value("precision", std::string("auto"));
  saved.precision = given.count("precision") ? a.precision : ran_precision;
  if (saved.precision != ran_precision)
    say(h, "sae train: warning: the run used --precision " + ran_precision + ", resuming with " + saved.precision +
               " (for relu and jumprelu the weights will not be bit-identical to an uninterrupted run)");
  saved.given = a.given;
  saved.resume = a.resume;
  return saved;
}

/// The encoder GEMM backend of this process ("eigen" or "blas").
inline std::string gemm_backend_name() { return gemm::backend_name(gemm::encoder_backend()); }

/// "bf16" or "fp32": the products of @p Model's training steps (the TopK family's proposals, or
/// the dense variants' mixed precision).
template <class Model>
const char* products_precision() {
  using Scalar = typename Model::scalar_type;
  if constexpr (Model::activation_type::sparse)
    return kernels::precision_name(kernels::encoder_precision<Scalar>());
  else
    return kernels::dense_bf16<Scalar>() ? "bf16" : "fp32";
}

}  // namespace detail

/// Checks the settings that do not depend on the data (one sentence per problem, naming the
/// flag): SettingsError; io::IoError when `out` names an existing file.
inline void check_train_settings(const TrainSettings& a) {
  auto fail = [](const std::string& why) { throw SettingsError(why); };
  try {
    with_variant(a.arch, [&]<class V>(std::type_identity<V>) {
      V::check(resolve_options<V>(a.options), a);
      // An option given explicitly that this variant does not read would be ignored: refused.
      const std::vector<OptionSpec> own = V::options();
      for (const DeclaredOption& d : all_variant_options()) {
        const bool given = a.given.count(d.spec.key) || a.given.count(d.spec.flag());
        const bool read = std::any_of(own.begin(), own.end(),
                                      [&](const OptionSpec& o) { return std::string_view(o.key) == d.spec.key; });
        if (given && !read) {
          std::string users;
          for (const auto& u : d.used_by) users += (users.empty() ? "" : ", ") + u;
          throw std::invalid_argument(d.spec.flag() + " does not apply to --arch " + std::string(V::name) +
                                      " (it is an option of " + users + ")");
        }
      }
    });
    parse_normalization(a.normalize);
    if (a.gemm != "auto") gemm::parse_backend(a.gemm);
    kernels::parse_precision(a.precision);
  } catch (const std::invalid_argument& e) {
    fail(e.what());
  }
  if (a.skip && a.target.empty())
    fail("--skip makes a skip transcoder, which needs --target (the activations to predict)");
  if (!a.target.empty()) {
    with_variant(a.arch, [&]<class V>(std::type_identity<V>) {
      const std::string_view saved = V::saved_as_itself ? V::name : JumpReLUVariant::name;
      // SAELens has relu and jumprelu transcoders; TopK ones are written as sparsify's, whose
      // transcoders have the output width of the input (checked with the data, run_training).
      if (saelens_transcoder_architecture(saved, a.skip).empty() && saved != TopKVariant::name)
        fail("--arch " + std::string(V::name) + " with --target: a " + std::string(saved) +
             " transcoder has no SAELens or sparsify form: use --arch standard, jumprelu, topk, batchtopk, ortsae "
             "or matryoshka_batchtopk");
    });
    if (parse_normalization(a.normalize) != Normalization::None)
      fail("--normalize " + a.normalize +
           " with --target: normalising a transcoder's inputs and targets is not "
           "supported; use --normalize none");
  }
  if (a.d_sae <= 0) fail("--d-sae must be positive");
  if (variant_name_uses_k(a.arch) && (a.k <= 0 || a.k > a.d_sae))
    fail("--k must be in [1, d_sae=" + std::to_string(a.d_sae) + "], got " + std::to_string(a.k));
  if (a.opt.batch <= 0) fail("--batch must be positive");
  if (a.opt.steps <= 0) fail("--steps must be positive");
  if (a.threads < 0) fail("--threads must be >= 0 (0: all cores)");
  if (a.lr && !(*a.lr > 0 && std::isfinite(*a.lr))) fail("--lr must be a positive number");
  if (a.dead_tokens <= 0) fail("--dead-tokens must be positive");
  if (a.shuffle_buffer && *a.shuffle_buffer <= 0) fail("--shuffle-buffer must be positive");
  if (a.checkpoint_every < 0) fail("--checkpoint-every must be >= 0");
  if (a.checkpoint_every > 0 && a.out.empty() && a.checkpoint_dir.empty())
    fail("checkpoints need a place: give --out or --checkpoint-dir");
  std::error_code ec;
  if (!a.out.empty() && std::filesystem::exists(a.out, ec) && !std::filesystem::is_directory(a.out, ec))
    throw io::IoError(a.out, "exists and is not a directory (the SAE is saved as a directory)");
  // Found now, not after the training: an --out or checkpoint directory that cannot be written.
  if (!a.out.empty()) io::check_directory_writable(a.out);
  if (a.checkpoint_every > 0)
    io::check_directory_writable(a.checkpoint_dir.empty() ? a.out / "checkpoint" : a.checkpoint_dir);
}

/// Bytes a training run of @p a on @p data (variant a.arch, d_in d, d_sae m, batch B)
/// needs, estimated from what it allocates and measured peaks (sae train --steps 2,
/// /usr/bin/time, d 256, m 4096/16384, B 1024/4096, one AVX-512 EPYC):
///   - weights, gradients and Adam's two moments, with the kernels' transposed copies:
///     ~40 bytes per d*m element (measured 39);
///   - the batch's codes and their gradients: per B*m element 5 bytes for the dense variants
///     (relu, jumprelu: measured 4.1-4.6), 2.2 for batchtopk (measured 2.0), 0.25 for topk
///     (its fused encoder keeps tiles only);
///   - the batch, reconstruction and gradients: 32 bytes per B*d; a float16 file converted
///     into memory (4 bytes per value) or the streaming shuffle buffer (4*d per token);
///   - what the variant adds (extra_bytes: OrtSAE's (m/chunks)^2 Gram matrix per thread);
///   - 64 MiB for the rest.
/// The memory-mapped activations are page cache (reclaimable) and not counted.
inline double estimate_training_bytes(const TrainSettings& a, const TrainData& data) {
  const double d = static_cast<double>(data.d_in()), m = static_cast<double>(a.d_sae),
               B = static_cast<double>(a.opt.batch), N = static_cast<double>(data.tokens());
  double bytes = 32.0 * B * d + double(std::int64_t{64} << 20) + 40.0 * d * m;
  with_variant(a.arch, [&]<class V>(std::type_identity<V>) {  // the variant's codes and extras
    bytes += V::code_bytes_per_bm * B * m +
             V::extra_bytes(resolve_options<V>(a.options), data.d_in(), a.d_sae, a.opt.batch, num_threads());
  });
  if (!data.in_memory()) {
    const bool whole = data.files() == 1 && !a.shuffle_buffer;
    if (whole && data.dataset().file(0).dtype() != io::NpyDtype::F32) bytes += 4.0 * N * d;
    if (!whole)
      bytes += 4.0 * d *
               static_cast<double>(a.shuffle_buffer.value_or(
                   StreamingOptions::default_shuffle_buffer(data.tokens(), data.d_in(), a.opt.batch)));
  }
  return bytes;
}

/// Bytes this process can still get: MemAvailable + SwapFree from /proc/meminfo, capped by a
/// cgroup v2 limit (memory.max - memory.current) when there is one; 0 when unknown.
inline double available_memory_bytes() {
  auto read_kb = [](const std::string& text, const std::string& key) -> double {
    const std::size_t at = text.find(key + ":");
    return at == std::string::npos ? -1.0 : std::strtod(text.c_str() + at + key.size() + 1, nullptr);
  };
  std::ifstream in("/proc/meminfo");
  const std::string info((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const double avail = read_kb(info, "MemAvailable"), swap = read_kb(info, "SwapFree");
  if (avail < 0) return 0.0;
  double bytes = 1024.0 * (avail + std::max(swap, 0.0));
  std::ifstream mx("/sys/fs/cgroup/memory.max"), cur("/sys/fs/cgroup/memory.current");
  std::string lim;
  double used = 0;
  if (mx >> lim && lim != "max" && cur >> used) bytes = std::min(bytes, std::strtod(lim.c_str(), nullptr) - used);
  return bytes;
}

/// SettingsError when the run's estimated memory (estimate_training_bytes) exceeds what the
/// machine has left (available_memory_bytes), before anything is allocated.
inline void check_training_memory(const TrainSettings& a, const TrainData& data) {
  const double need = estimate_training_bytes(a, data), have = available_memory_bytes();
  if (have <= 0 || need <= have) return;
  char msg[400];
  std::snprintf(msg, sizeof msg,
                "--d-sae %lld with --batch %lld on d_in %lld needs about %.1f GiB, and this machine has %.1f GiB "
                "available: use a smaller --d-sae or --batch",
                static_cast<long long>(a.d_sae), static_cast<long long>(a.opt.batch),
                static_cast<long long>(data.d_in()), need / double(1 << 30), have / double(1 << 30));
  throw SettingsError(msg);
}

/// The SaeConfig of a run of @p a on data of dimension @p d_in, after checking the settings
/// (check_train_settings); also sets a.opt.lr (a.lr or default_lr) and a.opt.dead_tokens.
/// A transcoder's (a.target given) has @p d_out, the targets' width, and a.skip.
inline SaeConfig training_config(TrainSettings& a, Index d_in, Index d_out = 0) {
  check_train_settings(a);
  SaeConfig cfg;
  cfg.d_in = d_in;
  cfg.d_sae = a.d_sae;
  if (!a.target.empty()) {
    cfg.d_out = d_out;
    cfg.skip = a.skip;
    cfg.apply_b_dec_to_input = false;
  }
  cfg.architecture = canonical_variant_name(a.arch);
  cfg.k = variant_name_uses_k(a.arch) ? a.k : 0;
  a.opt.lr = a.lr.value_or(default_lr(a.d_sae));
  a.opt.dead_tokens = a.dead_tokens;
  return cfg;
}

/// Builds the model a run of @p a trains (architecture, loss coefficients and their warm-ups,
/// AuxK, JumpReLU and OrtSAE settings), records those settings in @p tr (metadata["training"])
/// and returns @p f(model). Shared by run_training and `sae bench`.
template <class F>
auto with_training_model(const TrainSettings& a, const SaeConfig& cfg, nlohmann::json& tr, F&& f) {
  return with_variant(a.arch, [&]<class V>(std::type_identity<V>) {
    return V::with_model(cfg, a, resolve_options<V>(a.options), tr, f);
  });
}

namespace detail {

/// Trains @p model on @p source (from scratch, or from the checkpoint in @p resume), writing a
/// checkpoint every a.checkpoint_every steps; then folds the normalisation factor into the
/// weights and, with a.out, writes the SAE directory and its train_log.jsonl.
template <class Model>
TrainRun train_model(Model& model, const TrainSettings& a, const TrainData& data, const TrainData* target, double scale,
                     const std::optional<ResumeFrom>& resume, nlohmann::json meta, const TrainHooks& h) {
  using nlohmann::json;
  TrainSource source(data, a, scale, target);
  TrainState<float> st;
  // Data-parallel (h.collectives): rank 0 writes; every rank decides together when to stop.
  const int ranks = h.collectives ? h.collectives->size() : 1;
  const bool writer = !h.collectives || h.collectives->rank() == 0;
  if (ranks > 1) {
    if (const std::string why = data_parallel_refusal(model); !why.empty()) throw SettingsError(why);
  }
  if (resume) {
    const int was = resume->state.at("extra").value("ranks", 1);
    if (was != ranks)
      throw SettingsError("the checkpoint " + resume->file.string() + " was written by a run of " +
                          std::to_string(was) + " rank(s); resume it with the same number (mpirun -np " +
                          std::to_string(was) + "), not " + std::to_string(ranks));
  }
  std::vector<std::string> log_lines;
  std::int64_t tokens0 = 0;  // tokens trained before this process started
  if (resume) {
    const json extra = load_checkpoint(resume->file, model, st);
    for (const auto& l : extra.at("log")) log_lines.push_back(l.get<std::string>());
    const std::int64_t pos = extra.at("source").at("position").get<std::int64_t>();
    if (pos != st.tokens)
      throw io::IoError(resume->file, "data position " + std::to_string(pos) + " does not match " +
                                          std::to_string(st.tokens) + " tokens trained");
    source.seek(pos);
    tokens0 = st.tokens;
    say(h, "sae train: resuming from " + resume->file.string() + " at step " + std::to_string(st.step) + "/" +
               std::to_string(a.opt.steps));
  }
  const std::filesystem::path ckpt_dir = a.checkpoint_dir.empty() ? a.out / "checkpoint" : a.checkpoint_dir;
  if (a.checkpoint_every > 0 && writer) remove_stale_checkpoint_temps(ckpt_dir);
  const json args_json = train_settings_to_json(a);
  std::int64_t checkpointed = -1;
  auto write_checkpoint = [&](const TrainState<float>& s) {
    if (checkpointed < 0) {  // created at the first checkpoint: a run that fails earlier leaves none
      std::error_code ec;
      std::filesystem::create_directories(ckpt_dir, ec);
      if (ec) throw io::IoError(ckpt_dir, "cannot create the checkpoint directory: " + ec.message());
    }
    json log = json::array();
    for (const auto& l : log_lines) log.push_back(l);
    std::error_code cwd_ec;
    const std::string cwd = std::filesystem::current_path(cwd_ec).string();
    const json extra = {{"args", args_json},
                        {"cwd", cwd},
                        {"threads", num_threads()},
                        {"scale", scale},
                        {"scale_bits", std::bit_cast<std::uint64_t>(scale)},
                        {"source", source.describe()},
                        {"data", data.fingerprint()},
                        {"target", target ? target->fingerprint() : json(nullptr)},
                        {"log", log},
                        {"gemm_backend", gemm_backend_name()},
                        {"precision", a.precision},
                        {"ranks", ranks}};
    save_checkpoint(ckpt_dir / checkpoint_file_name, model, s, extra);
    checkpointed = s.step;
  };
  auto on_step = [&](const TrainState<float>& s) {
    if (ranks > 1) {  // data-parallel: rank 0 writes; a stop or a failed write ends every rank
      // Every rank completes Adam's moments (each updates its own columns') before rank 0 writes.
      const bool due = a.checkpoint_every > 0 && s.step % a.checkpoint_every == 0;
      if (due) gather_sharded_moments(*h.collectives, st.adam);
      std::exception_ptr failed;
      if (writer && due) try {
          write_checkpoint(s);
        } catch (...) {
          failed = std::current_exception();
        }
      std::uint8_t flags = static_cast<std::uint8_t>((failed ? 2 : 0) | (h.stop && s.step < a.opt.steps && h.stop()));
      h.collectives->any(&flags, 1);
      if (failed) std::rethrow_exception(failed);
      if (flags & 2) throw std::runtime_error("rank 0 failed to write a checkpoint; all ranks stop");
      if (!(flags & 1)) return;
      std::filesystem::path written;
      if (a.checkpoint_every > 0) {
        if (!due) gather_sharded_moments(*h.collectives, st.adam);
        if (writer && !due) write_checkpoint(s);
        written = ckpt_dir / checkpoint_file_name;
      }
      throw TrainingInterrupted(s.step, written);
    }
    if (a.checkpoint_every > 0 && s.step % a.checkpoint_every == 0) write_checkpoint(s);
    if (h.stop && s.step < a.opt.steps && h.stop()) {
      std::filesystem::path written;
      if (a.checkpoint_every > 0) {
        if (checkpointed != s.step) write_checkpoint(s);
        written = ckpt_dir / checkpoint_file_name;
      }
      throw TrainingInterrupted(s.step, written);
    }
  };
  const TrainResult r = train_from(
      model, source, a.opt, st,
      [&](const TrainProgress& p) {
        const std::string line = progress_line(p);
        if (h.progress)
          h.progress(p, line);
        else
          std::cerr << line << std::endl;
        json j = {{"step", p.step}, {"tokens", p.tokens},   {"loss", p.loss},
                  {"l0", p.l0},     {"fvu", p.fvu},         {"dead_fraction", p.dead_fraction},
                  {"lr", p.lr},     {"seconds", p.seconds}, {"tokens_per_s", p.tokens_per_s}};
        for (const auto& [name, v] : p.terms) j[name] = v;
        log_lines.push_back(j.dump());
      },
      on_step, h.collectives);
  meta["training"]["tokens"] = r.tokens;
  if (ranks > 1) meta["training"]["ranks"] = ranks;
  meta["training"]["seconds"] = r.seconds;
  meta["training"]["gemm_backend"] = gemm_backend_name();
  meta["training"]["encoder_precision"] = products_precision<Model>();
  if (resume) meta["training"]["resumed_from_step"] = resume->state.at("step");
  if (scale != 1.0) fold_input_scale(model.params(), scale);  // the saved SAE works on raw activations
  model.set_metadata(meta);
  if (!a.out.empty() && writer) {
    // The SAE and its log change together (io::DirectoryWriter); checkpoint/ is kept.
    io::DirectoryWriter out(a.out, io::saelens_config_file, io::saelens_owned_files());
    save_sae(out, model);
    std::string log;
    for (const auto& l : log_lines) log += l + "\n";
    out.write_file("train_log.jsonl",
                   std::span<const std::byte>(reinterpret_cast<const std::byte*>(log.data()), log.size()));
    out.commit();
    say(h, "sae train: saved " + a.out.string());
  }
  json result = {{"out", a.out.empty() ? json(nullptr) : json(a.out.string())},
                 {"architecture", model.config().architecture},
                 {"d_in", model.d_in()},
                 {"d_out", model.config().is_transcoder() ? json(model.d_out()) : json(nullptr)},
                 {"skip", model.config().skip},
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
                 {"threads", num_threads()},
                 {"gemm_backend", gemm_backend_name()},
                 {"encoder_precision", products_precision<Model>()}};
  if (ranks > 1) result["ranks"] = ranks;
  if (scale != 1.0) result["normalize"] = {{"method", a.normalize}, {"scale", scale}};
  if (resume) result["resumed_from_step"] = resume->state.at("step");
  auto [cfg, params] = inference_form(model);
  AnySae sae = make_sae(cfg);
  sae.set_params(std::move(params));
  return {std::move(sae), std::move(result)};
}

}  // namespace detail

/// Runs the training @p settings describe (see the file comment): resumes when settings.resume
/// is set, trains on @p data when given (else on settings.data), reports through @p hooks, and
/// saves to settings.out when it is set. Throws SettingsError for bad settings,
/// std::invalid_argument for data that cannot be trained on,
/// io::IoError for files, NumericalError when training diverges or the data is not finite, and
/// TrainingInterrupted when hooks.stop asked it to stop.
/// (A template only so that a translation unit that includes this header without training does
/// not compile the training of every variant: Hooks is always TrainHooks.)
///
/// A transcoder is trained when settings.target names target files (or @p target is given with
/// @p data: arrays pairing token for token, check_paired_data).
template <class Hooks = TrainHooks>
TrainRun run_training(TrainSettings a, const Hooks& hooks = {}, const TrainData* data = nullptr,
                      const TrainData* target = nullptr) {
  using nlohmann::json;
  std::optional<detail::ResumeFrom> resume;
  if (!a.resume.empty()) {
    detail::ResumeFrom rf;
    a = detail::resume_settings(a, rf, hooks);
    resume = std::move(rf);
  }
  // The data first (headers only: cheap), so that a bad file is reported as such; then every
  // setting, all before the first step.
  std::optional<TrainData> opened;
  if (!data) {
    if (a.data.empty()) throw SettingsError("no training data: give --data (files or directories)");
    opened = TrainData::open(a.data);
    data = &*opened;
  }
  std::optional<TrainData> opened_target;
  if (!target && !a.target.empty()) {
    opened_target = TrainData::open(a.target);
    target = &*opened_target;
  }
  if (target && a.target.empty()) a.target = {target->name()};  // arrays: what the settings record
  check_train_settings(a);
  if (target) {
    check_paired_data(*data, *target);
    if (canonical_variant_name(a.arch) == TopKVariant::name && target->d_in() != data->d_in())
      throw SettingsError(
          "--arch topk with --target: a TopK transcoder is saved as sparsify's, whose output has the "
          "input's width, but the targets have d=" +
          std::to_string(target->d_in()) +
          " and the "
          "inputs d=" +
          std::to_string(data->d_in()) +
          " (use --arch batchtopk, saved as SAELens's "
          "jumprelu_transcoder)");
  }
  set_num_threads(a.threads);
  if (a.gemm != "auto") gemm::set_encoder_backend(gemm::parse_backend(a.gemm));
  kernels::set_encoder_precision(kernels::parse_precision(a.precision));  // "auto": nullopt
  const Normalization norm = parse_normalization(a.normalize);
  double scale = 1.0;
  if (resume) {
    const json& extra = resume->state.at("extra");
    scale = std::bit_cast<double>(extra.at("scale_bits").get<std::uint64_t>());
    const json& was = extra.at("data");
    const json now = data->fingerprint();
    bool same = was.at("d_in") == now.at("d_in") && was.at("tokens") == now.at("tokens") &&
                was.at("files").size() == now.at("files").size();
    for (std::size_t f = 0; same && f < now.at("files").size(); ++f)
      same = was.at("files")[f].at("rows") == now.at("files")[f].at("rows") &&
             was.at("files")[f].at("dtype") == now.at("files")[f].at("dtype");
    if (!same)
      throw io::IoError(resume->file,
                        "the activation files differ from the ones the run was trained on (" + was.dump() + ")");
    const json was_target = extra.value("target", json(nullptr));
    const json now_target = target ? target->fingerprint() : json(nullptr);
    if (was_target.is_null() != now_target.is_null() ||
        (!now_target.is_null() &&
         (was_target.at("d_in") != now_target.at("d_in") || was_target.at("tokens") != now_target.at("tokens"))))
      throw io::IoError(resume->file,
                        "the target files differ from the ones the run was trained on (" + was_target.dump() + ")");
  } else {
    scale = data->scale(norm);
  }
  const SaeConfig cfg = training_config(a, data->d_in(), target ? target->d_in() : 0);
  check_training_memory(a, *data);
  const bool uses_k = cfg.k > 0;
  std::string head = "sae train: " + cfg.architecture +
                     (cfg.is_transcoder() ? (cfg.skip ? " skip transcoder" : " transcoder") : "") + " d_in " +
                     std::to_string(cfg.d_in) + (cfg.is_transcoder() ? " d_out " + std::to_string(cfg.d_out) : "") +
                     " d_sae " + std::to_string(cfg.d_sae);
  if (uses_k) head += " k " + std::to_string(cfg.k);
  char lr[32];
  std::snprintf(lr, sizeof lr, "%g", a.opt.lr);
  head += ", " + std::to_string(data->tokens()) + " tokens from " + data->name() + ", " + std::to_string(a.opt.steps) +
          " steps of " + std::to_string(a.opt.batch) + ", lr " + lr + ", " + std::to_string(num_threads()) + " threads";
  detail::say(hooks, head);
  if (data->tokens() < a.opt.batch)
    detail::say(hooks, "sae train: warning: " + std::to_string(data->tokens()) +
                           " tokens are fewer than one batch of " + std::to_string(a.opt.batch) +
                           ": every batch repeats tokens");
  if (norm != Normalization::None) {
    char s[32];
    std::snprintf(s, sizeof s, "%g", scale);
    detail::say(hooks, "sae train: normalisation " + a.normalize + ": activations scaled by " + s);
  }

  json meta = {{"libsae_version", version_string}};
  if (data->in_memory()) {
    meta["dataset_path"] = data->name();
  } else if (a.data.size() == 1) {
    meta["dataset_path"] = a.data.front().string();
  } else {
    meta["dataset_path"] = json::array();
    for (const auto& p : a.data) meta["dataset_path"].push_back(p.string());
  }
  if (target) {
    if (target->in_memory() || a.target.size() != 1) {
      meta["target_path"] = json::array();
      for (const auto& p : a.target) meta["target_path"].push_back(p.string());
    } else {
      meta["target_path"] = a.target.front().string();
    }
  }
  if (norm != Normalization::None)
    meta["activation_normalization"] = {{"method", a.normalize}, {"scale", scale}, {"folded_into_weights", true}};
  json& tr = meta["training"];
  tr = {{"architecture", cfg.architecture},
        {"steps", a.opt.steps},
        {"batch", a.opt.batch},
        {"lr", a.opt.lr},
        {"seed", a.opt.seed},
        {"warmup_steps", a.opt.schedule().warmup_steps},
        {"decay_steps", a.opt.schedule().decay_steps}};
  if (data->files() > 1 || a.shuffle_buffer)
    tr["shuffle_buffer"] = a.shuffle_buffer ? json(*a.shuffle_buffer) : json("default");
  return with_training_model(a, cfg, tr, [&](auto& model) {
    return detail::train_model(model, a, *data, target, scale, resume, meta, hooks);
  });
}

}  // namespace sae
