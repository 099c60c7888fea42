// Configure-time probe (CMakeLists.txt, SAE_GEMM_DEFAULT=auto): which library computes the
// fused encoder's tile product faster on this machine, Eigen or the linked BLAS? Prints
// "eigen=<GFLOP/s>;blas=<GFLOP/s>" (medians of 5 interleaved rounds, every thread busy, at
// d = 768 and the default tile shape). The answer becomes the compiled-in default backend, so
// every run of a build uses the same backend (and gives the same bits).
#include <sae/core/gemm.hpp>

#include <algorithm>
#include <cstdio>
#include <vector>

int main() {
  using sae::gemm::Backend;
  constexpr sae::Index d = 768;
  std::vector<double> eigen, blas;
  for (int round = 0; round < 5; ++round) {
    eigen.push_back(sae::gemm::measure_tiles<float>(Backend::Eigen, d, {}, 2));
    blas.push_back(sae::gemm::measure_tiles<float>(Backend::Blas, d, {}, 2));
  }
  std::sort(eigen.begin(), eigen.end());
  std::sort(blas.begin(), blas.end());
  std::printf("eigen=%.1f;blas=%.1f", eigen[2], blas[2]);
  return 0;
}
