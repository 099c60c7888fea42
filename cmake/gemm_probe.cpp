// Configure-time probe (CMakeLists.txt, SAE_GEMM_DEFAULT=auto): which library computes the
// fused encoder's tile product faster on this machine, Eigen or the linked BLAS? Prints
// "eigen=<GFLOP/s>;blas=<GFLOP/s>" (medians of 5 interleaved rounds of
// gemm::measure_tiled, the encoder's tiles over every thread, at d = 768, m = 4096,
// B = 2048 and the default tile shape). The answer becomes the compiled-in default backend, so
// every run of a build uses the same backend (and gives the same bits).
#include <sae/core/gemm.hpp>

#include <algorithm>
#include <cstdio>
#include <vector>

int main() {
  using sae::gemm::Backend;
  constexpr sae::Index d = 768, m = 4096, n = 2048;
  std::vector<double> eigen, blas;
  for (int round = 0; round < 5; ++round) {
    eigen.push_back(sae::gemm::measure_tiled<float>(Backend::Eigen, d, m, n, {}, 2));
    blas.push_back(sae::gemm::measure_tiled<float>(Backend::Blas, d, m, n, {}, 2));
  }
  std::sort(eigen.begin(), eigen.end());
  std::sort(blas.begin(), blas.end());
  std::printf("eigen=%.1f;blas=%.1f", eigen[2], blas[2]);
  return 0;
}
