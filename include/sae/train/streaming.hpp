/// @file sae/train/streaming.hpp
/// Training data larger than memory: many memory-mapped .npy files seen as one token sequence
/// (NpyDataset), a seeded shuffle buffer that mixes tokens across files (StreamingBatches),
/// and activation normalisation whose factor is folded into the saved weights.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <Eigen/Core>
#include <nlohmann/json.hpp>

#include "../core/parameters.hpp"
#include "../detail/random.hpp"
#include "../io/error.hpp"
#include "../io/npy.hpp"

namespace sae {

/// The .npy files named by @p paths: a file is taken as it is, a directory contributes every
/// regular `*.npy` file directly inside it, sorted by name (so the order, and therefore the
/// shuffle of a seed, does not depend on the file system). Throws io::IoError for a path that
/// does not exist or a directory without .npy files.
inline std::vector<std::filesystem::path> expand_npy_paths(const std::vector<std::filesystem::path>& paths) {
  namespace fs = std::filesystem;
  std::vector<fs::path> out;
  for (const fs::path& p : paths) {
    std::error_code ec;
    if (fs::is_directory(p, ec)) {
      std::vector<fs::path> found;
      for (const auto& e : fs::directory_iterator(p, ec))
        if (e.is_regular_file() && e.path().extension() == ".npy") found.push_back(e.path());
      if (ec) throw io::IoError(p, "cannot list the directory: " + ec.message());
      if (found.empty()) throw io::IoError(p, "directory contains no .npy files");
      std::sort(found.begin(), found.end());
      out.insert(out.end(), found.begin(), found.end());
    } else if (fs::exists(p, ec)) {
      out.push_back(p);
    } else {
      throw io::IoError(p, "not found");
    }
  }
  if (out.empty()) throw std::invalid_argument("no activation files given");
  return out;
}

/// One or more C-order [N_i, d] float32/float16 .npy files, memory-mapped (nothing is read
/// until a token is asked for), seen as one sequence of N = sum N_i tokens. Global token t
/// lives in file f at row t - offset(f).
///
/// Every file must be 2-D, non-empty and have the same d (io::IoError naming the file
/// otherwise, e.g. "b.npy: d_in is 32, but a.npy has d_in 64").
class NpyDataset {
 public:
  NpyDataset() = default;

  /// Opens @p paths (files, or directories expanded by expand_npy_paths).
  static NpyDataset open(const std::vector<std::filesystem::path>& paths) {
    NpyDataset ds;
    for (const auto& p : expand_npy_paths(paths)) {
      io::NpyReader r = io::NpyReader::open(p);
      if (r.shape().size() != 2)
        throw io::IoError(
            p, "expected a 2-D array [tokens, d_in], got " + std::to_string(r.shape().size()) + " dimensions");
      if (r.rows() == 0 || r.cols() == 0) throw io::IoError(p, "the array is empty");
      const Index d = static_cast<Index>(r.cols());
      if (ds.readers_.empty()) {
        ds.d_ = d;
      } else if (d != ds.d_) {
        throw io::IoError(p, "d_in is " + std::to_string(d) + ", but " + ds.readers_.front().path().string() +
                                 " has d_in " + std::to_string(ds.d_) +
                                 " (all activation files must have the same d_in)");
      }
      ds.offsets_.push_back(ds.tokens_);
      ds.tokens_ += static_cast<std::int64_t>(r.rows());
      ds.readers_.push_back(std::move(r));
    }
    return ds;
  }

  Index d_in() const { return d_; }
  /// N, all files together.
  std::int64_t tokens() const { return tokens_; }
  std::size_t files() const { return readers_.size(); }
  const io::NpyReader& file(std::size_t f) const { return readers_.at(f); }
  const std::filesystem::path& file_path(std::size_t f) const { return readers_.at(f).path(); }
  std::int64_t file_tokens(std::size_t f) const { return static_cast<std::int64_t>(readers_.at(f).rows()); }
  /// Global index of file f's first token.
  std::int64_t file_offset(std::size_t f) const { return offsets_.at(f); }

  /// (file, row) of global token @p t (0 <= t < N).
  std::pair<std::size_t, std::int64_t> locate(std::int64_t t) const {
    if (t < 0 || t >= tokens_) throw std::out_of_range("token " + std::to_string(t) + " is out of range");
    const auto it = std::upper_bound(offsets_.begin(), offsets_.end(), t);
    const auto f = static_cast<std::size_t>(it - offsets_.begin()) - 1;
    return {f, t - offsets_[f]};
  }

  /// "PATH row R" for global token @p t (rows count from 0, as numpy indexes them).
  std::string origin(std::int64_t t) const {
    const auto [f, row] = locate(t);
    return readers_[f].path().string() + " row " + std::to_string(row);
  }

  /// Copies rows [row, row + count) of file @p f into @p out as floats (d x count column-major,
  /// float16 converted).
  void copy_rows(std::size_t f, std::int64_t row, std::int64_t count, float* out) const {
    readers_.at(f).copy_rows_f32(static_cast<std::size_t>(row), static_cast<std::size_t>(count), out);
  }

  /// What a checkpoint records to recognise the data: d_in, N and each file's name, rows and dtype.
  nlohmann::json fingerprint() const {
    nlohmann::json files = nlohmann::json::array();
    for (const auto& r : readers_)
      files.push_back({{"path", r.path().string()},
                       {"rows", r.rows()},
                       {"dtype", r.dtype() == io::NpyDtype::F32 ? "float32" : "float16"}});
    return {{"d_in", d_}, {"tokens", tokens_}, {"files", files}};
  }

 private:
  std::vector<io::NpyReader> readers_;
  std::vector<std::int64_t> offsets_;
  std::int64_t tokens_ = 0;
  Index d_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Activation normalisation

/// How activations are scaled before training (x -> s x, one global s > 0):
///
///     ExpectedNorm     s = sqrt(d) / mean_t ||x_t||     (mean token norm becomes sqrt(d_in),
///                                                        SAELens's "expected_average_only_in")
///     UnitMeanSquare   s = 1 / sqrt(mean_t ||x_t||^2)   (mean squared norm becomes 1, Gemma Scope)
enum class Normalization { None, ExpectedNorm, UnitMeanSquare };

inline std::string_view normalization_name(Normalization n) {
  switch (n) {
    case Normalization::None:
      return "none";
    case Normalization::ExpectedNorm:
      return "expected-norm";
    case Normalization::UnitMeanSquare:
      return "unit-mean-square";
  }
  return "none";
}

/// Parses none|expected-norm|unit-mean-square; std::invalid_argument otherwise.
inline Normalization parse_normalization(std::string_view s) {
  if (s == "none") return Normalization::None;
  if (s == "expected-norm") return Normalization::ExpectedNorm;
  if (s == "unit-mean-square") return Normalization::UnitMeanSquare;
  throw std::invalid_argument("unknown normalisation '" + std::string(s) +
                              "' (expected none, expected-norm or unit-mean-square)");
}

namespace detail {
/// s from the sums over n sampled tokens of ||x|| and ||x||^2.
inline double scale_from_sums(Normalization how, double sum_norm, double sum_sq, double n, Index d) {
  if (how == Normalization::None) return 1.0;
  const double mean = (how == Normalization::ExpectedNorm ? sum_norm : sum_sq) / n;
  if (!(mean > 0) || !std::isfinite(mean))
    throw std::invalid_argument("cannot normalise activations: their mean " +
                                std::string(how == Normalization::ExpectedNorm ? "norm" : "squared norm") + " is " +
                                std::to_string(mean));
  return how == Normalization::ExpectedNorm ? std::sqrt(static_cast<double>(d)) / mean : 1.0 / std::sqrt(mean);
}
}  // namespace detail

namespace detail {
/// s for @p how from min(N, @p sample) tokens evenly spaced over N (token floor(i N / n) for
/// i < n; deterministic, no seed). @p copy_token(t, x) writes token t's d floats into x;
/// @p origin(t) names it when it is not finite.
template <class CopyToken, class Origin>
double sampled_scale(std::int64_t N, Index d, Normalization how, std::int64_t sample, CopyToken&& copy_token,
                     Origin&& origin) {
  if (how == Normalization::None) return 1.0;
  if (N <= 0) throw std::invalid_argument("cannot normalise activations: no tokens");
  const std::int64_t n = std::clamp<std::int64_t>(sample, 1, N);
  Eigen::VectorXf x(d);
  double sum_norm = 0, sum_sq = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    __extension__ using i128 = __int128;  // GCC/Clang extension; silences -Wpedantic
    const auto t = static_cast<std::int64_t>((static_cast<i128>(i) * N) / n);
    copy_token(t, x.data());
    if (!x.allFinite()) throw std::invalid_argument("cannot normalise activations: " + origin(t) + " is not finite");
    const double sq = x.cast<double>().squaredNorm();
    sum_sq += sq;
    sum_norm += std::sqrt(sq);
  }
  return scale_from_sums(how, sum_norm, sum_sq, static_cast<double>(n), d);
}
}  // namespace detail

/// The factor s for @p how, estimated from min(N, @p sample) tokens evenly spaced over the
/// whole dataset (token floor(i N / n) for i < n; deterministic, no seed). Throws
/// std::invalid_argument naming the file and row of a non-finite sampled token.
inline double estimate_scale(const NpyDataset& data, Normalization how, std::int64_t sample = 100'000) {
  return detail::sampled_scale(
      data.tokens(), data.d_in(), how, sample,
      [&](std::int64_t t, float* x) {
        const auto [f, row] = data.locate(t);
        data.copy_rows(f, row, 1, x);
      },
      [&](std::int64_t t) { return data.origin(t); });
}

/// The same sampled estimate over an in-memory d x N column-major float matrix (one token per
/// column, e.g. a C-order [N, d] array): equal to estimate_scale(NpyDataset) on a file holding
/// the same rows. Non-finite tokens are named "row R".
inline double estimate_scale(const float* data, Index d, std::int64_t N, Normalization how,
                             std::int64_t sample = 100'000) {
  return detail::sampled_scale(
      N, d, how, sample, [&](std::int64_t t, float* x) { std::copy_n(data + t * d, d, x); },
      [](std::int64_t t) { return "row " + std::to_string(t); });
}

/// The same estimate over the columns (tokens) of an in-memory d x N matrix, using all of them.
template <class Derived>
double estimate_scale(const Eigen::MatrixBase<Derived>& X, Normalization how) {
  if (how == Normalization::None) return 1.0;
  if (X.cols() == 0) throw std::invalid_argument("cannot normalise activations: no tokens");
  double sum_norm = 0, sum_sq = 0;
  for (Index t = 0; t < X.cols(); ++t) {
    const double sq = X.col(t).template cast<double>().squaredNorm();
    sum_sq += sq;
    sum_norm += std::sqrt(sq);
  }
  return detail::scale_from_sums(how, sum_norm, sum_sq, static_cast<double>(X.cols()), X.rows());
}

/// Folds an input scale s into the weights of an SAE trained on s x, so that it works on raw x
/// (what SAELens's fold_activation_norm_scaling_factor does):
///
///     z  = W_enc^T (s x - b_dec) + b_enc = (s W_enc)^T (x - b_dec / s) + b_enc
///     W_enc' = s W_enc,   b_dec' = b_dec / s,   b_enc' = b_enc,   threshold' = threshold
///     x_hat' = W_dec' f + b_dec' = (W_dec f + b_dec) / s   with W_dec' = W_dec / s
///
/// The pre-activations z, hence the codes f and any threshold, are unchanged; the
/// reconstruction comes out in raw units (1/s times the normalised one). The same fold holds
/// when b_dec is not subtracted from the input. (Unit-norm decoders then have norm 1/s.)
/// With s a power of two every step is exact in floating point.
template <class Scalar>
void fold_input_scale(Parameters<Scalar>& p, double s) {
  if (!(s > 0) || !std::isfinite(s))
    throw std::invalid_argument("input scale must be positive, got " + std::to_string(s));
  const Scalar k = static_cast<Scalar>(s);
  p.W_enc *= k;
  p.W_dec /= k;
  p.b_dec /= k;
}

// ---------------------------------------------------------------------------------------------
// The shuffle buffer

/// Settings of StreamingBatches.
struct StreamingOptions {
  Index batch = 1024;               ///< B, tokens per batch
  std::int64_t shuffle_buffer = 0;  ///< S, tokens held in memory; 0: default_shuffle_buffer()
  std::int64_t chunk = 0;           ///< C, rows read contiguously; 0: max(1, S / 256)
  std::uint64_t seed = 0;           ///< fixes the order
  double scale = 1.0;               ///< every token is multiplied by this (normalisation)

  /// min(N, max(B, 256 MiB of float tokens)).
  static std::int64_t default_shuffle_buffer(std::int64_t tokens, Index d, Index batch) {
    const std::int64_t by_memory = (std::int64_t{256} << 20) / (4 * std::max<Index>(d, 1));
    return std::min<std::int64_t>(tokens, std::max<std::int64_t>(batch, by_memory));
  }
};

namespace detail {
/// A seed for one (epoch, window) of a run: SplitMix64 of the run seed mixed with both.
inline std::uint64_t stream_seed(std::uint64_t seed, std::uint64_t a, std::uint64_t b) {
  std::uint64_t x = seed ^ (0xD1B54A32D192ED03ULL * (a + 1));
  const std::uint64_t h = splitmix64(x);
  x = h ^ (0x8CB92BA72F3D8DD7ULL * (b + 1));
  return splitmix64(x);
}
}  // namespace detail

/// Batches of B tokens from an NpyDataset far larger than memory, in a seeded order that mixes
/// tokens across files and visits every token exactly once per pass (epoch).
///
/// The tokens are cut into chunks of C consecutive rows (chunks never cross files). Each epoch
/// e permutes the chunks (Fisher-Yates, seed derived from (seed, e)) and groups consecutive
/// chunks of that permutation into windows of at most S tokens. A window is read into the
/// shuffle buffer (d x S floats: contiguous reads of whole chunks from the memory map, float16
/// converted, tokens of several files side by side) and its tokens are emitted in a random
/// order (seed derived from (seed, e, window)); then the next window is loaded. A batch may
/// span windows and epochs. Memory: S d floats plus 8 bytes per token of S and per chunk.
///
/// Everything is a function of the seed and the number of tokens drawn, so position() and
/// seek() are the whole checkpoint state: seek(p) recomputes epoch p / N, its windows and
/// the window holding token p mod N, and the following batches are the ones an
/// uninterrupted source would give.
///
/// The DataSource interface the trainer uses: d_in(), next(); plus origin(column) (which file
/// and row a column of the last batch came from, for error messages), position() and seek().
/// The dataset is borrowed and must outlive the source.
template <class Scalar = float>
class StreamingBatches {
 public:
  StreamingBatches(const NpyDataset& data, const StreamingOptions& o)
      : data_(&data), batch_(o.batch), seed_(o.seed), scale_(o.scale) {
    if (data.tokens() <= 0 || data.d_in() <= 0) throw std::invalid_argument("StreamingBatches: no data");
    if (o.batch <= 0) throw std::invalid_argument("StreamingBatches: batch size must be positive");
    if (o.shuffle_buffer < 0) throw std::invalid_argument("StreamingBatches: shuffle buffer must be >= 0");
    if (!(o.scale > 0) || !std::isfinite(o.scale))
      throw std::invalid_argument("StreamingBatches: scale must be positive");
    S_ = o.shuffle_buffer > 0 ? o.shuffle_buffer
                              : StreamingOptions::default_shuffle_buffer(data.tokens(), data.d_in(), o.batch);
    S_ = std::min(S_, data.tokens());
    C_ = o.chunk > 0 ? std::min(o.chunk, S_) : std::max<std::int64_t>(1, S_ / 256);
    for (std::size_t f = 0; f < data.files(); ++f)
      for (std::int64_t r = 0; r < data.file_tokens(f); r += C_)
        chunks_.push_back({f, r, std::min(C_, data.file_tokens(f) - r)});
    batch_buf_.resize(data.d_in(), batch_);
    batch_ids_.assign(static_cast<std::size_t>(batch_), -1);
    seek(0);
  }

  Index d_in() const { return data_->d_in(); }
  Index batch_size() const { return batch_; }
  /// N, tokens per epoch.
  std::int64_t tokens() const { return data_->tokens(); }
  /// S and C as used (after defaults and clamping).
  std::int64_t shuffle_buffer() const { return S_; }
  std::int64_t chunk() const { return C_; }
  double scale() const { return scale_; }
  std::uint64_t seed() const { return seed_; }
  /// The epoch the next token comes from.
  std::int64_t epoch() const { return position_ / data_->tokens(); }
  /// Tokens drawn so far.
  std::int64_t position() const { return position_; }

  /// Global token index (see NpyDataset) of column @p col of the last batch.
  std::int64_t token_id(Index col) const { return batch_ids_.at(static_cast<std::size_t>(col)); }
  /// "PATH row R" of column @p col of the last batch.
  std::string origin(Index col) const { return data_->origin(token_id(col)); }

  /// Continues as if @p position tokens had been drawn since construction.
  void seek(std::int64_t position) {
    if (position < 0) throw std::invalid_argument("StreamingBatches: negative position");
    const std::int64_t N = data_->tokens();
    start_epoch(position / N);
    const std::int64_t r = position % N;
    const auto it = std::upper_bound(window_start_.begin(), window_start_.end(), r);
    load_window(static_cast<std::size_t>(it - window_start_.begin()) - 1);
    win_pos_ = r - window_start_[window_];
    position_ = position;
  }

  /// The next d x B batch (valid until the next call).
  const Mat<Scalar>& next() {
    const Scalar s = static_cast<Scalar>(scale_);
    for (Index b = 0; b < batch_; ++b) {
      if (win_pos_ == static_cast<std::int64_t>(order_.size())) {
        if (window_ + 1 < window_start_.size()) {
          load_window(window_ + 1);
        } else {
          start_epoch(epoch_ + 1);
          load_window(0);
        }
        win_pos_ = 0;
      }
      const std::int64_t i = order_[static_cast<std::size_t>(win_pos_++)];
      if (scale_ == 1.0)
        batch_buf_.col(b) = buffer_.col(i).template cast<Scalar>();
      else
        batch_buf_.col(b) = buffer_.col(i).template cast<Scalar>() * s;
      batch_ids_[static_cast<std::size_t>(b)] = ids_[static_cast<std::size_t>(i)];
      ++position_;
    }
    return batch_buf_;
  }

 private:
  struct Chunk {
    std::size_t file;
    std::int64_t row, count;
  };

  void start_epoch(std::int64_t e) {
    epoch_ = e;
    perm_.resize(chunks_.size());
    std::iota(perm_.begin(), perm_.end(), std::size_t{0});
    detail::Rng rng(detail::stream_seed(seed_, static_cast<std::uint64_t>(e), ~std::uint64_t{0}));
    for (std::size_t i = perm_.size(); i > 1; --i) std::swap(perm_[i - 1], perm_[rng.below(i)]);
    window_start_.clear();
    window_first_.clear();
    std::int64_t filled = S_, offset = 0;
    for (std::size_t c = 0; c < perm_.size(); ++c) {
      const std::int64_t n = chunks_[perm_[c]].count;
      if (filled + n > S_) {
        window_start_.push_back(offset);
        window_first_.push_back(c);
        filled = 0;
      }
      filled += n;
      offset += n;
    }
    window_first_.push_back(perm_.size());
  }

  void load_window(std::size_t w) {
    window_ = w;
    const Index d = data_->d_in();
    std::int64_t n = 0;
    for (std::size_t c = window_first_[w]; c < window_first_[w + 1]; ++c) n += chunks_[perm_[c]].count;
    if (buffer_.cols() < n) buffer_.resize(d, S_);
    ids_.resize(static_cast<std::size_t>(n));
    std::int64_t col = 0;
    for (std::size_t c = window_first_[w]; c < window_first_[w + 1]; ++c) {
      const Chunk& k = chunks_[perm_[c]];
      data_->copy_rows(k.file, k.row, k.count, buffer_.col(col).data());
      const std::int64_t first = data_->file_offset(k.file) + k.row;
      for (std::int64_t r = 0; r < k.count; ++r) ids_[static_cast<std::size_t>(col + r)] = first + r;
      col += k.count;
    }
    order_.resize(static_cast<std::size_t>(n));
    std::iota(order_.begin(), order_.end(), std::int64_t{0});
    detail::Rng rng(detail::stream_seed(seed_, static_cast<std::uint64_t>(epoch_), w));
    for (std::size_t i = order_.size(); i > 1; --i) std::swap(order_[i - 1], order_[rng.below(i)]);
    win_pos_ = 0;
  }

  const NpyDataset* data_;
  Index batch_;
  std::uint64_t seed_;
  double scale_;
  std::int64_t S_ = 0, C_ = 0;
  std::vector<Chunk> chunks_;
  // current epoch
  std::int64_t epoch_ = 0;
  std::vector<std::size_t> perm_;           ///< chunk order of the epoch
  std::vector<std::int64_t> window_start_;  ///< first token (within the epoch) of each window
  std::vector<std::size_t> window_first_;   ///< first position in perm_ of each window, plus the end
  // current window
  std::size_t window_ = 0;
  Mat<float> buffer_;                ///< d x S, the shuffle buffer
  std::vector<std::int64_t> ids_;    ///< global token index of each buffer column
  std::vector<std::int64_t> order_;  ///< emission order of the window's columns
  std::int64_t win_pos_ = 0;
  std::int64_t position_ = 0;
  // last batch
  Mat<Scalar> batch_buf_;
  std::vector<std::int64_t> batch_ids_;
};

}  // namespace sae
