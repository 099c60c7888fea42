/// @file sae/train/batches.hpp
/// Shuffled mini-batches of tokens from a d x N matrix in memory or memory-mapped from .npy.
#pragma once

#include <cmath>
#include <cstdint>
#include <numeric>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "../core/parameters.hpp"
#include "../detail/random.hpp"

namespace sae {

/// Draws batches of B tokens without replacement from N tokens (d x N, column-major, e.g. a
/// C-order [N, d] .npy mapped with NpyReader::matrix()): each epoch visits every token once
/// in a fresh random order (Fisher-Yates with a seeded generator, so a seed fixes the order).
/// A batch may span two epochs.
///
/// The data is borrowed: it must outlive the ShuffledBatches. Each batch is copied into an
/// owned d x B buffer of the model's Scalar (the only copy; the source stays mapped).
///
/// The DataSource interface the Trainer uses: `Index d_in() const`,
/// `const Mat<Scalar>& next()` (the next d x B batch, valid until the following call).
/// Optional members the trainer and checkpoints use when present: `std::string origin(Index
/// column)` (where a column of the last batch came from, for error messages),
/// `std::int64_t position() const` (tokens drawn) and `void seek(std::int64_t position)`.
///
/// The order is a function of the seed and the number of tokens drawn: seek(p) replays the
/// p / N reshuffles (no data is touched) and continues exactly as an uninterrupted source.
template <class Scalar = float>
class ShuffledBatches {
 public:
  using Source = Eigen::Map<const Mat<float>>;

  /// @param data d x N float tokens (borrowed).  @param batch B >= 1.
  ShuffledBatches(const float* data, Index d, Index N, Index batch, std::uint64_t seed)
      : data_(data, d, N), batch_(batch), seed_(seed), rng_(seed) {
    if (d <= 0 || N <= 0) throw std::invalid_argument("ShuffledBatches: no data (d or N is 0)");
    if (batch <= 0) throw std::invalid_argument("ShuffledBatches: batch size must be positive");
    order_.resize(static_cast<std::size_t>(N));
    buffer_.resize(d, batch);
    batch_ids_.assign(static_cast<std::size_t>(batch), -1);
    reshuffle();
  }

  /// Borrows an in-memory d x N matrix.
  ShuffledBatches(const Mat<float>& data, Index batch, std::uint64_t seed)
      : ShuffledBatches(data.data(), data.rows(), data.cols(), batch, seed) {}

  Index d_in() const { return data_.rows(); }
  Index tokens() const { return data_.cols(); }
  Index batch_size() const { return batch_; }
  std::int64_t epoch() const { return epoch_; }
  /// Tokens drawn so far.
  std::int64_t position() const { return position_; }

  /// Multiplies every token by @p s (activation normalisation; 1 = unchanged).
  void set_scale(double s) {
    if (!(s > 0) || !std::isfinite(s)) throw std::invalid_argument("ShuffledBatches: scale must be positive");
    scale_ = s;
  }
  double scale() const { return scale_; }
  /// Names the data in origin() messages (e.g. the .npy path).
  void set_name(std::string name) { name_ = std::move(name); }

  /// Token index (column of the d x N data) of column @p col of the last batch.
  Index token_id(Index col) const { return batch_ids_.at(static_cast<std::size_t>(col)); }
  /// "NAME row R" (or "row R") of column @p col of the last batch.
  std::string origin(Index col) const {
    return (name_.empty() ? std::string() : name_ + " ") + "row " + std::to_string(token_id(col));
  }

  /// Continues as if @p position tokens had been drawn since construction.
  void seek(std::int64_t position) {
    if (position < 0) throw std::invalid_argument("ShuffledBatches: negative position");
    const auto N = static_cast<std::int64_t>(order_.size());
    rng_.reseed(seed_);
    epoch_ = 0;
    reshuffle();
    for (std::int64_t e = 0; e < position / N; ++e) {
      ++epoch_;
      reshuffle();
    }
    pos_ = static_cast<std::size_t>(position % N);
    position_ = position;
  }

  /// The next d x B batch (valid until the next call).
  const Mat<Scalar>& next() {
    for (Index b = 0; b < batch_; ++b) {
      if (pos_ == order_.size()) {
        ++epoch_;
        reshuffle();
      }
      const Index t = order_[pos_++];
      if (scale_ == 1.0)
        buffer_.col(b) = data_.col(t).template cast<Scalar>();
      else
        buffer_.col(b) = data_.col(t).template cast<Scalar>() * static_cast<Scalar>(scale_);
      batch_ids_[static_cast<std::size_t>(b)] = t;
    }
    position_ += batch_;
    return buffer_;
  }

 private:
  void reshuffle() {
    std::iota(order_.begin(), order_.end(), Index{0});
    for (std::size_t i = order_.size(); i > 1; --i) std::swap(order_[i - 1], order_[rng_.below(i)]);
    pos_ = 0;
  }

  Source data_;
  Index batch_;
  std::uint64_t seed_;
  detail::Rng rng_;
  std::vector<Index> order_;
  std::size_t pos_ = 0;
  std::int64_t epoch_ = 0;
  std::int64_t position_ = 0;
  double scale_ = 1.0;
  std::string name_;
  std::vector<Index> batch_ids_;
  Mat<Scalar> buffer_;
};

}  // namespace sae
