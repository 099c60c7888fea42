/// @file sae/train/checkpoint.hpp
/// Training checkpoints: everything a run needs to continue bit for bit, in one safetensors
/// file written atomically.
///
/// Format (`checkpoint.safetensors`, version 1): tensors in the checkpoint's Scalar (F32 for
/// float training, F64 for double), raw bytes, so they round-trip exactly:
///
///     model.W_enc [d_sae, d_in], model.W_dec [d_sae, d_out]  libsae layout (column j of the d x m matrix
///                                               = row j), NOT SAELens's W_enc [d_in, d_sae]
///     model.b_enc [d_sae], model.b_dec [d_out], model.threshold [d_sae] (JumpReLU only)
///     model.W_skip [d_in, d_out]                 skip transcoders only (libsae layout, d_out x d_in)
///     adam.m.<tensor>, adam.v.<tensor>           Adam's moments, same shapes
///     trainer.since_fired [d_sae] I64             tokens since each latent fired (reports)
///     loss.<term>.<key> [d_sae] I64               a loss term's per-latent counts (PolicyState::counts;
///                                                 AuxK's loss.auxk_loss.since_fired)
///     activation.<key> [d_sae] I64                the activation's (none has any yet)
///
/// and `__metadata__` = {"format": "libsae-checkpoint", "state": JSON text} with the JSON
///
///     {"format": "libsae-checkpoint", "version": 1, "architecture", "d_in", "d_sae", "scalar",
///      "d_out", "skip" (transcoders only; absent: d_out = d_in, no W_skip),
///      "step", "tokens", "adam": {"t", "beta1", "beta2", "eps"},
///      "activation": {...}  (the activation's PolicyState values: BatchTopK's inference threshold),
///      "loss": {"<term>": {...}}  (a loss term's PolicyState values, when it has any),
///      "window": {...} (progress sums since the last report), "extra": {caller's JSON}}
///
/// (every double also as its IEEE bit pattern, `<name>_bits`, which is what is read back).
/// `extra` is where a caller keeps what it needs to rebuild the run: the data source's position
/// and seed, normalisation factor, settings, log lines (the `sae train` tool does).
///
/// One file, so one atomic replacement (io::AtomicFile: temporary file, fsync, rename, fsync
/// of the directory): a crash at any moment leaves either the previous checkpoint or the new
/// one, never a mixture of two steps.
#pragma once

#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <span>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>

#include "../config.hpp"
#include "../core/parameters.hpp"
#include "../core/policies.hpp"
#include "../io/error.hpp"
#include "../io/safetensors.hpp"
#include "../optim/adam.hpp"
#include "trainer.hpp"

namespace sae {

inline constexpr const char* checkpoint_file_name = "checkpoint.safetensors";
inline constexpr int checkpoint_format_version = 1;

namespace detail::ckpt {

template <class Scalar>
constexpr io::StDtype dtype() {
  static_assert(std::is_same_v<Scalar, float> || std::is_same_v<Scalar, double>,
                "checkpoints hold float or double parameters");
  return std::is_same_v<Scalar, float> ? io::StDtype::F32 : io::StDtype::F64;
}
template <class Scalar>
constexpr const char* scalar_name() {
  return std::is_same_v<Scalar, float> ? "float32" : "float64";
}

template <class T>
std::span<const std::byte> bytes(const T* p, std::size_t n) {
  return {reinterpret_cast<const std::byte*>(p), n * sizeof(T)};
}

/// Tensor shapes in the checkpoint: d x m matrices as [m, d] (C order of the column-major bytes).
template <class T>
std::vector<std::int64_t> shape_of(const T& t) {
  if constexpr (T::ColsAtCompileTime == 1)
    return {static_cast<std::int64_t>(t.size())};
  else
    return {static_cast<std::int64_t>(t.cols()), static_cast<std::int64_t>(t.rows())};
}

}  // namespace detail::ckpt

/// Writes @p model, @p st and @p extra to @p file atomically (the directory must exist).
/// Throws NumericalError, writing nothing, if the parameters or Adam's moments are not finite
/// (so the last good checkpoint survives a diverging run), io::IoError if the write fails.
template <class Model>
void save_checkpoint(const std::filesystem::path& file, const Model& model,
                     const TrainState<typename Model::scalar_type>& st,
                     const nlohmann::json& extra = nlohmann::json::object()) {
  using Scalar = typename Model::scalar_type;
  namespace dc = detail::ckpt;
  const Parameters<Scalar>& p = model.params();
  const Parameters<Scalar>& m = st.adam.first_moment();
  const Parameters<Scalar>& v = st.adam.second_moment();
  if (!p.all_finite() || !m.all_finite() || !v.all_finite())
    throw NumericalError("step " + std::to_string(st.step) +
                         ": the weights or optimizer state are not finite; checkpoint not written (" + file.string() +
                         " keeps the last good one)");
  if (!m.same_shape(p) || !v.same_shape(p))
    throw std::invalid_argument("save_checkpoint: optimizer state does not match the model");

  io::SafetensorsWriter w;
  auto add = [&](const std::string& prefix, const Parameters<Scalar>& q) {
    zip_tensors(
        [&](const char* name, const auto& t) {
          if (t.size() == 0) return;
          w.add_raw(prefix + name, dc::dtype<Scalar>(), dc::shape_of(t),
                    dc::bytes(t.data(), static_cast<std::size_t>(t.size())));
        },
        q);
  };
  add("model.", p);
  add("adam.m.", m);
  add("adam.v.", v);
  auto add_counts = [&](const std::string& name, const std::vector<std::int64_t>& c) {
    if (!c.empty())
      w.add_raw(name, io::StDtype::I64, {static_cast<std::int64_t>(c.size())}, dc::bytes(c.data(), c.size()));
  };
  add_counts("trainer.since_fired", st.since_fired);
  // The policies' own state (core/policies.hpp): values into the JSON, counts as tensors.
  auto add_state = [&](const PolicyState& ps, const std::string& prefix) {
    for (const auto& [key, c] : ps.counts) add_counts(prefix + key, c);
    return ps.values;
  };
  // The writer keeps spans of the counts until write(): the states live until then.
  std::deque<PolicyState> states;
  nlohmann::json loss_values = nlohmann::json::object();
  std::apply(
      [&](const auto&... term) {
        (
            [&] {
              PolicyState& ps = states.emplace_back();
              term.save_state(ps);
              nlohmann::json v = add_state(ps, std::string("loss.") + term.name + ".");
              if (!v.empty()) loss_values[term.name] = std::move(v);
            }(),
            ...);
      },
      model.loss().terms);
  PolicyState& act_state = states.emplace_back();
  model.activation().save_state(act_state);

  nlohmann::json j;
  j["format"] = "libsae-checkpoint";
  j["version"] = checkpoint_format_version;
  j["architecture"] = std::string(Model::architecture());
  j["d_in"] = model.d_in();
  j["d_sae"] = model.d_sae();
  if (model.config().is_transcoder()) {  // absent in SAE checkpoints (and in those of libsae < 0.9)
    j["d_out"] = model.params().d_out();
    j["skip"] = model.params().has_skip();
  }
  j["scalar"] = dc::scalar_name<Scalar>();
  j["step"] = st.step;
  j["tokens"] = st.tokens;
  nlohmann::json& a = j["adam"];
  a["t"] = st.adam.steps_taken();
  put_exact(a, "beta1", st.adam.options().beta1);
  put_exact(a, "beta2", st.adam.options().beta2);
  put_exact(a, "eps", st.adam.options().eps);
  j["activation"] = add_state(act_state, "activation.");
  if (!loss_values.empty()) j["loss"] = std::move(loss_values);
  nlohmann::json& win = j["window"];
  put_exact(win, "loss", st.window.loss);
  put_exact(win, "l0", st.window.l0);
  put_exact(win, "err", st.window.err);
  put_exact(win, "var", st.window.var);
  win["steps"] = st.window.steps;
  win["tokens"] = st.window.tokens;
  nlohmann::json terms = nlohmann::json::array();
  for (double t : st.window.terms) terms.push_back(std::bit_cast<std::uint64_t>(t));
  win["terms_bits"] = terms;
  j["extra"] = extra;
  w.metadata()["format"] = "libsae-checkpoint";
  w.metadata()["state"] = j.dump();
  w.write(file);
}

/// The JSON state of a checkpoint file (see the file comment), without touching its tensors:
/// enough to rebuild the model and the data source before load_checkpoint(). io::IoError
/// naming the file if it is not a libsae checkpoint.
inline nlohmann::json read_checkpoint_state(const std::filesystem::path& file) {
  const io::SafetensorsReader r = io::SafetensorsReader::open(file);
  const auto& md = r.metadata();
  const auto f = md.find("format");
  const auto s = md.find("state");
  if (f == md.end() || f->second != "libsae-checkpoint" || s == md.end())
    throw io::IoError(file, "not a libsae checkpoint (no libsae-checkpoint metadata)");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(s->second);
  } catch (const nlohmann::json::exception& e) {
    throw io::IoError(file, std::string("checkpoint state is not valid JSON: ") + e.what());
  }
  if (!j.is_object() || j.value("format", "") != "libsae-checkpoint")
    throw io::IoError(file, "not a libsae checkpoint");
  if (j.value("version", 0) != checkpoint_format_version)
    throw io::IoError(file, "checkpoint format version " + j.value("version", nlohmann::json()).dump() +
                                " is not supported (this libsae reads version " +
                                std::to_string(checkpoint_format_version) + ")");
  return j;
}

/// Restores @p model (parameters, BatchTopK threshold, loss-term state) and @p st (step, tokens,
/// Adam, report state) from @p file, checking that architecture, d_in, d_sae, scalar type
/// and every tensor's shape and dtype match @p model. Returns the checkpoint's "extra" JSON.
/// The caller positions the data source at st.tokens. io::IoError naming the file on any
/// mismatch or damage (nothing is changed then).
template <class Model>
nlohmann::json load_checkpoint(const std::filesystem::path& file, Model& model,
                               TrainState<typename Model::scalar_type>& st) {
  using Scalar = typename Model::scalar_type;
  namespace dc = detail::ckpt;
  const nlohmann::json j = read_checkpoint_state(file);
  const io::SafetensorsReader r = io::SafetensorsReader::open(file);
  auto fail = [&](const std::string& what) { throw io::IoError(file, what); };
  const std::string arch(Model::architecture());
  try {
    if (j.at("architecture").get<std::string>() != arch || j.at("d_in").get<std::int64_t>() != model.d_in() ||
        j.at("d_sae").get<std::int64_t>() != model.d_sae() ||
        j.at("scalar").get<std::string>() != dc::scalar_name<Scalar>() ||
        j.value("d_out", model.d_in()) != model.params().d_out() || j.value("skip", false) != model.params().has_skip())
      fail("checkpoint is for a " + j.at("architecture").get<std::string>() + " SAE with d_in=" + j.at("d_in").dump() +
           ", d_sae=" + j.at("d_sae").dump() +
           ", d_out=" + std::to_string(j.value("d_out", j.at("d_in").get<std::int64_t>())) +
           (j.value("skip", false) ? " with W_skip" : "") + " (" + j.at("scalar").get<std::string>() +
           "); this run trains a " + arch + " SAE with d_in=" + std::to_string(model.d_in()) +
           ", d_sae=" + std::to_string(model.d_sae()) + ", d_out=" + std::to_string(model.params().d_out()) +
           (model.params().has_skip() ? " with W_skip" : "") + " (" + dc::scalar_name<Scalar>() + ")");

    auto read_params = [&](const std::string& prefix, Parameters<Scalar>& q) {
      q = Parameters<Scalar>::zeros_like(model.params());
      zip_tensors(
          [&](const char* name, auto& t) {
            if (t.size() == 0) return;
            const std::string key = prefix + name;
            const io::TensorInfo& info = r.info(key);
            if (info.dtype != dc::dtype<Scalar>() || info.shape != dc::shape_of(t))
              fail("tensor '" + key + "' has the wrong dtype or shape");
            r.read_into(key, t.data(), static_cast<std::size_t>(t.size()));
          },
          q);
      if (!q.all_finite()) fail("tensors '" + prefix + "*' contain NaN or Inf");
    };
    auto read_counts = [&](const std::string& key, std::vector<std::int64_t>& c) {
      c.clear();
      if (!r.contains(key)) return;
      const io::TensorInfo& info = r.info(key);
      if (info.dtype != io::StDtype::I64 || info.shape != std::vector<std::int64_t>{model.d_sae()})
        fail("tensor '" + key + "' has the wrong dtype or shape");
      c.resize(static_cast<std::size_t>(model.d_sae()));
      r.read_into(key, c.data(), c.size());
    };

    Parameters<Scalar> p, m, v;
    read_params("model.", p);
    read_params("adam.m.", m);
    read_params("adam.v.", v);
    const nlohmann::json& a = j.at("adam");
    AdamOptions ao;
    ao.beta1 = get_exact(a, "beta1");
    ao.beta2 = get_exact(a, "beta2");
    ao.eps = get_exact(a, "eps");
    TrainState<Scalar> out;
    out.step = j.at("step").get<std::int64_t>();
    out.tokens = j.at("tokens").get<std::int64_t>();
    if (out.step < 0 || out.tokens < 0) fail("negative step or token count");
    read_counts("trainer.since_fired", out.since_fired);
    const nlohmann::json& win = j.at("window");
    out.window.loss = get_exact(win, "loss");
    out.window.l0 = get_exact(win, "l0");
    out.window.err = get_exact(win, "err");
    out.window.var = get_exact(win, "var");
    out.window.steps = win.at("steps").get<std::int64_t>();
    out.window.tokens = win.at("tokens").get<std::int64_t>();
    for (const auto& b : win.at("terms_bits"))
      out.window.terms.push_back(std::bit_cast<double>(b.get<std::uint64_t>()));

    // Everything read and checked: now change the model and the state.
    // A policy's state: its JSON values and every I64 tensor named PREFIX<key>.
    auto read_state = [&](const nlohmann::json& values, const std::string& prefix) {
      PolicyState ps;
      ps.values = values;
      for (const auto& [name, info] : r.tensors())
        if (name.rfind(prefix, 0) == 0) read_counts(name, ps.counts[name.substr(prefix.size())]);
      return ps;
    };
    auto loss_state = model.loss().terms;
    const nlohmann::json no_values = nlohmann::json::object();
    const nlohmann::json& loss_values = j.contains("loss") ? j.at("loss") : no_values;
    std::apply(
        [&](auto&... term) {
          (
              [&] {
                term.load_state(read_state(loss_values.contains(term.name) ? loss_values.at(term.name) : no_values,
                                           std::string("loss.") + term.name + "."));
              }(),
              ...);
        },
        loss_state);
    auto act_state = model.activation();
    act_state.load_state(read_state(j.at("activation"), "activation."));
    model.set_params(std::move(p));
    model.loss().terms = std::move(loss_state);
    model.activation() = std::move(act_state);
    out.adam = Adam<Scalar>(ao, model.params());
    out.adam.first_moment() = std::move(m);
    out.adam.second_moment() = std::move(v);
    out.adam.set_steps_taken(a.at("t").get<std::int64_t>());
    st = std::move(out);
    return j.value("extra", nlohmann::json::object());
  } catch (const nlohmann::json::exception& e) {
    throw io::IoError(file, std::string("checkpoint state is missing a field: ") + e.what());
  }
}

/// The checkpoint file for @p p: p itself if it is a file, else p/checkpoint.safetensors, else
/// p/checkpoint/checkpoint.safetensors (the `sae train --out DIR` layout). io::IoError otherwise.
inline std::filesystem::path find_checkpoint(const std::filesystem::path& p) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::is_regular_file(p, ec)) return p;
  for (const fs::path& c : {p / checkpoint_file_name, p / "checkpoint" / checkpoint_file_name})
    if (fs::is_regular_file(c, ec)) return c;
  throw io::IoError(p, std::string("no checkpoint found (looked for ") + (p / checkpoint_file_name).string() + " and " +
                           (p / "checkpoint" / checkpoint_file_name).string() + ")");
}

/// Removes the temporary files killed writers left in @p dir (checkpoint.safetensors.tmp.*
/// whose process is gone: io::is_stale_temp). Another live run's temporaries are kept.
inline void remove_stale_checkpoint_temps(const std::filesystem::path& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return;
  std::vector<fs::path> stale;
  for (fs::directory_iterator it(dir, ec); !ec && it != fs::directory_iterator(); it.increment(ec))
    if (io::is_stale_temp(it->path().filename().string(), checkpoint_file_name)) stale.push_back(it->path());
  for (const auto& s : stale) fs::remove(s, ec);
}

}  // namespace sae
