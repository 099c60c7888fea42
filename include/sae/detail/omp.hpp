/// @file sae/detail/omp.hpp
/// OpenMP helpers that compile to nothing (and warn about nothing) without OpenMP.
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

/// Sets the threads used by libsae's loops and Eigen's products (n <= 0 keeps the default).
inline void set_num_threads(int n) {
  if (n <= 0) return;
#ifdef _OPENMP
  omp_set_num_threads(n);
#endif
  Eigen::setNbThreads(n);
}

}  // namespace sae
