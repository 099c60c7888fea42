// The MPI side of `sae train`: under mpirun / srun (and in a build with MPI, SAE_HAVE_MPI=1),
// the ranks train one SAE data-parallel (sae/train/distributed.hpp); rank 0 alone prints,
// checkpoints and saves.
#pragma once

#include <chrono>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <string>
#include <thread>

#include "common.hpp"

#if SAE_HAVE_MPI
#include <mpi.h>

#include <sae/train/mpi.hpp>
#endif

namespace sae_cli {

/// The number of ranks a launcher started this process among, from the environment it sets
/// (OpenMPI's mpirun, MPICH's hydra and Slurm's PMI-2, PMIx: srun --mpi=pmix); 0 when none.
inline int launched_ranks() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"}) {
    if (const char* s = std::getenv(v)) return std::atoi(s);
  }
  if (std::getenv("PMIX_RANK")) return 1;  // PMIx without a size variable: ask MPI
  return 0;
}

/// Ranks of this job on this machine (for the default thread count), 1 when unknown.
inline int local_ranks() {
  for (const char* v : {"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE"}) {
    if (const char* s = std::getenv(v); s && std::atoi(s) > 0) return std::atoi(s);
  }
  return 1;
}

/// MPI_Init in the constructor and MPI_Finalize in the destructor when the process was started
/// by a launcher; nothing otherwise (a plain `sae train` is one process, as before).
class MpiSession {
 public:
  MpiSession() {
    const int launched = launched_ranks();
#if SAE_HAVE_MPI
    if (launched > 0) {
      int already = 0;
      MPI_Initialized(&already);
      if (!already) {
        MPI_Init(nullptr, nullptr);
        owned_ = true;
      }
      comm_ = std::make_unique<sae::MpiCollectives>(MPI_COMM_WORLD);
    }
#else
    if (launched > 1)
      throw UsageError("started as one of " + std::to_string(launched) +
                       " MPI ranks, but this sae was built without MPI (install libopenmpi-dev and rebuild), "
                       "so each rank would train alone");
#endif
  }
  ~MpiSession() {
#if SAE_HAVE_MPI
    comm_.reset();
    if (owned_) MPI_Finalize();
#endif
  }
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;

  /// Ends every rank of the job with exit code @p code (MPI_Abort; std::exit without MPI).
  [[noreturn]] void abort(int code) const {
#if SAE_HAVE_MPI
    if (comm_) MPI_Abort(MPI_COMM_WORLD, code);
#endif
    std::exit(code);
  }

  /// Reports a failure of this rank's run_training and ends the job (only with several ranks).
  /// Rank 0 prints the line main() would print and aborts every rank at once, so ranks waiting
  /// in a collective do not hang. Another rank first waits: a failure every rank meets (a bad
  /// setting, a bad file) is then reported once, by rank 0, whose abort ends this process; one
  /// only this rank met is printed after the wait, naming the rank, and ends the job.
  [[noreturn]] void fail(const std::string& what, int code) const {
    if (rank() != 0) {
      std::this_thread::sleep_for(std::chrono::seconds(3));
      std::cerr << "sae: error (MPI rank " << rank() << " of " << size() << "): " << what << std::endl;
    } else {
      std::cerr << "sae: error: " << what << std::endl;
    }
    abort(code);
  }

  int rank() const { return comm_ ? comm_->rank() : 0; }
  int size() const { return comm_ ? comm_->size() : 1; }
  /// The ranks to train over, or nullptr for one process (also for a group of one).
  sae::Collectives* collectives() const { return size() > 1 ? comm_.get() : nullptr; }
  /// Seconds spent in collectives, and bytes this rank sent in them.
  double comm_seconds() const {
#if SAE_HAVE_MPI
    if (comm_) return comm_->seconds();
#endif
    return 0;
  }
  double comm_bytes() const {
#if SAE_HAVE_MPI
    if (comm_) return comm_->bytes();
#endif
    return 0;
  }

 private:
#if SAE_HAVE_MPI
  std::unique_ptr<sae::MpiCollectives> comm_;
  bool owned_ = false;
#else
  std::unique_ptr<sae::Collectives> comm_;
#endif
};

}  // namespace sae_cli
