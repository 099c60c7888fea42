// libsae._core: the pybind11 bindings under `import libsae` (python/src/libsae/__init__.py is
// the public API; it converts inputs and builds scipy matrices, this file does the work).
//
// Conventions shared by every function here:
//   - Tokens arrive as C-contiguous float32 numpy arrays [N, d]; that memory IS the library's
//     d x N column-major batch layout, so it is mapped, never copied (the Python layer converts
//     other inputs once before calling).
//   - Results are numpy arrays allocated here and filled in place ([N, m] C order = m x N
//     column-major codes; [N, d] = d x N reconstructions), or std::vectors moved into numpy
//     arrays without a copy (sparse codes).
//   - The GIL is released around all numerical work; the hooks of a training run take it back
//     to print progress, call the user's callback and check for Ctrl-C.
//   - Errors: std::invalid_argument -> ValueError, sae::io::IoError -> libsae.FormatError
//     (an OSError), sae::NumericalError -> libsae.NumericalError (an ArithmeticError).

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <sae/sae.hpp>

#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace py = pybind11;

namespace {

using sae::Index;
using nlohmann::json;

/// A loaded or trained SAE, and the format it came from (convert semantics on save).
struct PySae {
  sae::AnySae model;
  sae::io::SaeFormat format = sae::io::SaeFormat::SAELens;

  Index d_in() const {
    return std::visit([](const auto& m) { return m.d_in(); }, model);
  }
  Index d_sae() const {
    return std::visit([](const auto& m) { return m.d_sae(); }, model);
  }
  const sae::SaeConfig& config() const {
    return std::visit([](const auto& m) -> const sae::SaeConfig& { return m.config(); }, model);
  }
  const sae::Parameters<float>& params() const {
    return std::visit([](const auto& m) -> const sae::Parameters<float>& { return m.params(); }, model);
  }
};

py::object json_to_python(const json& j) { return py::module_::import("json").attr("loads")(j.dump()); }

/// A numpy array owning @p v (moved, not copied).
template <class T>
py::array_t<T> to_numpy(std::vector<T>&& v) {
  auto* heap = new std::vector<T>(std::move(v));
  py::capsule owner(heap, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return py::array_t<T>({static_cast<py::ssize_t>(heap->size())}, {static_cast<py::ssize_t>(sizeof(T))},
                        heap->data(), owner);
}

/// The d x N view of a C-contiguous float32 array [N, d]; ValueError naming @p what otherwise
/// (the Python layer normally converts first).
struct Tokens {
  const float* data = nullptr;
  Index d = 0, n = 0;
  sae::interp::MatrixBatches batches() const { return {data, d, n}; }
  Eigen::Map<const sae::Mat<float>> matrix() const { return {data, d, n}; }
};
Tokens tokens_of(const py::array& X, const char* what) {
  if (X.ndim() != 2)
    throw std::invalid_argument(std::string(what) + " must be a 2-D array [tokens, d], got " +
                                std::to_string(X.ndim()) + " dimensions");
  if (!py::dtype::of<float>().is(X.dtype()) || !(X.flags() & py::array::c_style))
    throw std::invalid_argument(std::string(what) + " must be a C-contiguous float32 array");
  return {static_cast<const float*>(X.data()), static_cast<Index>(X.shape(1)), static_cast<Index>(X.shape(0))};
}
void check_d_in(const PySae& s, Index d, const char* what) {
  if (d != s.d_in())
    throw std::invalid_argument(std::string(what) + " has d_in=" + std::to_string(d) + " but the SAE has d_in=" +
                                std::to_string(s.d_in()));
}
void check_batch(Index batch) {
  if (batch <= 0) throw std::invalid_argument("batch must be positive, got " + std::to_string(batch));
}

/// A .npy file [N, d] as a float32 array: a read-only view of the memory map (float32), or
/// converted once (float16). The mapping lives as long as the array.
py::array read_npy(const std::string& path) {
  auto reader = std::make_unique<sae::io::NpyReader>(sae::io::NpyReader::open(path));
  if (reader->shape().size() != 2)
    throw sae::io::IoError(path, "expected a 2-D array [tokens, d_in], got " + std::to_string(reader->shape().size()) +
                                     " dimensions");
  if (reader->rows() == 0 || reader->cols() == 0) throw sae::io::IoError(path, "the array is empty");
  const auto rows = static_cast<py::ssize_t>(reader->rows()), cols = static_cast<py::ssize_t>(reader->cols());
  if (reader->dtype() != sae::io::NpyDtype::F32) {
    py::array_t<float> out({rows, cols});
    reader->copy_rows_f32(0, reader->rows(), out.mutable_data());
    return out;
  }
  const float* data = reader->f32_data();
  py::capsule owner(reader.release(), [](void* p) { delete static_cast<sae::io::NpyReader*>(p); });
  py::array view(py::dtype::of<float>(), {rows, cols},
                 {static_cast<py::ssize_t>(cols * sizeof(float)), static_cast<py::ssize_t>(sizeof(float))}, data,
                 owner);
  view.attr("setflags")(py::arg("write") = false);
  return view;
}

// ------------------------------------------------------------------------------------------
// Encoding, decoding, steering, evaluation.

/// Sparse codes as (offsets int64 [N+1], indices int32 [nnz], values float32 [nnz]).
py::tuple encode_sparse(const PySae& s, const py::array& X, Index batch) {
  const Tokens t = tokens_of(X, "X");
  check_d_in(s, t.d, "X");
  check_batch(batch);
  sae::interp::CsrCodes csr;
  csr.d_sae = s.d_sae();
  {
    py::gil_scoped_release nogil;
    csr.offsets.reserve(static_cast<std::size_t>(t.n) + 1);
    std::visit(
        [&](const auto& m) {
          sae::interp::encode_batches(m, t.batches(), batch,
                                      [&](Index, const auto& codes, const auto&) { csr.add(codes); });
        },
        s.model);
  }
  return py::make_tuple(to_numpy(std::move(csr.offsets)), to_numpy(std::move(csr.indices)),
                        to_numpy(std::move(csr.values)));
}

/// Dense codes [N, d_sae] float32.
py::array_t<float> encode_dense(const PySae& s, const py::array& X, Index batch) {
  const Tokens t = tokens_of(X, "X");
  check_d_in(s, t.d, "X");
  check_batch(batch);
  const Index m = s.d_sae();
  py::array_t<float> out({static_cast<py::ssize_t>(t.n), static_cast<py::ssize_t>(m)});
  float* F = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    std::visit(
        [&](const auto& model) {
          sae::interp::encode_batches(model, t.batches(), batch, [&](Index t0, const auto& codes, const auto& Xb) {
            Eigen::Map<sae::Mat<float>> Fb(F + t0 * m, m, Xb.cols());
            using C = std::decay_t<decltype(codes)>;
            if constexpr (std::is_same_v<C, sae::Mat<float>>) {
              Fb = codes;
            } else {
              Fb.setZero();
              for (Index c = 0; c < codes.tokens(); ++c)
                for (Index i = codes.offsets[c]; i < codes.offsets[c + 1]; ++i)
                  Fb(codes.indices[static_cast<std::size_t>(i)], c) = codes.values[static_cast<std::size_t>(i)];
            }
          });
        },
        s.model);
  }
  return out;
}

/// X_hat = decode(encode(X)) [N, d_in].
py::array_t<float> reconstruct(const PySae& s, const py::array& X, Index batch) {
  const Tokens t = tokens_of(X, "X");
  check_d_in(s, t.d, "X");
  check_batch(batch);
  const Index d = s.d_in();
  py::array_t<float> out({static_cast<py::ssize_t>(t.n), static_cast<py::ssize_t>(d)});
  float* Y = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    std::visit(
        [&](const auto& model) {
          sae::Mat<float> X_hat;
          sae::interp::encode_batches(model, t.batches(), batch, [&](Index t0, const auto& codes, const auto& Xb) {
            model.decode(codes, X_hat);
            Eigen::Map<sae::Mat<float>>(Y + t0 * d, d, Xb.cols()) = X_hat;
          });
        },
        s.model);
  }
  return out;
}

/// X_hat [N, d_in] from CSR codes (offsets [N+1], indices, values), checked for shape and range.
py::array_t<float> decode_sparse(const PySae& s, const py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>& offsets,
                                 const py::array_t<std::int32_t, py::array::c_style | py::array::forcecast>& indices,
                                 const py::array_t<float, py::array::c_style | py::array::forcecast>& values,
                                 Index batch) {
  check_batch(batch);
  if (offsets.ndim() != 1 || offsets.size() < 1) throw std::invalid_argument("codes: indptr must be 1-D and non-empty");
  const Index n = static_cast<Index>(offsets.size()) - 1, m = s.d_sae(), d = s.d_in();
  const std::int64_t* off = offsets.data();
  const std::int32_t* idx = indices.data();
  const float* val = values.data();
  const auto nnz = static_cast<std::int64_t>(indices.size());
  if (values.size() != indices.size()) throw std::invalid_argument("codes: indices and data differ in length");
  if (off[0] != 0 || off[n] != nnz) throw std::invalid_argument("codes: indptr must start at 0 and end at nnz");
  py::array_t<float> out({static_cast<py::ssize_t>(n), static_cast<py::ssize_t>(d)});
  float* Y = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    for (Index t = 0; t < n; ++t)
      if (off[t + 1] < off[t]) throw std::invalid_argument("codes: indptr must be non-decreasing");
    for (std::int64_t i = 0; i < nnz; ++i)
      if (idx[i] < 0 || idx[i] >= m)
        throw std::invalid_argument("codes: latent index " + std::to_string(idx[i]) + " is outside [0, d_sae=" +
                                    std::to_string(m) + ")");
    const sae::Parameters<float>& p = s.params();
    sae::SparseCodes<float> codes;
    sae::Mat<float> X_hat;
    for (Index t0 = 0; t0 < n; t0 += batch) {
      const Index b = std::min(batch, n - t0);
      codes.reset(m, b);
      const std::int64_t first = off[t0];
      for (Index c = 0; c < b; ++c) codes.offsets[static_cast<std::size_t>(c) + 1] = off[t0 + c + 1] - first;
      codes.indices.assign(idx + first, idx + off[t0 + b]);
      codes.values.assign(val + first, val + off[t0 + b]);
      sae::kernels::decode(p, codes, X_hat);
      Eigen::Map<sae::Mat<float>>(Y + t0 * d, d, b) = X_hat;
    }
  }
  return out;
}

/// X_hat [N, d_in] from dense codes F [N, d_sae].
py::array_t<float> decode_dense(const PySae& s, const py::array& F, Index batch) {
  check_batch(batch);
  const Tokens f = tokens_of(F, "codes");
  if (f.d != s.d_sae())
    throw std::invalid_argument("codes have " + std::to_string(f.d) + " columns but the SAE has d_sae=" +
                                std::to_string(s.d_sae()));
  const Index d = s.d_in(), m = s.d_sae();
  py::array_t<float> out({static_cast<py::ssize_t>(f.n), static_cast<py::ssize_t>(d)});
  float* Y = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    sae::Mat<float> Fb, X_hat;
    for (Index t0 = 0; t0 < f.n; t0 += batch) {
      const Index b = std::min(batch, f.n - t0);
      Fb = Eigen::Map<const sae::Mat<float>>(f.data + t0 * m, m, b);
      sae::kernels::decode(s.params(), Fb, X_hat);
      Eigen::Map<sae::Mat<float>>(Y + t0 * d, d, b) = X_hat;
    }
  }
  return out;
}

/// Y = X with the edits applied (sae::interp::apply_steering, batch by batch) [N, d_in].
/// @p edits: (latent, mode "scale"|"clamp"|"add", value) tuples, applied in order.
py::array_t<float> steer(const PySae& s, const py::array& X, const std::vector<std::tuple<Index, std::string, double>>& edits,
                         Index batch) {
  const Tokens t = tokens_of(X, "X");
  check_d_in(s, t.d, "X");
  check_batch(batch);
  std::vector<sae::interp::SteerEdit> es;
  for (const auto& [j, mode, v] : edits) {
    if (j < 0 || j >= s.d_sae())
      throw std::invalid_argument("latent " + std::to_string(j) + " is outside [0, d_sae=" + std::to_string(s.d_sae()) +
                                  ")");
    if (!std::isfinite(v)) throw std::invalid_argument(mode + " must be a finite number");
    if (mode == "scale") es.push_back(sae::interp::SteerEdit::scale(j, v));
    else if (mode == "clamp") es.push_back(sae::interp::SteerEdit::clamp(j, v));
    else if (mode == "add") es.push_back(sae::interp::SteerEdit::add(j, v));
    else throw std::invalid_argument("steering mode must be scale, clamp or add, got '" + mode + "'");
  }
  const Index d = s.d_in();
  py::array_t<float> out({static_cast<py::ssize_t>(t.n), static_cast<py::ssize_t>(d)});
  float* Y = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    std::visit(
        [&](const auto& model) {
          using Model = std::decay_t<decltype(model)>;
          sae::interp::SteeringWorkspace<Model> ws;
          sae::Mat<float> Yb;
          t.batches().for_each(batch, [&](Index t0, const Eigen::Map<const sae::Mat<float>>& Xb) {
            sae::interp::apply_steering(model, Xb, std::span<const sae::interp::SteerEdit>(es), Yb, ws);
            Eigen::Map<sae::Mat<float>>(Y + t0 * d, d, Xb.cols()) = Yb;
          });
        },
        s.model);
  }
  return out;
}

/// The metrics of `sae eval` (EvalMetrics::to_json, plus mmcs with @p features).
py::object evaluate(const PySae& s, const py::array& X, const std::optional<py::array>& features, Index limit,
                    Index batch) {
  const Tokens t = tokens_of(X, "X");
  check_d_in(s, t.d, "X");
  check_batch(batch);
  if (limit < 0) throw std::invalid_argument("limit must be >= 0 (0: all tokens)");
  std::optional<Tokens> f;
  if (features) {
    f = tokens_of(*features, "features");
    if (f->d != s.d_in())
      throw std::invalid_argument("features have dimension " + std::to_string(f->d) + " but the SAE has d_in=" +
                                  std::to_string(s.d_in()));
  }
  json j;
  {
    py::gil_scoped_release nogil;
    sae::EvalMetrics r =
        std::visit([&](const auto& m) { return sae::evaluate(m, t.matrix(), limit, batch); }, s.model);
    if (f) r.mmcs = sae::mmcs(s.params().W_dec, f->matrix());
    j = r.to_json();
  }
  j["architecture"] = std::string(sae::architecture_name(s.config().architecture));
  return json_to_python(j);
}

// ------------------------------------------------------------------------------------------
// Parameters as numpy views (SAELens shapes), read-only, kept alive by the SAE object.

py::array view(const py::object& owner, const float* data, std::vector<py::ssize_t> shape,
               std::vector<py::ssize_t> strides) {
  for (auto& st : strides) st *= static_cast<py::ssize_t>(sizeof(float));
  py::array a(py::dtype::of<float>(), std::move(shape), std::move(strides), data, owner);
  a.attr("setflags")(py::arg("write") = false);
  return a;
}

// ------------------------------------------------------------------------------------------
// Training.

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
    } else if (j.contains(key)) {
      if (key == "data" && value.is_string()) j[key] = json::array({value});
      else j[key] = value;
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
  parsed.given = a.given;
  return parsed;
}

py::tuple train(const py::dict& kw, const std::optional<py::array>& X, const std::string& name,
                const py::object& callback, bool verbose) {
  sae::TrainSettings a = settings_from(kw);
  std::optional<sae::TrainData> data;
  if (X) {
    const Tokens t = tokens_of(*X, "X");
    data = sae::TrainData::borrow(t.data, t.d, t.n, name);
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
      callback(d);
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
    if (PyErr_CheckSignals() != 0) {
      pending.emplace();  // fetches (and clears) the error the signal handler raised
      return true;
    }
    return false;
  };
  std::optional<sae::TrainRun> run;
  try {
    py::gil_scoped_release nogil;
    run.emplace(sae::run_training(std::move(a), hooks, data ? &*data : nullptr));
  } catch (const sae::TrainingInterrupted& e) {
    if (verbose) {
      write(std::string("libsae.train: ") + e.what() + "\n");
      flush();
    }
    if (pending) throw *pending;
    PyErr_SetString(PyExc_KeyboardInterrupt, e.what());
    throw py::error_already_set();
  }
  auto* s = new PySae{std::move(run->sae), sae::io::SaeFormat::SAELens};
  return py::make_tuple(py::cast(s, py::return_value_policy::take_ownership), json_to_python(run->result));
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "libsae's C++ core (use the `libsae` package, not this module)";
  m.attr("version") = sae::version_string;
  m.attr("gemm_backend") = sae::gemm::backend_name(sae::gemm::encoder_backend());

  py::register_exception<sae::io::IoError>(m, "FormatError", PyExc_OSError);
  py::register_exception<sae::NumericalError>(m, "NumericalError", PyExc_ArithmeticError);

  py::class_<PySae>(m, "Sae")
      .def_property_readonly("d_in", &PySae::d_in)
      .def_property_readonly("d_sae", &PySae::d_sae)
      .def_property_readonly("architecture",
                             [](const PySae& s) { return std::string(sae::architecture_name(s.config().architecture)); })
      .def_property_readonly("format", [](const PySae& s) { return std::string(sae::io::sae_format_name(s.format)); })
      .def_property_readonly("cfg", [](const PySae& s) { return json_to_python(s.config().to_json()); })
      .def_property_readonly("W_enc",
                             [](py::object self) {
                               const auto& p = self.cast<const PySae&>().params();
                               // d x m column-major = SAELens's [d_in, d_sae] with strides (1, d)
                               return view(self, p.W_enc.data(), {p.d_in(), p.d_sae()}, {1, p.d_in()});
                             })
      .def_property_readonly("W_dec",
                             [](py::object self) {
                               const auto& p = self.cast<const PySae&>().params();
                               return view(self, p.W_dec.data(), {p.d_sae(), p.d_in()}, {p.d_in(), 1});
                             })
      .def_property_readonly("b_enc",
                             [](py::object self) {
                               const auto& p = self.cast<const PySae&>().params();
                               return view(self, p.b_enc.data(), {p.d_sae()}, {1});
                             })
      .def_property_readonly("b_dec",
                             [](py::object self) {
                               const auto& p = self.cast<const PySae&>().params();
                               return view(self, p.b_dec.data(), {p.d_in()}, {1});
                             })
      .def_property_readonly("threshold",
                             [](py::object self) -> py::object {
                               const auto& p = self.cast<const PySae&>().params();
                               if (p.threshold.size() == 0) return py::none();
                               return view(self, p.threshold.data(), {p.d_sae()}, {1});
                             })
      .def("encode_sparse", &encode_sparse, py::arg("X"), py::arg("batch"))
      .def("encode_dense", &encode_dense, py::arg("X"), py::arg("batch"))
      .def("reconstruct", &reconstruct, py::arg("X"), py::arg("batch"))
      .def("decode_sparse", &decode_sparse, py::arg("indptr"), py::arg("indices"), py::arg("data"), py::arg("batch"))
      .def("decode_dense", &decode_dense, py::arg("F"), py::arg("batch"))
      .def("steer", &steer, py::arg("X"), py::arg("edits"), py::arg("batch"))
      .def("evaluate", &evaluate, py::arg("X"), py::arg("features"), py::arg("limit"), py::arg("batch"))
      .def(
          "save",
          [](const PySae& s, const std::string& path, const std::string& dtype) {
            const sae::io::StDtype t = sae::parse_weights_dtype(dtype);
            py::gil_scoped_release nogil;
            sae::save_sae_as(path, s.model, t, s.format);
          },
          py::arg("path"), py::arg("dtype"));

  m.def(
      "load",
      [](const std::string& path) {
        sae::io::SaeFormat fmt{};
        sae::AnySae model = sae::load_sae(path, &fmt);
        return new PySae{std::move(model), fmt};
      },
      py::arg("path"), py::return_value_policy::take_ownership);
  m.def("read_npy", &read_npy, py::arg("path"));
  m.def("train", &train, py::arg("options"), py::arg("X"), py::arg("name"), py::arg("callback"), py::arg("verbose"));
  m.def("set_threads", [](int n) { sae::set_num_threads(n); }, py::arg("n"));
  m.def("threads", [] { return sae::num_threads(); });
}
