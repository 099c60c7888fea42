// libsae.train: the keywords become sae::TrainSettings, the array a sae::TrainData view, and
// sae::run_training runs with hooks that take the GIL back between steps (progress, the user's
// callback, Ctrl-C). Its own translation unit: it instantiates the training of every variant.
#include "common.hpp"

namespace libsae_py {

// ------------------------------------------------------------------------------------------
// Training.

namespace {

/// TrainSettings from the keywords of libsae.train (names as `sae train`'s flags with '_'),
/// through the checkpoint schema (train_settings_to_json): one list of names, type-checked.
sae::TrainSettings settings_from(const py::dict& kw) {
  sae::TrainSettings a;
  json j = sae::train_settings_to_json(a);
  const json given = json::parse(py::module_::import("json").attr("dumps")(kw).cast<std::string>());
  for (const auto& [key, value] : given.items()) {
    if (key == "resume") {
      a.resume = value.get<std::string>();
    } else if (key == "gemm") {
      a.gemm = value.get<std::string>();
    } else if (key == "precision") {
      a.precision = value.get<std::string>();
    } else if (j.contains(key)) {
      if ((key == "data" || key == "target") && value.is_string())
        j[key] = json::array({value});
      else
        j[key] = value;
    } else {
      throw std::invalid_argument("unknown training option '" + key + "'");
    }
    a.given.insert(key);
  }
  sae::TrainSettings parsed;
  try {
    parsed = sae::train_settings_from_json(j);
  } catch (const json::exception& e) {
    throw std::invalid_argument(std::string("bad training option: ") + e.what());
  }
  parsed.resume = a.resume;
  parsed.gemm = a.gemm;
  parsed.precision = a.precision;
  parsed.given = a.given;
  return parsed;
}

}  // namespace

py::tuple train(const py::dict& kw, const std::optional<py::array>& X, const std::string& name,
                const py::object& callback, bool verbose, const std::optional<py::array>& Y,
                const std::string& target_name) {
  sae::TrainSettings a = settings_from(kw);
  std::optional<sae::TrainData> data, target;
  if (X) {
    const Tokens t = tokens_of(*X, "X");
    data = sae::TrainData::borrow(t.data, t.d, t.n, name);
  }
  if (Y) {
    if (!X) throw std::invalid_argument("target as an array needs X as an array (the inputs it pairs with)");
    const Tokens t = tokens_of(*Y, "target");
    target = sae::TrainData::borrow(t.data, t.d, t.n, target_name);
  }
  py::object write = py::module_::import("sys").attr("stderr").attr("write");
  py::object flush = py::module_::import("sys").attr("stderr").attr("flush");
  std::optional<py::error_already_set> pending;  // KeyboardInterrupt (or another signal handler's error)
  sae::TrainHooks hooks;
  hooks.progress = [&](const sae::TrainProgress& p, const std::string& line) {
    py::gil_scoped_acquire gil;
    if (!callback.is_none()) {
      py::dict d;
      d["step"] = p.step;
      d["steps"] = p.steps;
      d["tokens"] = p.tokens;
      d["loss"] = p.loss;
      d["l0"] = p.l0;
      d["fvu"] = p.fvu;
      d["dead_fraction"] = p.dead_fraction;
      d["lr"] = p.lr;
      d["seconds"] = p.seconds;
      d["tokens_per_s"] = p.tokens_per_s;
      d["eta_seconds"] = p.eta_seconds;
      for (const auto& [term, v] : p.terms) d[py::str(term)] = v;
      try {
        callback(d);
      } catch (py::error_already_set& e) {
        // Ctrl-C while the callback's Python code runs arrives as KeyboardInterrupt here: it
        // stops the run like Ctrl-C between steps (checkpoint, message), then is re-raised.
        // Any other exception from the callback ends the run at once.
        if (!e.matches(PyExc_KeyboardInterrupt)) throw;
        pending.emplace(std::move(e));
      }
    } else if (verbose) {
      write(line + "\n");
      flush();
    }
  };
  hooks.message = [&](const std::string& line) {
    if (!verbose) return;
    py::gil_scoped_acquire gil;
    write("libsae." + (line.rfind("sae ", 0) == 0 ? line.substr(4) : line) + "\n");
    flush();
  };
  hooks.stop = [&] {
    py::gil_scoped_acquire gil;
    if (pending) return true;  // a KeyboardInterrupt the callback raised
    if (PyErr_CheckSignals() != 0) {
      pending.emplace();  // fetches (and clears) the error the signal handler raised
      return true;
    }
    return false;
  };
  std::optional<sae::TrainRun> run;
  try {
    py::gil_scoped_release nogil;
    run.emplace(sae::run_training(std::move(a), hooks, data ? &*data : nullptr, target ? &*target : nullptr));
  } catch (const sae::TrainingInterrupted& e) {
    if (verbose) {
      write(std::string("libsae.train: ") + e.what() + "\n");
      flush();
    }
    if (pending) throw *pending;
    PyErr_SetString(PyExc_KeyboardInterrupt, e.what());
    throw py::error_already_set();
  }
  if (pending) throw *pending;  // Ctrl-C during the last step's callback: the run is saved, the interrupt stands
  auto* s = new PySae{std::move(run->sae), sae::io::SaeFormat::SAELens, {}};
  return py::make_tuple(py::cast(s, py::return_value_policy::take_ownership), json_to_python(run->result));
}

}  // namespace libsae_py
