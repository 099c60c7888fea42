/// @file sae/core/collectives.hpp
/// Collectives: what data-parallel training (sae/train/distributed.hpp) asks of a
/// message-passing layer, and the few policies that take part in it (BatchTopK's batch-wide
/// selection). No MPI here: sae/train/mpi.hpp implements it over an MPI communicator.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

namespace sae {

/// What data-parallel training asks of a message-passing layer. Every call is collective: all
/// ranks of the group make it, in the same order, with the same n. (A virtual interface: it is
/// called a few times per training step, never per token.)
class Collectives {
 public:
  virtual ~Collectives() = default;
  /// This process's rank in [0, size()).
  virtual int rank() const = 0;
  /// Number of ranks N.
  virtual int size() const = 0;
  /// Every rank gives @p n doubles in @p in; @p out (N * n values) receives rank r's at
  /// out[r * n], on every rank.
  virtual void allgather(const double* in, std::size_t n, double* out) = 0;
  /// @p x holds @p units units of @p unit values each (the same on every rank); rank q owns
  /// the units rank_range(units, q, N). Afterwards this rank's own units of x hold the weighted
  /// sum over ranks, w_0 x_0 + w_1 x_1 + ... + w_{N-1} x_{N-1}, added left to right in rank
  /// order for every element (@p weights: N values, or nullptr for all ones): the same bits in
  /// every run with the same N. The other units of x are left as they were.
  virtual void reduce_scatter(float* x, std::size_t units, std::size_t unit, const float* weights) = 0;
  virtual void reduce_scatter(double* x, std::size_t units, std::size_t unit, const double* weights) = 0;
  /// Every rank's own units of @p x (as in reduce_scatter) are copied to every other rank.
  virtual void allgather_units(float* x, std::size_t units, std::size_t unit) = 0;
  virtual void allgather_units(double* x, std::size_t units, std::size_t unit) = 0;
  /// @p flags (n bytes) become the bitwise OR over ranks.
  virtual void any(std::uint8_t* flags, std::size_t n) = 0;
  /// Every rank gives @p n values (n may differ between ranks); @p out receives all of them in
  /// rank order and @p counts (N values) how many came from each rank, on every rank.
  virtual void allgatherv(const float* in, std::size_t n, std::vector<float>& out,
                          std::vector<std::size_t>& counts) = 0;
  virtual void allgatherv(const double* in, std::size_t n, std::vector<double>& out,
                          std::vector<std::size_t>& counts) = 0;

  /// x becomes the (weighted) sum over ranks on every rank, added in rank order.
  template <class T>
  void sum_in_rank_order(T* x, std::size_t n, const T* weights = nullptr) {
    reduce_scatter(x, n, 1, weights);
    allgather_units(x, n, 1);
  }
};

/// The units [first, second) of @p units that rank @p q of @p N owns (contiguous, in rank order,
/// sizes differing by at most one).
inline std::pair<std::size_t, std::size_t> rank_range(std::size_t units, int q, int N) {
  return {static_cast<std::size_t>(q) * units / static_cast<std::size_t>(N),
          static_cast<std::size_t>(q + 1) * units / static_cast<std::size_t>(N)};
}

}  // namespace sae
