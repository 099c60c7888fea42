// Configure-time probe (CMakeLists.txt, SAE_GEMM_DEFAULT=auto): which library computes the
// fused encoder's tile product fastest on this machine, Eigen, the linked BLAS or oneDNN (fp32)?
// Prints "eigen=<GFLOP/s>;blas=<GFLOP/s>;dnnl=<GFLOP/s>" (medians of 5 interleaved rounds of
// gemm::measure_tiled, the encoder's tiles over every thread, at d = 768, m = 4096, B = 2048
// and the default tile shape; 0 for a library that is not linked). The answer becomes the
// compiled-in default backend, so every run of a build uses the same backend (and gives the
// same bits).
#include <sae/core/gemm.hpp>

#include <algorithm>
#include <cstdio>
#include <vector>

int main() {
  using sae::gemm::Backend;
  constexpr sae::Index d = 768, m = 4096, n = 2048;
  const Backend all[] = {Backend::Eigen, Backend::Blas, Backend::Dnnl};
  std::vector<double> rate[3];
  for (int round = 0; round < 5; ++round)
    for (int b = 0; b < 3; ++b) {
      const bool linked = b == 0 || (b == 1 && sae::gemm::blas_linked()) || (b == 2 && sae::gemm::dnnl_linked());
      rate[b].push_back(linked ? sae::gemm::measure_tiled(all[b], d, m, n, {}, 2) : 0.0);
    }
  for (auto& r : rate) std::sort(r.begin(), r.end());
  std::printf("eigen=%.1f;blas=%.1f;dnnl=%.1f", rate[0][2], rate[1][2], rate[2][2]);
  return 0;
}
