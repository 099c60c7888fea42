// Checkpoints: a run interrupted at a step and resumed from its last checkpoint ends bit for bit
// where the uninterrupted run ends, for every architecture's state; faults keep the last good
// checkpoint; damaged or mismatched checkpoints are reported with the file.
#include "helpers.hpp"

#include <sae/train/checkpoint.hpp>
#include <sae/train/streaming.hpp>

#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

using sae::Index;
using sae::Mat;
using sae_test::TempDir;

namespace {

struct Interrupted {};

template <class Scalar>
std::string bytes_of(const sae::Parameters<Scalar>& p) {
  std::string out;
  sae::zip_tensors(
      [&](const char*, const auto& t) {
        out.append(reinterpret_cast<const char*>(t.data()), static_cast<std::size_t>(t.size()) * sizeof(Scalar));
      },
      p);
  return out;
}

/// Everything that must match after resuming: weights, Adam, the model's own state.
template <class Model>
struct Snapshot {
  std::string params, m, v;
  std::int64_t t = 0, step = 0, tokens = 0;
  std::vector<std::int64_t> aux_since_fired, trainer_since_fired;
  std::uint64_t threshold_bits = 0;
  bool threshold_started = false;

  Snapshot(const Model& model, const sae::TrainState<typename Model::scalar_type>& st) {
    params = bytes_of(model.params());
    m = bytes_of(st.adam.first_moment());
    v = bytes_of(st.adam.second_moment());
    t = st.adam.steps_taken();
    step = st.step;
    tokens = st.tokens;
    trainer_since_fired = st.since_fired;
    if constexpr (Model::loss_type::template has<sae::AuxK>())
      aux_since_fired = model.loss().template get<sae::AuxK>().since_fired;
    if constexpr (requires { model.activation().threshold_started; }) {
      std::memcpy(&threshold_bits, &model.activation().threshold, 8);
      threshold_started = model.activation().threshold_started;
    }
  }
  bool operator==(const Snapshot&) const = default;
};

template <class Model>
void configure(Model& model) {
  if constexpr (Model::loss_type::template has<sae::AuxK>()) {
    auto& aux = model.loss().template get<sae::AuxK>();
    aux.dead_tokens = 256;  // latents die within a few steps, so AuxK's state matters
    aux.k_aux = 4;
  }
  if constexpr (Model::loss_type::template has<sae::L1Sparsity>())
    model.loss().template get<sae::L1Sparsity>().warmup_steps = 10;
  if constexpr (Model::loss_type::template has<sae::L0Sparsity>())
    model.loss().template get<sae::L0Sparsity>().warmup_steps = 10;
  if constexpr (Model::loss_type::template has<sae::TargetL0>()) model.loss().template get<sae::TargetL0>().target = 3;
}

/// Uninterrupted run vs. a run that checkpoints every 7 steps, "crashes" after step 24 (an
/// exception from the step hook, after the checkpoint of step 21 was written), and is resumed
/// by a fresh model and source from that checkpoint.
template <class Model, class MakeSource>
bool check_resume(const sae::SaeConfig& cfg, MakeSource make_source, const char* what) {
  INFO(what);
  using Scalar = typename Model::scalar_type;
  sae::TrainOptions opts;
  opts.steps = 40;
  opts.batch = 64;
  opts.lr = 3e-3;
  opts.seed = 11;
  opts.warmup_steps = 5;
  opts.decay_steps = 10;
  opts.log_every = 4;

  // Uninterrupted; train() from step 0 is the same as train_from() with a fresh state.
  Model ref(cfg);
  configure(ref);
  sae::TrainState<Scalar> ref_state;
  {
    auto src = make_source();
    sae::train_from(
        ref, *src, opts, ref_state, [](const sae::TrainProgress&) {}, [](const sae::TrainState<Scalar>&) {});
    Model plain(cfg);
    configure(plain);
    auto src2 = make_source();
    sae::train(plain, *src2, opts);
    REQUIRE(bytes_of(plain.params()) == bytes_of(ref.params()));
  }
  const Snapshot<Model> want(ref, ref_state);

  TempDir dir("ckpt");
  const auto file = dir / sae::checkpoint_file_name;
  {
    Model model(cfg);
    configure(model);
    auto src = make_source();
    sae::TrainState<Scalar> st;
    REQUIRE_THROWS_AS(sae::train_from(
                          model, *src, opts, st, [](const sae::TrainProgress&) {},
                          [&](const sae::TrainState<Scalar>& s) {
                            if (s.step % 7 == 0) sae::save_checkpoint(file, model, s, {{"position", src->position()}});
                            if (s.step == 24) throw Interrupted{};
                          }),
                      Interrupted);
  }
  REQUIRE(dir.entries() == 1);  // only the checkpoint, no temporary files
  const nlohmann::json info = sae::read_checkpoint_state(file);
  REQUIRE(info.at("step") == 21);
  REQUIRE(info.at("tokens") == 21 * 64);

  Model model(cfg);  // a fresh process: nothing but the checkpoint
  configure(model);
  sae::TrainState<Scalar> st;
  const nlohmann::json extra = sae::load_checkpoint(file, model, st);
  REQUIRE(st.step == 21);
  bool aux_matters = false;
  if constexpr (Model::loss_type::template has<sae::AuxK>()) {
    const auto& aux = model.loss().template get<sae::AuxK>();
    REQUIRE(aux.since_fired.size() == static_cast<std::size_t>(cfg.d_sae));
    aux_matters = aux.dead_count() > 0;  // dead latents: AuxK's counters steer the next steps
  }
  if constexpr (requires { model.activation().threshold_started; }) REQUIRE(model.activation().threshold_started);
  auto src = make_source();
  src->seek(extra.at("position").get<std::int64_t>());
  std::vector<std::int64_t> reported;
  sae::train_from(
      model, *src, opts, st, [&](const sae::TrainProgress& p) { reported.push_back(p.step); },
      [](const sae::TrainState<Scalar>&) {});
  REQUIRE(reported == std::vector<std::int64_t>{24, 28, 32, 36, 40});
  const Snapshot<Model> got(model, st);
  REQUIRE(got.step == 40);
  REQUIRE(got.params == want.params);  // bit-identical weights
  REQUIRE(got.m == want.m);
  REQUIRE(got.v == want.v);
  REQUIRE(got == want);

  // Negative control: forgetting AuxK's counters changes the weights, so the test can see them.
  if constexpr (Model::loss_type::template has<sae::AuxK>()) {
    if (aux_matters) {
      Model f2(cfg);
      configure(f2);
      sae::TrainState<Scalar> st3;
      const nlohmann::json e3 = sae::load_checkpoint(file, f2, st3);
      f2.loss().template get<sae::AuxK>().since_fired.clear();
      auto src3 = make_source();
      src3->seek(e3.at("position").get<std::int64_t>());
      sae::train_from(
          f2, *src3, opts, st3, [](const sae::TrainProgress&) {}, [](const sae::TrainState<Scalar>&) {});
      REQUIRE(bytes_of(f2.params()) != want.params);
    }
  }
  return aux_matters;
}

sae::SaeConfig small_config() {
  sae::SaeConfig cfg;
  cfg.d_in = 16;
  cfg.d_sae = 48;
  cfg.k = 3;
  return cfg;
}

}  // namespace

TEST_CASE("Checkpoint: interrupted and resumed training is bit-identical for every architecture",
          "[train][io][checkpoint]") {
  sae::SyntheticOptions o;
  o.d_in = 16;
  o.features = 32;
  o.samples = 1000;  // 40 steps of 64 = 2.56 epochs: the resume crosses an epoch boundary
  o.seed = 2;
  const auto data = sae::make_superposition(o);
  auto in_memory = [&] { return std::make_unique<sae::ShuffledBatches<float>>(data.X, 64, 17); };
  const sae::SaeConfig cfg = small_config();
  REQUIRE(check_resume<sae::TopKSae<float>>(cfg, in_memory, "topk + auxk"));  // with dead latents
  check_resume<sae::BatchTopKSae<float>>(cfg, in_memory, "batchtopk + auxk");
  check_resume<sae::OrtSae<float>>(cfg, in_memory, "ortsae");
  check_resume<sae::JumpReluSae<float>>(cfg, in_memory, "jumprelu + l0");
  check_resume<sae::JumpReluTargetSae<float>>(cfg, in_memory, "jumprelu + target l0");
  check_resume<sae::ReluSae<float>>(cfg, in_memory, "relu + l1");

  // Double precision, and the streaming source over 4 files with a small shuffle buffer.
  auto in_memory_d = [&] { return std::make_unique<sae::ShuffledBatches<double>>(data.X, 64, 17); };
  check_resume<sae::TopKSae<double>>(cfg, in_memory_d, "topk, double");
  TempDir dir("ckpt_stream");
  for (int f = 0; f < 4; ++f)
    sae::io::save_npy_matrix(dir / ("part" + std::to_string(f) + ".npy"), data.X.middleCols(250 * f, 250));
  const sae::NpyDataset ds = sae::NpyDataset::open({dir.path()});
  sae::StreamingOptions so;
  so.batch = 64;
  so.shuffle_buffer = 300;
  so.seed = 4;
  so.scale = 1.7;
  auto streaming = [&] { return std::make_unique<sae::StreamingBatches<float>>(ds, so); };
  check_resume<sae::BatchTopKSae<float>>(cfg, streaming, "batchtopk, streaming 4 files");
}

TEST_CASE("Checkpoint: a NaN in the input stops training and keeps the last good checkpoint",
          "[train][io][checkpoint]") {
  const Index N = 2000, B = 50;
  Mat<float> X = sae_test::random_matrix<float>(8, N, 3);
  // The first token of batch 13 (1-based step 13) becomes NaN.
  sae::ShuffledBatches<float> probe(X, B, 1);
  for (int i = 0; i < 12; ++i) probe.next();
  probe.next();
  const Index bad = probe.token_id(0);
  X(5, bad) = std::numeric_limits<float>::quiet_NaN();

  sae::SaeConfig cfg;
  cfg.d_in = 8;
  cfg.d_sae = 16;
  cfg.k = 2;
  sae::TopKSae<float> model(cfg);
  sae::ShuffledBatches<float> src(X, B, 1);
  src.set_name("acts.npy");
  sae::TrainOptions opts;
  opts.steps = 30;
  opts.batch = B;
  TempDir dir("ckpt_nan");
  const auto file = dir / sae::checkpoint_file_name;
  sae::TrainState<float> st;
  std::string saved_at_10;
  try {
    sae::train_from(
        model, src, opts, st, [](const sae::TrainProgress&) {},
        [&](const sae::TrainState<float>& s) {
          if (s.step % 5 == 0) {
            sae::save_checkpoint(file, model, s);
            if (s.step == 10) saved_at_10 = sae_test::read_all(file);
          }
        });
    FAIL("no error");
  } catch (const sae::NumericalError& e) {
    REQUIRE_THAT(e.what(), Catch::Contains("step 13: input activation is nan at acts.npy row " + std::to_string(bad) +
                                           ", dimension 5"));
  }
  REQUIRE(sae_test::read_all(file) == saved_at_10);
  REQUIRE(sae::read_checkpoint_state(file).at("step") == 10);
  REQUIRE(dir.entries() == 1);

  // Non-finite weights are never written over a good checkpoint.
  sae::TopKSae<float> broken(cfg);
  sae::TrainState<float> bst;
  sae::load_checkpoint(file, broken, bst);
  broken.params().W_dec(0, 0) = std::numeric_limits<float>::infinity();
  bst.step = 11;
  REQUIRE_THROWS_WITH(sae::save_checkpoint(file, broken, bst),
                      Catch::Contains("step 11") && Catch::Contains("checkpoint not written"));
  REQUIRE(sae_test::read_all(file) == saved_at_10);
  REQUIRE(dir.entries() == 1);
}

TEST_CASE("Checkpoint: mismatched, damaged and foreign files are reported with the path", "[train][io][checkpoint]") {
  const sae::SaeConfig cfg = small_config();
  const Mat<float> X = sae_test::random_matrix<float>(16, 256, 8);
  sae::TopKSae<float> model(cfg);
  sae::ShuffledBatches<float> src(X, 64, 1);
  sae::TrainOptions opts;
  opts.steps = 3;
  TempDir dir("ckpt_bad");
  const auto file = dir / sae::checkpoint_file_name;
  sae::TrainState<float> st;
  sae::train_from(
      model, src, opts, st, [](const sae::TrainProgress&) {},
      [&](const sae::TrainState<float>& s) {
        sae::save_checkpoint(file, model, s, {{"note", "x"}});
      });
  REQUIRE(sae::find_checkpoint(dir.path()) == file);
  REQUIRE(sae::find_checkpoint(file) == file);

  sae::TrainState<float> s2;
  sae::BatchTopKSae<float> other_arch(cfg);
  sae_test::require_io_error(
      file, [&] { sae::load_checkpoint(file, other_arch, s2); }, "checkpoint is for a topk SAE");
  sae::SaeConfig wide = cfg;
  wide.d_sae = 64;
  sae::TopKSae<float> other_shape(wide);
  sae_test::require_io_error(
      file, [&] { sae::load_checkpoint(file, other_shape, s2); }, "d_sae=48");
  sae::TopKSae<double> other_scalar(cfg);
  sae::TrainState<double> sd;
  sae_test::require_io_error(
      file, [&] { sae::load_checkpoint(file, other_scalar, sd); }, "float32");

  // Truncated: the safetensors reader reports it; an SAE weights file is not a checkpoint.
  const std::string good = sae_test::read_all(file);
  sae_test::write_all(dir / "cut.safetensors", good.substr(0, good.size() - 10));
  sae_test::require_io_error(dir / "cut.safetensors", [&] { sae::read_checkpoint_state(dir / "cut.safetensors"); });
  sae::save_sae(dir / "sae", model);
  const auto weights = dir / "sae" / "sae_weights.safetensors";
  sae_test::require_io_error(
      weights, [&] { sae::read_checkpoint_state(weights); }, "not a libsae checkpoint");
  sae_test::require_io_error(
      dir / "nothing", [&] { sae::find_checkpoint(dir / "nothing"); }, "no checkpoint found");

  // A good load changes the model; a failed one changes nothing.
  sae::TopKSae<float> fresh(cfg);
  sae::TrainState<float> fs;
  REQUIRE(sae::load_checkpoint(file, fresh, fs).at("note") == "x");
  REQUIRE(fresh.params().W_enc == model.params().W_enc);
  REQUIRE(fs.step == 3);
  REQUIRE(fs.adam.steps_taken() == 3);

  // Stale temporary files of a killed writer are cleaned up; a live process's stay.
  const std::string dead =
      std::string(sae::checkpoint_file_name) + ".tmp." + std::to_string(sae_test::dead_pid()) + ".0";
  const std::string live = std::string(sae::checkpoint_file_name) + ".tmp." + std::to_string(::getppid()) + ".0";
  sae_test::write_all(dir / dead, "partial");
  sae_test::write_all(dir / live, "partial");
  sae::remove_stale_checkpoint_temps(dir.path());
  REQUIRE(!std::filesystem::exists(dir / dead));
  REQUIRE(std::filesystem::exists(dir / live));
  REQUIRE(std::filesystem::exists(file));
}
