/// @file sae/interp/encode.hpp
/// Encoding activations in batches, streamed from memory or from .npy files larger than memory,
/// and writing the codes as a dense .npy or a sparse .npz.
///
/// Notation: d = d_in, m = d_sae, N = tokens, B = tokens per batch. A batch is a d x B
/// column-major float matrix (one token per column); its codes are what the model's encode()
/// produces: a dense m x B `Mat` (ReLU, JumpReLU) or `SparseCodes` (TopK family, CSC).
///
/// A *batch source* is any type with
///
///     Index d_in() const;                       // d
///     Index tokens() const;                     // N
///     template <class F> void for_each(Index batch, F&& f, Index begin = 0, Index end = -1) const;
///         // calls f(Index first_token, Eigen::Map<const Mat<float>> X) for consecutive batches
///         // of at most `batch` tokens covering [begin, end) (end < 0: N), in order
///
/// MatrixBatches (a view of an in-memory matrix) and NpyBatches (a .npy file) are the two here.
/// NpyBatches maps a float32 file and hands out views of it (no copy; the kernel pages the file
/// in and out, so N·d·4 bytes may exceed RAM); a float16 file is converted one batch at a time.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "../core/finite.hpp"
#include "../core/parameters.hpp"
#include "../core/sparse_codes.hpp"
#include "../io/atomic_file.hpp"
#include "../io/error.hpp"
#include "../io/npy.hpp"
#include "../io/npz.hpp"

namespace sae::interp {

/// Batches of an in-memory d x N float matrix (column-major, contiguous), as views.
class MatrixBatches {
 public:
  MatrixBatches(const float* data, Index d, Index N) : data_(data), d_(d), n_(N) {}
  /// Views @p X, which must outlive this object.
  explicit MatrixBatches(const Mat<float>& X) : MatrixBatches(X.data(), X.rows(), X.cols()) {}
  explicit MatrixBatches(const Eigen::Map<const Mat<float>>& X) : MatrixBatches(X.data(), X.rows(), X.cols()) {}

  Index d_in() const { return d_; }
  Index tokens() const { return n_; }

  /// Calls f(first_token, X_batch) for batches of at most @p batch tokens of [begin, end).
  template <class F>
  void for_each(Index batch, F&& f, Index begin = 0, Index end = -1) const {
    if (end < 0 || end > n_) end = n_;
    check_batch(batch);
    for (Index t0 = begin; t0 < end; t0 += batch) {
      const Index b = std::min(batch, end - t0);
      f(t0, Eigen::Map<const Mat<float>>(data_ + t0 * d_, d_, b));
    }
  }

  /// Column @p t (one token), a view.
  Eigen::Map<const Vec<float>> token(Index t) const { return {data_ + t * d_, d_}; }

  static void check_batch(Index batch) {
    if (batch <= 0) throw std::invalid_argument("batch size must be positive, got " + std::to_string(batch));
  }

 private:
  const float* data_;
  Index d_, n_;
};

/// Batches of a [N, d] float32 or float16 .npy file (see the file comment).
class NpyBatches {
 public:
  /// Opens and validates @p path; throws IoError unless it is a non-empty 2-D array.
  explicit NpyBatches(const std::filesystem::path& path) : reader_(io::NpyReader::open(path)) {
    if (reader_.shape().size() != 2)
      throw io::IoError(
          path, "expected a 2-D array [tokens, d_in], got " + std::to_string(reader_.shape().size()) + " dimensions");
    if (reader_.rows() == 0 || reader_.cols() == 0) throw io::IoError(path, "the array is empty");
    reader_.mapped_file().advise_sequential();
  }

  Index d_in() const { return static_cast<Index>(reader_.cols()); }
  Index tokens() const { return static_cast<Index>(reader_.rows()); }
  const std::filesystem::path& path() const { return reader_.path(); }
  io::NpyDtype dtype() const { return reader_.dtype(); }
  const io::NpyReader& reader() const { return reader_; }

  template <class F>
  void for_each(Index batch, F&& f, Index begin = 0, Index end = -1) const {
    if (end < 0 || end > tokens()) end = tokens();
    MatrixBatches::check_batch(batch);
    const Index d = d_in();
    if (reader_.dtype() == io::NpyDtype::F32) {
      MatrixBatches(reader_.f32_data(), d, tokens()).for_each(batch, std::forward<F>(f), begin, end);
      return;
    }
    std::vector<float> buf(static_cast<std::size_t>(std::min(batch, std::max<Index>(end - begin, 0)) * d));
    for (Index t0 = begin; t0 < end; t0 += batch) {
      const Index b = std::min(batch, end - t0);
      reader_.copy_rows_f32(static_cast<std::size_t>(t0), static_cast<std::size_t>(b), buf.data());
      f(t0, Eigen::Map<const Mat<float>>(buf.data(), d, b));
    }
  }

  /// Token @p t as floats (a copy of d values; converts float16).
  Vec<float> token(Index t) const {
    Vec<float> x(d_in());
    reader_.copy_rows_f32(static_cast<std::size_t>(t), 1, x.data());
    return x;
  }

 private:
  io::NpyReader reader_;
};

/// What messages call a batch source: its file (NpyBatches), or nothing (an in-memory matrix).
template <class Source>
std::string source_name(const Source& source) {
  if constexpr (requires { source.path(); })
    return source.path().string();
  else
    return {};
}

/// Encodes tokens [begin, end) of @p source in batches of @p batch tokens and calls
/// sink(first_token, codes, X) for each, with `codes` the model's Codes of the d x b batch X.
/// One StepState and one Codes buffer are reused across batches (no per-batch allocation once
/// the largest batch has been seen). Models with a Scalar other than float get a cast copy.
/// NumericalError naming the row (and the file, for NpyBatches) if a token holds NaN or Inf.
template <class Model, class Source, class Sink>
void encode_batches(const Model& model, const Source& source, Index batch, Sink&& sink, Index begin = 0,
                    Index end = -1) {
  using Scalar = typename Model::scalar_type;
  if (source.d_in() != model.d_in())
    throw std::invalid_argument("data has d_in=" + std::to_string(source.d_in()) +
                                ", the SAE has d_in=" + std::to_string(model.d_in()));
  typename Model::State state;
  typename Model::Codes codes;
  Mat<Scalar> cast;
  source.for_each(
      batch,
      [&](Index t0, const Eigen::Map<const Mat<float>>& X) {
        check_finite_tokens(X, t0, source_name(source));
        if constexpr (std::is_same_v<Scalar, float>) {
          model.encode(X, codes, state);
        } else {
          cast = X.template cast<Scalar>();
          model.encode(cast, codes, state);
        }
        sink(t0, static_cast<const typename Model::Codes&>(codes), X);
      },
      begin, end);
}

/// Value of latent @p j for every token of @p codes (B values; 0 where it is not active).
/// Sparse codes list a token's latents in increasing order, so each lookup is a binary search.
template <class Scalar>
Vec<Scalar> latent_values(const SparseCodes<Scalar>& codes, Index j) {
  Vec<Scalar> v = Vec<Scalar>::Zero(codes.tokens());
  for (Index t = 0; t < codes.tokens(); ++t) {
    const auto first = codes.indices.begin() + codes.offsets[t], last = codes.indices.begin() + codes.offsets[t + 1];
    const auto it = std::lower_bound(first, last, static_cast<std::int32_t>(j));
    if (it != last && *it == j) v[t] = codes.values[static_cast<std::size_t>(it - codes.indices.begin())];
  }
  return v;
}
template <class Scalar>
Vec<Scalar> latent_values(const Mat<Scalar>& F, Index j) {
  return F.row(j).transpose();
}

/// Streams a float32 .npy file of shape [rows, cols] (C order) block by block, atomically:
/// nothing appears at the path until commit() succeeds after exactly `rows` rows were added.
/// A block of b rows is a column-major cols x b matrix (one row of the file per column, the
/// layout of a batch of tokens), written as it is.
class NpyStreamWriter {
 public:
  NpyStreamWriter(const std::filesystem::path& path, Index rows, Index cols) : file_(path), rows_(rows), cols_(cols) {
    if (rows < 0 || cols <= 0) throw io::IoError(path, "invalid array shape");
    const std::size_t shape[2] = {static_cast<std::size_t>(rows), static_cast<std::size_t>(cols)};
    const std::string h = io::detail::npy::preamble(io::npy_descr(io::NpyDtype::F32), shape);
    file_.write(h.data(), h.size());
  }

  /// Appends the b = count rows stored at @p data (count * cols floats).
  void add(const float* data, Index count) {
    if (written_ + count > rows_)
      throw io::IoError(file_.path(), "more than the declared " + std::to_string(rows_) + " rows were added");
    file_.write(data, static_cast<std::size_t>(count * cols_) * sizeof(float));
    written_ += count;
  }
  /// Appends the columns of @p block (cols x b) as b rows.
  template <class Derived>
  void add(const Eigen::MatrixBase<Derived>& block) {
    if (block.rows() != cols_)
      throw io::IoError(file_.path(), "block has " + std::to_string(block.rows()) + " values per row, expected " +
                                          std::to_string(cols_));
    if constexpr (std::is_same_v<typename Derived::Scalar, float> && (Derived::Flags & Eigen::DirectAccessBit) != 0 &&
                  (Derived::Flags & Eigen::RowMajorBit) == 0) {
      if (block.derived().innerStride() == 1 && (block.derived().outerStride() == cols_ || block.cols() <= 1)) {
        add(block.derived().data(), block.cols());
        return;
      }
    }
    buf_ = block.template cast<float>();
    add(buf_.data(), buf_.cols());
  }

  /// Renames the file into place; throws IoError if fewer than `rows` rows were added.
  void commit() {
    if (written_ != rows_)
      throw io::IoError(file_.path(),
                        "only " + std::to_string(written_) + " of " + std::to_string(rows_) + " rows were written");
    file_.commit();
  }

  Index rows_written() const { return written_; }
  const std::filesystem::path& path() const { return file_.path(); }

 private:
  io::AtomicFile file_;
  Index rows_, cols_;
  Index written_ = 0;
  Mat<float> buf_;
};

/// Streams codes into a float32 .npy file of shape [N, m] (dense: token t's m code values at
/// row t), atomically (see NpyStreamWriter). Memory: one m x B buffer for sparse codes, none
/// for float dense codes.
class DenseCodesWriter {
 public:
  DenseCodesWriter(const std::filesystem::path& path, Index tokens, Index d_sae)
      : out_(path, tokens, d_sae), m_(d_sae) {}

  /// Appends the codes of the next codes.tokens() tokens.
  template <class Scalar>
  void add(const SparseCodes<Scalar>& codes) {
    check(codes.d_sae);
    const Index b = codes.tokens();
    buf_.setZero(m_, b);
    for (Index t = 0; t < b; ++t)
      for (Index i = codes.offsets[t]; i < codes.offsets[t + 1]; ++i)
        buf_(codes.indices[static_cast<std::size_t>(i)], t) =
            static_cast<float>(codes.values[static_cast<std::size_t>(i)]);
    out_.add(buf_);
  }
  template <class Scalar>
  void add(const Mat<Scalar>& F) {
    check(F.rows());
    out_.add(F);
  }

  /// Renames the file into place; throws IoError if fewer than N tokens were added.
  void commit() { out_.commit(); }
  Index tokens_written() const { return out_.rows_written(); }

 private:
  void check(Index m) const {
    if (m != m_)
      throw io::IoError(out_.path(), "codes have d_sae=" + std::to_string(m) + ", expected " + std::to_string(m_));
  }

  NpyStreamWriter out_;
  Index m_;
  Mat<float> buf_;
};

/// The codes of consecutive batches collected as one CSR matrix [N, m] (one row per token),
/// nonzeros only:
///
///     offsets  int64   [N + 1]   token t's entries are [offsets[t], offsets[t+1])
///     indices  int32   [nnz]     latent of each entry, increasing within a token
///     values   float32 [nnz]     its activation (nonzero)
///
/// scipy.sparse.csr_matrix((values, indices, offsets), shape=(N, m)) is the dense code matrix.
/// SparseCodesWriter stores it as .npz; the Python package hands the vectors to numpy.
struct CsrCodes {
  Index d_sae = 0;  ///< m
  std::vector<std::int64_t> offsets{0};
  std::vector<std::int32_t> indices;
  std::vector<float> values;

  Index tokens() const { return static_cast<Index>(offsets.size()) - 1; }
  Index nnz() const { return static_cast<Index>(values.size()); }

  /// Appends the B tokens of @p codes (sparse, as TopK-family models give them).
  template <class Scalar>
  void add(const SparseCodes<Scalar>& codes) {
    check(codes.d_sae);
    for (Index t = 0; t < codes.tokens(); ++t) {
      for (Index i = codes.offsets[t]; i < codes.offsets[t + 1]; ++i) {
        const auto v = static_cast<float>(codes.values[static_cast<std::size_t>(i)]);
        if (v == 0.0f) continue;
        indices.push_back(codes.indices[static_cast<std::size_t>(i)]);
        values.push_back(v);
      }
      offsets.push_back(static_cast<std::int64_t>(values.size()));
    }
  }
  /// Appends the B tokens of dense codes @p F (m x B), by their nonzeros.
  template <class Scalar>
  void add(const Mat<Scalar>& F) {
    check(F.rows());
    for (Index t = 0; t < F.cols(); ++t) {
      for (Index j = 0; j < F.rows(); ++j)
        if (F(j, t) != Scalar(0)) {
          indices.push_back(static_cast<std::int32_t>(j));
          values.push_back(static_cast<float>(F(j, t)));
        }
      offsets.push_back(static_cast<std::int64_t>(values.size()));
    }
  }

 private:
  void check(Index m) const {
    if (m != d_sae)
      throw std::invalid_argument("codes have d_sae=" + std::to_string(m) + ", expected " + std::to_string(d_sae));
  }
};

/// Collects the codes of consecutive batches (CsrCodes) and writes them as an .npz archive
/// (sae::io::NpzWriter, atomic) with the members offsets, indices, values (see CsrCodes) and
///
///     shape    int64   [2]       (N, m)
///
/// The input streams; the output is held in memory until commit(): (N + 1) * 8 + nnz * 8
/// bytes, plus a copy while the archive is written, and the archive must stay below 4 GiB (no
/// ZIP64). Dense codes are stored by their nonzeros.
class SparseCodesWriter {
 public:
  explicit SparseCodesWriter(std::filesystem::path path, Index d_sae, bool compress = true)
      : path_(std::move(path)), compress_(compress) {
    if (d_sae <= 0) throw io::IoError(path_, "invalid d_sae " + std::to_string(d_sae));
    csr_.d_sae = d_sae;
  }

  template <class Codes>
  void add(const Codes& codes) {
    try {
      csr_.add(codes);
    } catch (const std::invalid_argument& e) {
      throw io::IoError(path_, e.what());
    }
  }

  Index tokens() const { return csr_.tokens(); }
  Index nnz() const { return csr_.nnz(); }

  /// Writes the archive (see the class comment); throws IoError on failure.
  void commit() const {
    io::NpzWriter w;
    const auto n = static_cast<std::size_t>(tokens()), nnz_ = csr_.values.size();
    const std::int64_t shape[2] = {static_cast<std::int64_t>(n), static_cast<std::int64_t>(csr_.d_sae)};
    w.add("offsets", {n + 1}, std::span<const std::int64_t>(csr_.offsets));
    w.add("indices", {nnz_}, std::span<const std::int32_t>(csr_.indices));
    w.add("values", {nnz_}, std::span<const float>(csr_.values));
    w.add("shape", {2}, std::span<const std::int64_t>(shape, 2));
    w.write(path_, compress_);
  }

 private:
  std::filesystem::path path_;
  bool compress_;
  CsrCodes csr_;
};

}  // namespace sae::interp
