// Data-parallel training (sae/train/distributed.hpp) without MPI: the ranks are threads of this
// process, exchanging through ThreadCollectives below (shared memory and a barrier), so the
// library part is tested in every build. tests/python/test_mpi.py runs the same over MPI.
#include "helpers.hpp"

#include <barrier>
#include <cstring>
#include <thread>

#include <sae/train/distributed.hpp>

using sae::Index;
using sae::Mat;

namespace {

/// The ranks are N threads; every collective publishes a pointer per rank, waits at a barrier,
/// reads the others' data, and waits again.
class ThreadGroup {
 public:
  explicit ThreadGroup(int n)
      : n_(n), slots_(static_cast<std::size_t>(n)), sizes_(static_cast<std::size_t>(n)), barrier_(n) {}
  int n_;
  std::vector<const void*> slots_;
  std::vector<std::size_t> sizes_;
  std::barrier<> barrier_;
};

class ThreadCollectives final : public sae::Collectives {
 public:
  ThreadCollectives(ThreadGroup& g, int rank) : g_(g), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return g_.n_; }

  void allgather(const double* in, std::size_t n, double* out) override {
    publish(in, n);
    for (int q = 0; q < g_.n_; ++q) std::memcpy(out + q * n, slot<double>(q), n * sizeof(double));
    g_.barrier_.arrive_and_wait();
  }
  void reduce_scatter(float* x, std::size_t units, std::size_t unit, const float* w) override {
    reduce_scatter_impl(x, units, unit, w);
  }
  void reduce_scatter(double* x, std::size_t units, std::size_t unit, const double* w) override {
    reduce_scatter_impl(x, units, unit, w);
  }
  void allgather_units(float* x, std::size_t units, std::size_t unit) override { allgather_impl(x, units, unit); }
  void allgather_units(double* x, std::size_t units, std::size_t unit) override { allgather_impl(x, units, unit); }
  void any(std::uint8_t* flags, std::size_t n) override {
    std::vector<std::uint8_t> all(n, 0);
    publish(flags, n);
    for (int q = 0; q < g_.n_; ++q)
      for (std::size_t i = 0; i < n; ++i) all[i] |= slot<std::uint8_t>(q)[i];
    g_.barrier_.arrive_and_wait();
    std::memcpy(flags, all.data(), n);
  }
  void allgatherv(const float* in, std::size_t n, std::vector<float>& out, std::vector<std::size_t>& counts) override {
    allgatherv_impl(in, n, out, counts);
  }
  void allgatherv(const double* in, std::size_t n, std::vector<double>& out,
                  std::vector<std::size_t>& counts) override {
    allgatherv_impl(in, n, out, counts);
  }

 private:
  template <class T>
  const T* slot(int q) const {
    return static_cast<const T*>(g_.slots_[static_cast<std::size_t>(q)]);
  }
  void publish(const void* p, std::size_t n) {
    g_.slots_[static_cast<std::size_t>(rank_)] = p;
    g_.sizes_[static_cast<std::size_t>(rank_)] = n;
    g_.barrier_.arrive_and_wait();
  }
  template <class T>
  void reduce_scatter_impl(T* x, std::size_t units, std::size_t unit, const T* w) {
    publish(x, units * unit);
    const auto [u0, u1] = sae::rank_range(units, rank_, g_.n_);
    std::vector<T> sum((u1 - u0) * unit);
    for (std::size_t e = 0; e < sum.size(); ++e) {
      T acc = w ? w[0] * slot<T>(0)[u0 * unit + e] : slot<T>(0)[u0 * unit + e];
      for (int q = 1; q < g_.n_; ++q) acc += w ? w[q] * slot<T>(q)[u0 * unit + e] : slot<T>(q)[u0 * unit + e];
      sum[e] = acc;
    }
    g_.barrier_.arrive_and_wait();  // every rank has read before any writes
    std::copy(sum.begin(), sum.end(), x + u0 * unit);
    g_.barrier_.arrive_and_wait();
  }
  template <class T>
  void allgather_impl(T* x, std::size_t units, std::size_t unit) {
    publish(x, units * unit);
    for (int q = 0; q < g_.n_; ++q) {
      if (q == rank_) continue;
      const auto [u0, u1] = sae::rank_range(units, q, g_.n_);
      std::copy(slot<T>(q) + u0 * unit, slot<T>(q) + u1 * unit, x + u0 * unit);
    }
    g_.barrier_.arrive_and_wait();
  }
  template <class T>
  void allgatherv_impl(const T* in, std::size_t n, std::vector<T>& out, std::vector<std::size_t>& counts) {
    publish(in, n);
    out.clear();
    counts.assign(static_cast<std::size_t>(g_.n_), 0);
    for (int q = 0; q < g_.n_; ++q) {
      counts[static_cast<std::size_t>(q)] = g_.sizes_[static_cast<std::size_t>(q)];
      out.insert(out.end(), slot<T>(q), slot<T>(q) + counts[static_cast<std::size_t>(q)]);
    }
    g_.barrier_.arrive_and_wait();
  }

  ThreadGroup& g_;
  int rank_;
};

sae::SaeConfig toy_config(Index d_sae, Index k) {
  sae::SaeConfig cfg;
  cfg.d_in = 16;
  cfg.d_sae = d_sae;
  cfg.k = k;
  return cfg;
}

/// Trains make(cfg) for opts.steps on @p X in one process, and on N thread-ranks; returns the
/// largest |w_N - w_1| / max |w_1| over the tensors, and checks that every rank ends with the
/// same weights bit for bit.
template <class Make>
double train_and_compare(Make make, int N, const Mat<float>& X, const sae::TrainOptions& opts) {
  auto one = make();
  sae::ShuffledBatches<float> src1(X, opts.batch, 5);
  sae::train(one, src1, opts);

  ThreadGroup group(N);
  std::vector<decltype(make())> models;
  for (int r = 0; r < N; ++r) models.push_back(make());
  std::vector<std::string> errors(static_cast<std::size_t>(N));
  std::vector<std::thread> threads;
  for (int r = 0; r < N; ++r)
    threads.emplace_back([&, r] {
      try {
        sae::set_num_threads(1);  // this thread's OpenMP regions
        ThreadCollectives comm(group, r);
        sae::ShuffledBatches<float> src(X, opts.batch, 5);
        sae::TrainState<float> st;
        sae::train_from(
            models[static_cast<std::size_t>(r)], src, opts, st, [](const sae::TrainProgress&) {},
            [](const sae::TrainState<float>&) {}, &comm);
      } catch (const std::exception& e) {
        errors[static_cast<std::size_t>(r)] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  for (const auto& e : errors) REQUIRE(e.empty());
  double worst = 0;
  sae::zip_tensors(
      [&](const char*, const auto& a, const auto& b) {
        if (a.size() == 0) return;
        worst = std::max(worst, static_cast<double>((a - b).cwiseAbs().maxCoeff() / a.cwiseAbs().maxCoeff()));
      },
      one.params(), models[0].params());
  for (int r = 1; r < N; ++r)
    sae::zip_tensors([&](const char*, const auto& a, const auto& b) { REQUIRE(a == b); }, models[0].params(),
                     models[static_cast<std::size_t>(r)].params());
  return worst;
}

}  // namespace

TEST_CASE("Data-parallel training on thread ranks is one process's training to float rounding",
          "[train][distributed]") {
  sae::set_num_threads(1);
  sae::SyntheticOptions o;
  o.d_in = 16;
  o.features = 40;
  o.samples = 4000;
  o.seed = 3;
  const auto data = sae::make_superposition(o);
  sae::TrainOptions opts;
  opts.steps = 60;
  opts.batch = 128;
  opts.lr = 2e-3;
  opts.log_every = 0;
  opts.dead_tokens = 500;  // AuxK and the dead counters take part
  for (const int N : {2, 3}) {
    SECTION("topk + AuxK, " + std::to_string(N) + " ranks") {
      const double diff = train_and_compare(
          [] {
            sae::TopKSae<float> m(toy_config(96, 3));
            m.loss().get<sae::AuxK>().dead_tokens = 500;
            return m;
          },
          N, data.X, opts);
      INFO("max relative difference " << diff);
      REQUIRE(diff < 1e-4);
    }
    SECTION("batchtopk + AuxK, " + std::to_string(N) + " ranks") {
      const double diff = train_and_compare(
          [] {
            sae::BatchTopKSae<float> m(toy_config(96, 3));
            m.loss().get<sae::AuxK>().dead_tokens = 500;
            return m;
          },
          N, data.X, opts);
      INFO("max relative difference " << diff);
      REQUIRE(diff < 1e-4);
    }
  }
}

TEST_CASE("Data-parallel: batch shares and owned units are contiguous, in rank order", "[train][distributed]") {
  REQUIRE(sae::batch_share(10, 0, 3).count == 3);
  REQUIRE(sae::batch_share(10, 2, 3).begin == 6);
  REQUIRE(sae::batch_share(10, 2, 3).count == 4);
  REQUIRE(sae::rank_range(10, 1, 3) == std::pair<std::size_t, std::size_t>{3, 6});
}
