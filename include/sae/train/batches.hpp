/// @file sae/train/batches.hpp
/// Shuffled mini-batches of tokens from a d x N matrix in memory or memory-mapped from .npy.
#pragma once

#include <cstdint>
#include <numeric>
#include <stdexcept>
#include <string>
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
template <class Scalar = float>
class ShuffledBatches {
 public:
  using Source = Eigen::Map<const Mat<float>>;

  /// @param data d x N float tokens (borrowed).  @param batch B >= 1.
  ShuffledBatches(const float* data, Index d, Index N, Index batch, std::uint64_t seed)
      : data_(data, d, N), batch_(batch), rng_(seed) {
    if (d <= 0 || N <= 0) throw std::invalid_argument("ShuffledBatches: no data (d or N is 0)");
    if (batch <= 0) throw std::invalid_argument("ShuffledBatches: batch size must be positive");
    order_.resize(static_cast<std::size_t>(N));
    buffer_.resize(d, batch);
    reshuffle();
  }

  /// Borrows an in-memory d x N matrix.
  ShuffledBatches(const Mat<float>& data, Index batch, std::uint64_t seed)
      : ShuffledBatches(data.data(), data.rows(), data.cols(), batch, seed) {}

  Index d_in() const { return data_.rows(); }
  Index tokens() const { return data_.cols(); }
  Index batch_size() const { return batch_; }
  std::int64_t epoch() const { return epoch_; }

  /// The next d x B batch (valid until the next call).
  const Mat<Scalar>& next() {
    for (Index b = 0; b < batch_; ++b) {
      if (pos_ == order_.size()) {
        ++epoch_;
        reshuffle();
      }
      buffer_.col(b) = data_.col(order_[pos_++]).template cast<Scalar>();
    }
    return buffer_;
  }

 private:
  void reshuffle() {
    std::iota(order_.begin(), order_.end(), Index{0});
    for (std::size_t i = order_.size(); i > 1; --i)
      std::swap(order_[i - 1], order_[rng_.below(i)]);
    pos_ = 0;
  }

  Source data_;
  Index batch_;
  detail::Rng rng_;
  std::vector<Index> order_;
  std::size_t pos_ = 0;
  std::int64_t epoch_ = 0;
  Mat<Scalar> buffer_;
};

}  // namespace sae
