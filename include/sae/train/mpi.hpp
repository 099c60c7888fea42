/// @file sae/train/mpi.hpp
/// MpiCollectives: the Collectives of data-parallel training (distributed.hpp) over an MPI
/// communicator. Include it only in programs built with MPI (CMake: find_package(MPI) and
/// MPI::MPI_CXX; libsae's own `sae` tool defines SAE_HAVE_MPI=1 when it does); the rest of
/// libsae never includes <mpi.h>.
///
/// The gradient sum is deterministic by construction, not by the MPI library's choice of
/// algorithm (MPI_Allreduce may add in an order that depends on N, the message sizes and the
/// implementation's tuning): the n values are cut into N contiguous chunks; rank q owns chunk q,
/// receives every rank's copy of it (MPI_Alltoallv), adds them in rank order 0..N-1, and the
/// summed chunks are gathered back on every rank (MPI_Allgatherv). This is the same traffic as a
/// ring reduce-scatter + all-gather: each rank sends and receives 2 (N-1)/N n values.
#pragma once

#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "distributed.hpp"

namespace sae {

class MpiCollectives final : public Collectives {
 public:
  /// Uses @p comm (not duplicated: the caller keeps it alive and makes no other collective
  /// calls on it while training runs).
  explicit MpiCollectives(MPI_Comm comm) : comm_(comm) {
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }

  void allgather(const double* in, std::size_t n, double* out) override {
    const auto t0 = clock::now();
    MPI_Allgather(in, checked_int(n), MPI_DOUBLE, out, checked_int(n), MPI_DOUBLE, comm_);
    note(t0, 2.0 * static_cast<double>(n) * sizeof(double) * (size_ - 1));
  }

  void sum_in_rank_order(float* x, std::size_t n) override { sum_blocks(x, n, MPI_FLOAT, recv_f_); }
  void sum_in_rank_order(double* x, std::size_t n) override { sum_blocks(x, n, MPI_DOUBLE, recv_d_); }

  void any(std::uint8_t* flags, std::size_t n) override {
    const auto t0 = clock::now();
    MPI_Allreduce(MPI_IN_PLACE, flags, checked_int(n), MPI_UINT8_T, MPI_BOR, comm_);
    note(t0, 2.0 * static_cast<double>(n));
  }

  /// Wall time spent in this object's collectives, and the bytes this rank sent in them
  /// (counted from the algorithm: about 2 (N-1)/N n values per sum of n), since construction.
  double seconds() const { return seconds_; }
  double bytes() const { return bytes_; }

 private:
  using clock = std::chrono::steady_clock;

  static int checked_int(std::size_t n) {
    if (n > static_cast<std::size_t>(1) << 30) throw std::length_error("MpiCollectives: message too large");
    return static_cast<int>(n);
  }
  void note(clock::time_point t0, double b) {
    seconds_ += std::chrono::duration<double>(clock::now() - t0).count();
    bytes_ += b;
  }

  // Blocks of at most 2^28 values keep the counts within int.
  template <class T>
  void sum_blocks(T* x, std::size_t n, MPI_Datatype type, std::vector<T>& recv) {
    constexpr std::size_t block = std::size_t{1} << 28;
    for (std::size_t off = 0; off < n; off += block) sum_block(x + off, std::min(block, n - off), type, recv);
  }

  template <class T>
  void sum_block(T* x, std::size_t n, MPI_Datatype type, std::vector<T>& recv) {
    const auto t0 = clock::now();
    const int N = size_;
    counts_.resize(static_cast<std::size_t>(N));
    displs_.resize(static_cast<std::size_t>(N));
    rcounts_.resize(static_cast<std::size_t>(N));
    rdispls_.resize(static_cast<std::size_t>(N));
    for (int q = 0; q < N; ++q) {
      const std::size_t b0 = static_cast<std::size_t>(q) * n / static_cast<std::size_t>(N);
      const std::size_t b1 = static_cast<std::size_t>(q + 1) * n / static_cast<std::size_t>(N);
      displs_[static_cast<std::size_t>(q)] = static_cast<int>(b0);
      counts_[static_cast<std::size_t>(q)] = static_cast<int>(b1 - b0);
    }
    const int mine = counts_[static_cast<std::size_t>(rank_)];
    for (int q = 0; q < N; ++q) {
      rcounts_[static_cast<std::size_t>(q)] = mine;
      rdispls_[static_cast<std::size_t>(q)] = q * mine;
    }
    recv.resize(static_cast<std::size_t>(mine) * static_cast<std::size_t>(N));
    MPI_Alltoallv(x, counts_.data(), displs_.data(), type, recv.data(), rcounts_.data(), rdispls_.data(), type, comm_);
    T* out = x + displs_[static_cast<std::size_t>(rank_)];
    for (int e = 0; e < mine; ++e) {
      T acc = recv[static_cast<std::size_t>(e)];
      for (int q = 1; q < N; ++q) acc += recv[static_cast<std::size_t>(q) * static_cast<std::size_t>(mine) + e];
      out[e] = acc;
    }
    MPI_Allgatherv(MPI_IN_PLACE, 0, type, x, counts_.data(), displs_.data(), type, comm_);
    note(t0, 2.0 * static_cast<double>(n - static_cast<std::size_t>(mine)) * sizeof(T));
  }

  MPI_Comm comm_;
  int rank_ = 0, size_ = 1;
  std::vector<int> counts_, displs_, rcounts_, rdispls_;
  std::vector<float> recv_f_;
  std::vector<double> recv_d_;
  double seconds_ = 0, bytes_ = 0;
};

}  // namespace sae
