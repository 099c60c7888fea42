/// @file tests/main.cpp
/// The Catch2 runner for `sae_tests`: the only TU with CATCH_CONFIG_RUNNER, and no tests.
/// Prints the libsae and Eigen versions (and the run's rng seed and thread count) before
/// running, so a failure log says what it was built against. The banner goes to stderr so
/// that machine-readable reporters (-r junit / -r xml) and listings on stdout stay clean.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <Eigen/Core>
#include <sae/version.hpp>

#include <iostream>

#ifdef _OPENMP
#include <omp.h>
#endif

int main(int argc, char* argv[]) {
  Catch::Session session;
  if (const int rc = session.applyCommandLine(argc, argv); rc != 0) {
    return rc;
  }

  std::cerr << "libsae " << sae::version_string << ", Eigen " << EIGEN_WORLD_VERSION << '.' << EIGEN_MAJOR_VERSION
            << '.' << EIGEN_MINOR_VERSION << '\n';
#ifdef _OPENMP
  const int threads = omp_get_max_threads();
#else
  const int threads = 1;
#endif
  std::cerr << "rng seed " << session.config().rngSeed() << ", threads " << threads << '\n';

  return session.run();
}
