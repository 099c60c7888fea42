/// @file sae/train/mpi.hpp
/// MpiCollectives: the Collectives of data-parallel training (distributed.hpp) over an MPI
/// communicator. Include it only in programs built with MPI (CMake: find_package(MPI) and
/// MPI::MPI_CXX; libsae's own `sae` tool defines SAE_HAVE_MPI=1 when it does); the rest of
/// libsae never includes <mpi.h>.
///
/// The gradient sum is deterministic by construction, not by the MPI library's choice of
/// algorithm (MPI_Allreduce and MPI_Reduce_scatter may add in an order that depends on N, the
/// message sizes and the implementation's tuning): the n values are cut into N contiguous
/// chunks; rank q owns chunk q and receives every rank's copy of it (MPI_Alltoallv), adds them
/// in rank order 0..N-1 (reduce_scatter); the owned chunks are later gathered back on every rank
/// (MPI_Allgatherv, allgather_units). The traffic is that of a ring all-reduce: each rank sends
/// (and receives) 2 (N-1)/N n values, in N-1 messages per phase.
#pragma once

// Only MPI's C API is used: leave out the deprecated C++ bindings (Open MPI's warn under -Wextra).
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <limits>
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

  void reduce_scatter(float* x, std::size_t units, std::size_t unit, const float* weights) override {
    reduce_scatter_impl(x, units, unit, weights, MPI_FLOAT, recv_f_);
  }
  void reduce_scatter(double* x, std::size_t units, std::size_t unit, const double* weights) override {
    reduce_scatter_impl(x, units, unit, weights, MPI_DOUBLE, recv_d_);
  }
  void allgather_units(float* x, std::size_t units, std::size_t unit) override {
    allgather_impl(x, units, unit, MPI_FLOAT);
  }
  void allgather_units(double* x, std::size_t units, std::size_t unit) override {
    allgather_impl(x, units, unit, MPI_DOUBLE);
  }

  void any(std::uint8_t* flags, std::size_t n) override {
    const auto t0 = clock::now();
    MPI_Allreduce(MPI_IN_PLACE, flags, checked_int(n), MPI_UINT8_T, MPI_BOR, comm_);
    note(t0, 2.0 * static_cast<double>(n));
  }

  void allgatherv(const float* in, std::size_t n, std::vector<float>& out, std::vector<std::size_t>& counts) override {
    allgatherv_impl(in, n, out, counts, MPI_FLOAT);
  }
  void allgatherv(const double* in, std::size_t n, std::vector<double>& out,
                  std::vector<std::size_t>& counts) override {
    allgatherv_impl(in, n, out, counts, MPI_DOUBLE);
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

  // counts_ / displs_: every rank's own values of x (units * unit values split by rank_range).
  void layout(std::size_t units, std::size_t unit) {
    if (units * unit > static_cast<std::size_t>(std::numeric_limits<int>::max()))
      throw std::length_error("MpiCollectives: a tensor of " + std::to_string(units * unit) +
                              " values is more than one MPI message can count");
    counts_.resize(static_cast<std::size_t>(size_));
    displs_.resize(static_cast<std::size_t>(size_));
    for (int q = 0; q < size_; ++q) {
      const auto [u0, u1] = rank_range(units, q, size_);
      displs_[static_cast<std::size_t>(q)] = static_cast<int>(u0 * unit);
      counts_[static_cast<std::size_t>(q)] = static_cast<int>((u1 - u0) * unit);
    }
  }

  template <class T>
  void reduce_scatter_impl(T* x, std::size_t units, std::size_t unit, const T* weights, MPI_Datatype type,
                           std::vector<T>& recv) {
    const auto t0 = clock::now();
    const int N = size_;
    layout(units, unit);
    const int mine = counts_[static_cast<std::size_t>(rank_)];
    rcounts_.assign(static_cast<std::size_t>(N), mine);
    rdispls_.resize(static_cast<std::size_t>(N));
    for (int q = 0; q < N; ++q) rdispls_[static_cast<std::size_t>(q)] = q * mine;
    recv.resize(static_cast<std::size_t>(mine) * static_cast<std::size_t>(N));
    MPI_Alltoallv(x, counts_.data(), displs_.data(), type, recv.data(), rcounts_.data(), rdispls_.data(), type, comm_);
    T* out = x + displs_[static_cast<std::size_t>(rank_)];
    const std::size_t n = static_cast<std::size_t>(mine);
    if (weights) {
      for (std::size_t e = 0; e < n; ++e) out[e] = weights[0] * recv[e];
      for (int q = 1; q < N; ++q) {
        const T w = weights[q];
        const T* r = recv.data() + static_cast<std::size_t>(q) * n;
        for (std::size_t e = 0; e < n; ++e) out[e] += w * r[e];
      }
    } else {
      for (std::size_t e = 0; e < n; ++e) out[e] = recv[e];
      for (int q = 1; q < N; ++q) {
        const T* r = recv.data() + static_cast<std::size_t>(q) * n;
        for (std::size_t e = 0; e < n; ++e) out[e] += r[e];
      }
    }
    note(t0, static_cast<double>(units * unit - n) * sizeof(T));
  }

  template <class T>
  void allgather_impl(T* x, std::size_t units, std::size_t unit, MPI_Datatype type) {
    const auto t0 = clock::now();
    layout(units, unit);
    MPI_Allgatherv(MPI_IN_PLACE, 0, type, x, counts_.data(), displs_.data(), type, comm_);
    note(t0, static_cast<double>(counts_[static_cast<std::size_t>(rank_)]) * sizeof(T) * (size_ - 1));
  }

  template <class T>
  void allgatherv_impl(const T* in, std::size_t n, std::vector<T>& out, std::vector<std::size_t>& counts,
                       MPI_Datatype type) {
    const auto t0 = clock::now();
    const int mine = checked_int(n);
    rcounts_.resize(static_cast<std::size_t>(size_));
    rdispls_.resize(static_cast<std::size_t>(size_));
    MPI_Allgather(&mine, 1, MPI_INT, rcounts_.data(), 1, MPI_INT, comm_);
    std::size_t total = 0;
    counts.resize(static_cast<std::size_t>(size_));
    for (int q = 0; q < size_; ++q) {
      rdispls_[static_cast<std::size_t>(q)] = checked_int(total);
      counts[static_cast<std::size_t>(q)] = static_cast<std::size_t>(rcounts_[static_cast<std::size_t>(q)]);
      total += counts[static_cast<std::size_t>(q)];
    }
    checked_int(total);
    out.resize(total);
    MPI_Allgatherv(in, mine, type, out.data(), rcounts_.data(), rdispls_.data(), type, comm_);
    note(t0, static_cast<double>(n) * sizeof(T) * (size_ - 1));
  }

  MPI_Comm comm_;
  int rank_ = 0, size_ = 1;
  std::vector<int> counts_, displs_, rcounts_, rdispls_;
  std::vector<float> recv_f_;
  std::vector<double> recv_d_;
  double seconds_ = 0, bytes_ = 0;
};

}  // namespace sae
