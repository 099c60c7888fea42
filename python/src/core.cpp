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

#include "common.hpp"

namespace libsae_py {
namespace {

// ------------------------------------------------------------------------------------------
// Encoding, decoding, steering, evaluation (and, below, the report).

/// Encodes the tokens @p t batch by batch without the GIL and calls f(model, t0, codes, Xb).
template <class F>
void each_encoded(const PySae& s, const Tokens& t, Index batch, F&& f) {
  py::gil_scoped_release nogil;
  std::visit(
      [&](const auto& model) {
        sae::interp::encode_batches(model, t.batches(), batch,
                                    [&](Index t0, const auto& codes, const auto& Xb) { f(model, t0, codes, Xb); });
      },
      s.model);
}

/// Sparse codes as (offsets int64 [N+1], indices int32 [nnz], values float32 [nnz]).
py::tuple encode_sparse(const PySae& s, const py::array& X, Index batch) {
  const Tokens t = input(s, X, batch);
  sae::interp::CsrCodes csr;
  csr.d_sae = s.d_sae();
  csr.offsets.reserve(static_cast<std::size_t>(t.n) + 1);
  each_encoded(s, t, batch, [&](const auto&, Index, const auto& codes, const auto&) { csr.add(codes); });
  return py::make_tuple(to_numpy(std::move(csr.offsets)), to_numpy(std::move(csr.indices)),
                        to_numpy(std::move(csr.values)));
}

/// Dense codes [N, d_sae] float32.
py::array_t<float> encode_dense(const PySae& s, const py::array& X, Index batch) {
  const Tokens t = input(s, X, batch);
  const Index m = s.d_sae();
  py::array_t<float> out = new_rows(t.n, m);
  float* F = out.mutable_data();
  each_encoded(s, t, batch, [&](const auto&, Index t0, const auto& codes, const auto& Xb) {
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
  return out;
}

/// The model's output for X: decode(encode(X)) [N, d_in], or a transcoder's [N, d_out] (with
/// W_skip x for a skip transcoder).
py::array_t<float> reconstruct(const PySae& s, const py::array& X, Index batch) {
  const Tokens t = input(s, X, batch);
  const Index d = s.d_out();
  py::array_t<float> out = new_rows(t.n, d);
  float* Y = out.mutable_data();
  sae::Mat<float> X_hat;
  each_encoded(s, t, batch, [&](const auto& model, Index t0, const auto& codes, const auto& Xb) {
    model.output(Xb, codes, X_hat);
    Eigen::Map<sae::Mat<float>>(Y + t0 * d, d, Xb.cols()) = X_hat;
  });
  return out;
}

/// X_hat [N, d_in] from CSR codes (offsets [N+1], indices, values), checked for shape and range.
py::array_t<float> decode_sparse(const PySae& s,
                                 const py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>& offsets,
                                 const py::array_t<std::int32_t, py::array::c_style | py::array::forcecast>& indices,
                                 const py::array_t<float, py::array::c_style | py::array::forcecast>& values,
                                 Index batch) {
  check_batch(batch);
  if (offsets.ndim() != 1 || offsets.size() < 1) throw std::invalid_argument("codes: indptr must be 1-D and non-empty");
  const Index n = static_cast<Index>(offsets.size()) - 1, m = s.d_sae(), d = s.d_out();
  const std::int64_t* off = offsets.data();
  const std::int32_t* idx = indices.data();
  const float* val = values.data();
  const auto nnz = static_cast<std::int64_t>(indices.size());
  if (values.size() != indices.size()) throw std::invalid_argument("codes: indices and data differ in length");
  if (off[0] != 0 || off[n] != nnz) throw std::invalid_argument("codes: indptr must start at 0 and end at nnz");
  py::array_t<float> out = new_rows(n, d);
  float* Y = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    for (Index t = 0; t < n; ++t)
      if (off[t + 1] < off[t]) throw std::invalid_argument("codes: indptr must be non-decreasing");
    for (std::int64_t i = 0; i < nnz; ++i)
      if (idx[i] < 0 || idx[i] >= m)
        throw std::invalid_argument("codes: latent index " + std::to_string(idx[i]) +
                                    " is outside [0, d_sae=" + std::to_string(m) + ")");
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
    throw std::invalid_argument("codes have " + std::to_string(f.d) +
                                " columns but the SAE has d_sae=" + std::to_string(s.d_sae()));
  const Index d = s.d_out(), m = s.d_sae();
  py::array_t<float> out = new_rows(f.n, d);
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
py::array_t<float> steer(const PySae& s, const py::array& X,
                         const std::vector<std::tuple<Index, std::string, double>>& edits, Index batch) {
  const Tokens t = input(s, X, batch);
  std::vector<sae::interp::SteerEdit> es;
  for (const auto& [j, mode, v] : edits) {
    if (j < 0 || j >= s.d_sae())
      throw std::invalid_argument("latent " + std::to_string(j) + " is outside [0, d_sae=" + std::to_string(s.d_sae()) +
                                  ")");
    if (!std::isfinite(v)) throw std::invalid_argument(mode + " must be a finite number");
    if (mode == "scale")
      es.push_back(sae::interp::SteerEdit::scale(j, v));
    else if (mode == "clamp")
      es.push_back(sae::interp::SteerEdit::clamp(j, v));
    else if (mode == "add")
      es.push_back(sae::interp::SteerEdit::add(j, v));
    else
      throw std::invalid_argument("steering mode must be scale, clamp or add, got '" + mode + "'");
  }
  const Index d = s.d_in();
  py::array_t<float> out = new_rows(t.n, d);
  float* Y = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    std::visit(
        [&](const auto& model) {
          using Model = std::decay_t<decltype(model)>;
          sae::interp::SteeringWorkspace<Model> ws;
          sae::Mat<float> Yb;
          t.batches().for_each(batch, [&](Index t0, const Eigen::Map<const sae::Mat<float>>& Xb) {
            sae::check_finite_tokens(Xb, t0, "");
            sae::interp::apply_steering(model, Xb, std::span<const sae::interp::SteerEdit>(es), Yb, ws);
            Eigen::Map<sae::Mat<float>>(Y + t0 * d, d, Xb.cols()) = Yb;
          });
        },
        s.model);
  }
  return out;
}

/// The metrics of `sae eval` (EvalMetrics::to_json, plus mmcs with @p features).
/// A transcoder is evaluated against @p target [N, d_out] (required for it, refused for an SAE).
py::object evaluate(const PySae& s, const py::array& X, const std::optional<py::array>& features, Index limit,
                    Index batch, const std::optional<py::array>& target) {
  const Tokens t = input(s, X, batch);
  if (limit < 0) throw std::invalid_argument("limit must be >= 0 (0: all tokens)");
  std::optional<Tokens> f, y;
  if (features) {
    f = tokens_of(*features, "features");
    if (f->d != s.d_out())
      throw std::invalid_argument("features have dimension " + std::to_string(f->d) + " but the SAE's decoder has " +
                                  std::to_string(s.d_out()));
  }
  if (s.model.is_transcoder() && !target)
    throw std::invalid_argument("this SAE is a transcoder (d_out=" + std::to_string(s.d_out()) +
                                "): give target=, the activations it predicts for X");
  if (target) {
    if (!s.model.is_transcoder())
      throw std::invalid_argument("target= is for transcoders; this SAE reconstructs X itself");
    y = tokens_of(*target, "target");
  }
  json j;
  const auto t0 = std::chrono::steady_clock::now();
  {
    py::gil_scoped_release nogil;
    sae::EvalMetrics r = std::visit(
        [&](const auto& m) { return sae::evaluate(m, t.matrix(), y ? y->matrix() : t.matrix(), limit, batch); },
        s.model);
    if (f) r.mmcs = sae::mmcs(s.params().W_dec, f->matrix());
    j = r.to_json();
  }
  j["architecture"] = s.config().architecture;
  j["sae"] = s.path.empty() ? json(nullptr) : json(s.path);
  j["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return json_to_python(j);
}

// ------------------------------------------------------------------------------------------
// The HTML report of `sae report` (sae::interp::write_sae_report), on a .npy path or an array.

struct ReportArgs {
  std::string out, images, order;
  std::optional<std::string> tokens, unembed, vocab, labels, title;
  Index features = 24, examples = 12, context_before = 12, context_after = 4, limit = 0, batch = 4096;
  int intervals = 3;
  std::vector<Index> feature_ids;
};

py::object report(const PySae& s, const py::object& data, const std::string& data_name, const ReportArgs& a) {
  sae::interp::ReportSettings rs;
  rs.sae_path = s.path;
  rs.out = a.out;
  rs.images = a.images;
  rs.order = a.order;
  auto path = [](const std::optional<std::string>& p) {
    return p ? std::optional<std::filesystem::path>(*p) : std::nullopt;
  };
  rs.tokens = path(a.tokens);
  rs.unembed = path(a.unembed);
  rs.vocab = path(a.vocab);
  rs.labels = path(a.labels);
  if (a.title) rs.opt.title = *a.title;
  rs.opt.features = a.features;
  rs.opt.feature_ids = a.feature_ids;
  rs.opt.examples = a.examples;
  rs.opt.intervals = a.intervals;
  rs.opt.context_before = a.context_before;
  rs.opt.context_after = a.context_after;
  rs.limit = a.limit;
  rs.batch = a.batch;
  json j;
  if (py::isinstance<py::str>(data)) {
    const std::string file = data.cast<std::string>();
    py::gil_scoped_release nogil;
    const sae::interp::NpyBatches X(file);
    j = sae::interp::write_sae_report(s.model, X, file, rs);
  } else {
    const py::array arr = data.cast<py::array>();
    const Tokens t = tokens_of(arr, "data");
    py::gil_scoped_release nogil;
    j = sae::interp::write_sae_report(s.model, t.batches(), data_name, rs);
  }
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

}  // namespace
}  // namespace libsae_py

using namespace libsae_py;

PYBIND11_MODULE(_core, m) {
  m.doc() = "libsae's C++ core (use the `libsae` package, not this module)";
  m.attr("version") = sae::version_string;
  m.attr("gemm_backend") = sae::gemm::backend_name(sae::gemm::encoder_backend());
  m.def("gemm_backends", [] {
    std::vector<std::string> names;
    for (const auto b : sae::gemm::available_backends()) names.emplace_back(sae::gemm::backend_name(b));
    return names;
  });
  m.attr("bf16_hardware") = sae::gemm::bf16_hardware();

  py::register_exception<sae::io::IoError>(m, "FormatError", PyExc_OSError);
  py::register_exception<sae::NumericalError>(m, "NumericalError", PyExc_ArithmeticError);

  py::class_<ReportArgs>(m, "ReportArgs")
      .def(py::init<>())
      .def_readwrite("out", &ReportArgs::out)
      .def_readwrite("images", &ReportArgs::images)
      .def_readwrite("order", &ReportArgs::order)
      .def_readwrite("tokens", &ReportArgs::tokens)
      .def_readwrite("unembed", &ReportArgs::unembed)
      .def_readwrite("vocab", &ReportArgs::vocab)
      .def_readwrite("labels", &ReportArgs::labels)
      .def_readwrite("title", &ReportArgs::title)
      .def_readwrite("features", &ReportArgs::features)
      .def_readwrite("examples", &ReportArgs::examples)
      .def_readwrite("intervals", &ReportArgs::intervals)
      .def_readwrite("context_before", &ReportArgs::context_before)
      .def_readwrite("context_after", &ReportArgs::context_after)
      .def_readwrite("limit", &ReportArgs::limit)
      .def_readwrite("batch", &ReportArgs::batch)
      .def_readwrite("feature_ids", &ReportArgs::feature_ids);

  py::class_<PySae>(m, "Sae")
      .def_property_readonly("d_in", &PySae::d_in)
      .def_property_readonly("d_sae", &PySae::d_sae)
      .def_property_readonly("d_out", &PySae::d_out)
      .def_property_readonly("is_transcoder", [](const PySae& s) { return s.model.is_transcoder(); })
      .def_property_readonly("W_skip",
                             [](py::object self) -> py::object {
                               const auto& p = self.cast<const PySae&>().params();
                               if (!p.has_skip()) return py::none();
                               // d_out x d_in column-major = SAELens's [d_out, d_in] with strides (1, d_out)
                               return view(self, p.W_skip.data(), {p.d_out(), p.d_in()}, {1, p.d_out()});
                             })
      .def_property_readonly("architecture", [](const PySae& s) { return s.config().architecture; })
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
                               return view(self, p.W_dec.data(), {p.d_sae(), p.d_out()}, {p.d_out(), 1});
                             })
      .def_property_readonly("b_enc",
                             [](py::object self) {
                               const auto& p = self.cast<const PySae&>().params();
                               return view(self, p.b_enc.data(), {p.d_sae()}, {1});
                             })
      .def_property_readonly("b_dec",
                             [](py::object self) {
                               const auto& p = self.cast<const PySae&>().params();
                               return view(self, p.b_dec.data(), {p.d_out()}, {1});
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
      .def("report", &report, py::arg("data"), py::arg("data_name"), py::arg("args"))
      .def("evaluate", &evaluate, py::arg("X"), py::arg("features"), py::arg("limit"), py::arg("batch"),
           py::arg("target"))
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
        return new PySae{std::move(model), fmt, path};
      },
      py::arg("path"), py::return_value_policy::take_ownership);
  m.def("read_npy", &read_npy, py::arg("path"));
  m.def("train", &train, py::arg("options"), py::arg("X"), py::arg("name"), py::arg("callback"), py::arg("verbose"),
        py::arg("Y"), py::arg("target_name"));
  m.def(
      "set_threads", [](int n) { sae::set_num_threads(n); }, py::arg("n"));
  m.def("threads", [] { return sae::num_threads(); });
}
