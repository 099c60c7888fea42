// Shared by the translation units of libsae._core (core.cpp: the module, encoding, decoding,
// steering, evaluation; train.cpp: training). Conventions: see core.cpp's file comment.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <sae/sae.hpp>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace py = pybind11;

namespace libsae_py {

using nlohmann::json;
using sae::Index;

/// A loaded or trained SAE, and the format it came from (convert semantics on save).
struct PySae {
  sae::AnySae model;
  sae::io::SaeFormat format = sae::io::SaeFormat::SAELens;
  std::string path;  ///< where it was loaded from ("" for a trained SAE)

  Index d_in() const { return model.d_in(); }
  Index d_sae() const { return model.d_sae(); }
  Index d_out() const { return model.d_out(); }
  const sae::SaeConfig& config() const { return model.config(); }
  const sae::Parameters<float>& params() const { return model.params(); }
};

inline py::object json_to_python(const json& j) { return py::module_::import("json").attr("loads")(j.dump()); }

/// A numpy array owning @p v (moved, not copied).
template <class T>
inline py::array_t<T> to_numpy(std::vector<T>&& v) {
  auto* heap = new std::vector<T>(std::move(v));
  py::capsule owner(heap, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return py::array_t<T>({static_cast<py::ssize_t>(heap->size())}, {static_cast<py::ssize_t>(sizeof(T))}, heap->data(),
                        owner);
}

/// The d x N view of a C-contiguous float32 array [N, d]; ValueError naming @p what otherwise
/// (the Python layer normally converts first).
struct Tokens {
  const float* data = nullptr;
  Index d = 0, n = 0;
  sae::interp::MatrixBatches batches() const { return {data, d, n}; }
  Eigen::Map<const sae::Mat<float>> matrix() const { return {data, d, n}; }
};
inline Tokens tokens_of(const py::array& X, const char* what) {
  if (X.ndim() != 2)
    throw std::invalid_argument(std::string(what) + " must be a 2-D array [tokens, d], got " +
                                std::to_string(X.ndim()) + " dimensions");
  if (!py::dtype::of<float>().is(X.dtype()) || !(X.flags() & py::array::c_style))
    throw std::invalid_argument(std::string(what) + " must be a C-contiguous float32 array");
  return {static_cast<const float*>(X.data()), static_cast<Index>(X.shape(1)), static_cast<Index>(X.shape(0))};
}
inline void check_d_in(const PySae& s, Index d, const char* what) {
  if (d != s.d_in())
    throw std::invalid_argument(std::string(what) + " has d_in=" + std::to_string(d) +
                                " but the SAE has d_in=" + std::to_string(s.d_in()));
}
inline void check_batch(Index batch) {
  if (batch <= 0) throw std::invalid_argument("batch must be positive, got " + std::to_string(batch));
}
/// The tokens X [N, d_in] for the SAE @p s, processed @p batch at a time (all checked).
inline Tokens input(const PySae& s, const py::array& X, Index batch) {
  const Tokens t = tokens_of(X, "X");
  check_d_in(s, t.d, "X");
  check_batch(batch);
  return t;
}
/// A new float32 array [rows, cols], C order (= a cols x rows column-major matrix).
inline py::array_t<float> new_rows(Index rows, Index cols) {
  return py::array_t<float>({static_cast<py::ssize_t>(rows), static_cast<py::ssize_t>(cols)});
}

/// A .npy file [N, d] as a float32 array: a read-only view of the memory map (float32), or
/// converted once (float16). The mapping lives as long as the array.
inline py::array read_npy(const std::string& path) {
  auto reader = std::make_unique<sae::io::NpyReader>(sae::io::NpyReader::open(path));
  if (reader->shape().size() != 2)
    throw sae::io::IoError(
        path, "expected a 2-D array [tokens, d_in], got " + std::to_string(reader->shape().size()) + " dimensions");
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

/// libsae.train's work (train.cpp): (Sae, result dict).
py::tuple train(const py::dict& kw, const std::optional<py::array>& X, const std::string& name,
                const py::object& callback, bool verbose, const std::optional<py::array>& Y,
                const std::string& target_name);

}  // namespace libsae_py
