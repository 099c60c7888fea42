// The cost of libsae's deterministic gradient sum (sae::MpiCollectives: MPI_Alltoallv, a sum in
// rank order, MPI_Allgatherv) against MPI_Allreduce, whose order of additions MPI does not fix,
// at the size of one TopK step's W_enc + W_dec gradients (2 d m floats; docs/distributed.md).
//
//   built as <build>/bin/bench_mpi_reduce with SAE_BUILD_BENCHMARKS=ON when MPI is found, or by hand:
//   mpicxx -O3 -march=native -std=c++20 -Iinclude -isystem /usr/include/eigen3 benchmarks/mpi_reduce.cpp -o mpi_reduce
//   mpirun -np 2 ./mpi_reduce [d] [m] [reps]        (default 768 16384 10)
//
// Prints, on rank 0, the median seconds per sum of each, and whether MPI_Allreduce's result has
// the same bits as the rank-order sum.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include <sae/train/mpi.hpp>  // <mpi.h>, without its C++ bindings

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  const std::size_t d = argc > 1 ? std::strtoul(argv[1], nullptr, 10) : 768;
  const std::size_t m = argc > 2 ? std::strtoul(argv[2], nullptr, 10) : 16384;
  const int reps = argc > 3 ? std::atoi(argv[3]) : 10;
  sae::MpiCollectives comm(MPI_COMM_WORLD);
  const std::size_t n = 2 * d * m;
  std::vector<float> x(n), y(n), base(n);
  for (std::size_t i = 0; i < n; ++i)
    base[i] = static_cast<float>(((i * 2654435761u + static_cast<std::size_t>(comm.rank()) * 40503u) % 1000003) * 1e-6);
  std::vector<double> ours, theirs;
  for (int r = 0; r < reps; ++r) {
    x = base;
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime();
    comm.sum_in_rank_order(x.data(), n);
    ours.push_back(MPI_Wtime() - t0);
    y = base;
    MPI_Barrier(MPI_COMM_WORLD);
    t0 = MPI_Wtime();
    MPI_Allreduce(MPI_IN_PLACE, y.data(), static_cast<int>(n), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    theirs.push_back(MPI_Wtime() - t0);
  }
  std::sort(ours.begin(), ours.end());
  std::sort(theirs.begin(), theirs.end());
  const bool same = std::memcmp(x.data(), y.data(), n * sizeof(float)) == 0;
  if (comm.rank() == 0)
    std::printf(
        "%d ranks, %zu floats (%.1f MB): rank-order sum %.4f s, MPI_Allreduce %.4f s (medians of %d); "
        "same bits: %s\n",
        comm.size(), n, static_cast<double>(n) * 4 / 1e6, ours[ours.size() / 2], theirs[theirs.size() / 2], reps,
        same ? "yes" : "no");
  MPI_Finalize();
  return 0;
}
