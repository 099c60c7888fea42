/// @file sae/detail/omp.hpp
/// OpenMP helpers that compile to nothing (and warn about nothing) without OpenMP, and the one
/// size below which libsae does its work on one thread.
#pragma once

#ifdef _OPENMP
#include <omp.h>
#define SAE_PRAGMA(x) _Pragma(#x)
#define SAE_OMP(x) SAE_PRAGMA(omp x)
#else
#define SAE_OMP(x)
#endif

#include <Eigen/Core>

namespace sae {

/// Number of threads libsae's parallel loops (and Eigen's products) will use.
inline int num_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

/// Sets the threads used by libsae's loops and Eigen's products (n <= 0 keeps the default), for
/// the calling thread (OpenMP's nthreads-var). Eigen is left to follow it (Eigen::setNbThreads(0):
/// Eigen then asks omp_get_max_threads() at each product), which is what lets
/// detail::SerialBelow keep a small product on one thread; a program that fixes Eigen's count
/// itself (Eigen::setNbThreads(n > 0)) after this call turns that off for Eigen's products.
inline void set_num_threads(int n) {
  if (n <= 0) return;
#ifdef _OPENMP
  omp_set_num_threads(n);
#endif
  Eigen::setNbThreads(0);
}

namespace detail {

/// Work, in floating-point operations (a multiply-add counts 2), below which a parallel region
/// is not worth its threads and libsae runs it on the calling thread.
///
/// Waking the other threads costs more than the work of a small model: with
/// OMP_WAIT_POLICY=passive and 2 threads, `sae train --arch relu --d-sae 96` on d = 20 data,
/// B = 512 took 0.4-0.8 s for 500 steps on an idle machine and 11-17 s while another process
/// kept one core busy, against 0.13-0.2 s on one thread (issue 24). Most of it was Eigen's own
/// GEMM threading: its threads busy-wait for each other, so while one of them is descheduled
/// the other spins (up to a scheduler time slice per product on a busy machine).
///
/// Measured with benchmarks/small_models.cpp (product/DxMxB and adam/N, 1 and 2 threads,
/// OMP_WAIT_POLICY=passive, median of 5; docs/performance.md, "Small models") on a 2-core
/// Xeon (AVX-512): Eigen's Z = W^T X on 2 threads took 2.0x the time of 1 thread at
/// d x m x B = 20 x 96 x 512 (2e6 flops), 1.26x at 8.4e6, 1.1-1.3x at 1.7e7-3.4e7, 0.87x at 5e7,
/// 0.79x at 6.7e7 and 0.55x at 2.7e8 on the idle machine, and 1.5-9x at every one of these
/// sizes with the other core busy. So 2^26 = 6.7e7 flops: where 2 threads begin to gain.
inline constexpr double min_parallel_flops = 67108864.0;

/// The same threshold for a loop that streams through memory (Adam, column norms, masks,
/// gathers): each element it touches counts as this many flops, so such a loop uses its threads
/// from 2^26 / 2^10 = 65536 elements. A plain OpenMP loop starts its threads for ~10 us, far
/// less than Eigen's product needs: Adam's update on 2 threads took 1.4x the time of 1 at 4096
/// coefficients, 0.83x at 16384 and 0.44x at 65536 on the idle machine, and 1.0-1.1x at all
/// three with the other core busy.
inline constexpr double flops_per_streamed_element = 1024.0;

/// Flops of an m x n x k matrix product.
inline double product_flops(Eigen::Index m, Eigen::Index n, Eigen::Index k) {
  return 2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k);
}

/// Flops-equivalent of a loop streaming through @p elements values (flops_per_streamed_element).
inline double streamed(Eigen::Index elements) { return static_cast<double>(elements) * flops_per_streamed_element; }

/// Whether work of @p flops is worth the threads (the `if` clause of libsae's parallel loops).
inline bool parallel_worth(double flops) { return flops >= min_parallel_flops; }

/// While alive, below min_parallel_flops of work: OpenMP regions started by this thread (this
/// task, inside a region) and Eigen's products run on one thread. Used around code whose Eigen
/// products would otherwise start Eigen's threads: Eigen threads a product whenever it is not
/// inside an active parallel region, which includes a region whose `if` clause was false, so an
/// `if` clause alone does not keep them on one thread. Works through OpenMP's per-task thread
/// count (omp_set_num_threads), so it is safe with other threads calling libsae; Eigen follows
/// it unless the program fixed Eigen's thread count (see set_num_threads). Above the threshold
/// it does nothing. The decision depends on the work only, never on the thread count, so a
/// small model now gives the same bits on any number of threads (Eigen's threaded product
/// re-blocks its depth for the threads and rounded differently from its one-thread product).
class SerialBelow {
 public:
  explicit SerialBelow([[maybe_unused]] double flops) {
#ifdef _OPENMP
    if (!parallel_worth(flops)) {
      saved_ = omp_get_max_threads();
      if (saved_ > 1)
        omp_set_num_threads(1);
      else
        saved_ = 0;
    }
#endif
  }
  ~SerialBelow() {
#ifdef _OPENMP
    if (saved_ > 0) omp_set_num_threads(saved_);
#endif
  }
  SerialBelow(const SerialBelow&) = delete;
  SerialBelow& operator=(const SerialBelow&) = delete;

 private:
  int saved_ = 0;  ///< the thread count to restore (0: nothing changed)
};

}  // namespace detail
}  // namespace sae
