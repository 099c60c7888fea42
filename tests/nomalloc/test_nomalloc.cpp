// No-allocation test (issue 5 item 3): once a training step has sized every buffer, the sparse
// kernels, the optimizer step, the decoder constraint and the loss terms run without a single
// Eigen heap allocation (DESIGN.md §6).
//
// How: Eigen compiled with EIGEN_RUNTIME_NO_MALLOC routes every heap allocation it makes
// (aligned_malloc, realloc, ...) through check_that_malloc_is_allowed(), an eigen_assert on a
// process-wide flag set by Eigen::internal::set_is_malloc_allowed(). Hence:
//
//   - this file is its own executable (tests/nomalloc/CMakeLists.txt). The macro changes the
//     bodies of Eigen's inline allocator functions, so a TU of the same program compiled without
//     it (tests/main.cpp, any test_*.cpp) would be an ODR violation, and the linker could keep the
//     unchecked copies and silently disable the check. So this TU also holds Catch2's main and
//     does not link sae_test_main.
//   - assertions must be on (-UNDEBUG even in Release: eigen_assert is assert), checked below.
//   - single-threaded (OMP_NUM_THREADS=1 from ctest, and set_num_threads(1) here): the flag is a
//     plain static bool, and only a serial run makes the guarded results bit-identical to the
//     references computed on copies.
//
// What it cannot see: allocations that do not go through Eigen (std::vector growth, operator
// new, OpenBLAS's own buffers). LatentGroups::build, SparseCodes and the selections work on
// std::vectors only; those sections check that the results are right with the flag off, and
// rely on the kernels reusing the vectors' capacity (an operator-new count taken while writing
// this test saw none in a steady-state fused step, apart from BatchTopK's rare recomputation).
//
// What is left out on purpose: the dense encoder product. Eigen's general matrix product takes
// its blocking buffers (kc x mc and kc x nc panels) from the stack only when they fit under
// EIGEN_STACK_ALLOCATION_LIMIT (128 KiB), else from the heap, on every call: at d = 768 the
// fused encoder's Eigen-backend tile product allocates (the BLAS backend's buffers are
// OpenBLAS's). The selection half of the fused encoder (TopCHeap) and of the activations
// (select_top / select_batch) is therefore checked on prepared pre-activations. At this test's
// size (d = 32, m = 256, B = 64) the panels are at most 32 x 256 scalars and fit on the stack, so
// one last section also runs a whole training step with the flag off: that catches a temporary
// added anywhere in the step, and is exact for this size only.
#ifndef EIGEN_RUNTIME_NO_MALLOC
#define EIGEN_RUNTIME_NO_MALLOC
#endif

#ifdef NDEBUG
#error "test_nomalloc.cpp must be compiled with assertions on (-UNDEBUG): EIGEN_RUNTIME_NO_MALLOC is an eigen_assert"
#endif

#define CATCH_CONFIG_MAIN
#include "../helpers.hpp"  // <sae/sae.hpp> and <catch2/catch.hpp>, after the macro above

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <csignal>
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>
#define SAE_NOMALLOC_HAVE_FORK 1
#endif

using sae::Index;
using sae::Mat;
using sae::Vec;

namespace {

/// Forbids Eigen heap allocations for its lifetime (re-allowed on scope exit, also when a
/// REQUIRE throws).
struct NoMalloc {
  NoMalloc() { Eigen::internal::set_is_malloc_allowed(false); }
  ~NoMalloc() { Eigen::internal::set_is_malloc_allowed(true); }
  NoMalloc(const NoMalloc&) = delete;
  NoMalloc& operator=(const NoMalloc&) = delete;
};

/// Allows Eigen heap allocations for its lifetime, inside a NoMalloc scope (for a path that is
/// allowed to allocate, e.g. BatchTopK's rare recomputation of one token).
struct AllowMalloc {
  bool before = Eigen::internal::is_malloc_allowed();
  AllowMalloc() { Eigen::internal::set_is_malloc_allowed(true); }
  ~AllowMalloc() { Eigen::internal::set_is_malloc_allowed(before); }
  AllowMalloc(const AllowMalloc&) = delete;
  AllowMalloc& operator=(const AllowMalloc&) = delete;
};

/// ||a - b|| <= rel * max(1, ||b||) (call with mallocs allowed).
template <class A, class B>
bool close(const Eigen::MatrixBase<A>& a, const Eigen::MatrixBase<B>& b, double rel) {
  if (a.rows() != b.rows() || a.cols() != b.cols()) return false;
  const double diff = static_cast<double>((a - b).norm());
  return diff <= rel * std::max(1.0, static_cast<double>(b.norm()));
}

template <class Scalar>
bool close(const std::vector<Scalar>& a, const std::vector<Scalar>& b, double rel) {
  if (a.size() != b.size()) return false;
  using Map = Eigen::Map<const Vec<Scalar>>;
  const Index n = static_cast<Index>(a.size());
  return close(Map(a.data(), n), Map(b.data(), n), rel);
}

template <class Scalar>
bool same_params(const sae::Parameters<Scalar>& a, const sae::Parameters<Scalar>& b) {
  return a.W_enc == b.W_enc && a.W_dec == b.W_dec && a.b_enc == b.b_enc && a.b_dec == b.b_dec &&
         a.threshold == b.threshold;
}

template <class Scalar>
bool same_codes(const sae::SparseCodes<Scalar>& a, const sae::SparseCodes<Scalar>& b) {
  return a.d_sae == b.d_sae && a.offsets == b.offsets && a.indices == b.indices && a.values == b.values;
}

#ifdef SAE_NOMALLOC_HAVE_FORK
/// Runs @p f in a forked child with stderr silenced; returns the signal that ended the child, or
/// 0 if it exited normally (the child never returns to Catch2).
template <class F>
int signal_of_child(F&& f) {
  std::fflush(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    std::signal(SIGABRT, SIG_DFL);  // not Catch2's fatal-signal reporter
    const int null = open("/dev/null", O_WRONLY);
    if (null >= 0) dup2(null, 2);
    f();
    _exit(0);
  }
  int status = 0;
  if (pid < 0 || waitpid(pid, &status, 0) != pid) return -1;
  return WIFSIGNALED(status) ? WTERMSIG(status) : 0;
}
#endif

/// Brute force: token t's up to cap largest positive values of Z, ties to the lower latent,
/// listed by latent.
template <class Scalar>
std::vector<std::pair<std::int32_t, Scalar>> brute_top(const Mat<Scalar>& Z, Index t, Index cap) {
  std::vector<std::pair<Scalar, std::int32_t>> v;
  for (Index j = 0; j < Z.rows(); ++j)
    if (Z(j, t) > Scalar(0)) v.emplace_back(Z(j, t), static_cast<std::int32_t>(j));
  std::stable_sort(v.begin(), v.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  if (static_cast<Index>(v.size()) > cap) v.resize(static_cast<std::size_t>(cap));
  std::vector<std::pair<std::int32_t, Scalar>> out;
  for (const auto& [val, j] : v) out.emplace_back(j, val);
  std::sort(out.begin(), out.end());
  return out;
}

constexpr Index kD = 32, kM = 256, kK = 8, kB = 64;

/// A model after one full training step (forward_backward, project_decoder_gradient, Adam,
/// after_update) and one more forward_backward, all with mallocs allowed: every buffer of the
/// StepState, the gradients and the optimizer is sized, and `s` holds the forward pass and
/// `grads` the gradients of the current parameters.
template <class Model>
struct Trained {
  using Scalar = typename Model::scalar_type;
  static constexpr double tol = sae_test::Tol<Scalar>::rel;

  Model model;
  Mat<Scalar> X;
  typename Model::State s;
  sae::Parameters<Scalar> grads;
  sae::Adam<Scalar> adam;

  Trained() : model(sae_test::config(kD, kM, kK)) {
    sae::set_num_threads(1);
    X = sae_test::random_matrix<Scalar>(kD, kB, 17);
    model.initialize(X, 3);
    model.normalize_decoder();
    adam = sae::Adam<Scalar>(sae::AdamOptions{}, model.params());
    step(0);
    model.forward_backward(X, grads, s, 1);
  }

  typename Model::Report step(std::int64_t i) {
    const auto r = model.forward_backward(X, grads, s, i);
    model.project_decoder_gradient(grads);
    adam.step(model.params(), grads, 1e-3);
    model.after_update(s);
    return r;
  }

  const sae::Parameters<Scalar>& p() const { return model.params(); }
  Index candidates() const {  // the activation's per-token candidate count
    if constexpr (std::is_same_v<typename Model::activation_type, sae::BatchTopK>)
      return std::min<Index>(2 * kK + 8, kM);
    else
      return kK;
  }
};

}  // namespace

TEST_CASE("the no-allocation check is live in this build", "[core][nomalloc]") {
  REQUIRE(Eigen::internal::is_malloc_allowed());
  {
    NoMalloc guard;
    CHECK_FALSE(Eigen::internal::is_malloc_allowed());
    {
      AllowMalloc allow;
      CHECK(Eigen::internal::is_malloc_allowed());
    }
    CHECK_FALSE(Eigen::internal::is_malloc_allowed());
  }
  CHECK(Eigen::internal::is_malloc_allowed());

  // A forbidden allocation fails an eigen_assert, which aborts the process: it cannot be caught,
  // so an actual trip is shown in a forked child (POSIX only). A child that allocates with the
  // flag on, and one that only writes into existing storage with it off, exit normally, so the
  // abort is the allocation's.
#ifdef SAE_NOMALLOC_HAVE_FORK
  auto allocate = [] {
    Mat<float> a(64, 64);
    a.setOnes();
    if (a.sum() != 64.0f * 64.0f) _exit(3);
  };
  CHECK(signal_of_child([&] { allocate(); }) == 0);
  CHECK(signal_of_child([&] {
          Eigen::internal::set_is_malloc_allowed(false);
          allocate();
        }) == SIGABRT);
  Mat<float> existing(64, 64);
  CHECK(signal_of_child([&] {
          Eigen::internal::set_is_malloc_allowed(false);
          existing.setOnes();
          existing.resize(64, 64);  // same size: no reallocation
          if (existing.sum() != 64.0f * 64.0f) _exit(3);
        }) == 0);
#else
  WARN("no fork(): the abort on a forbidden allocation is not demonstrated on this platform");
#endif
}

TEMPLATE_TEST_CASE("sparse kernels, the optimizer and the loss allocate nothing once sized", "[core][nomalloc]",
                   sae::TopKSae<float>, sae::TopKSae<double>, sae::BatchTopKSae<float>, sae::BatchTopKSae<double>) {
  using Scalar = typename TestType::scalar_type;
  Trained<TestType> f;
  const auto& p = f.p();
  auto& s = f.s;
  const Index nnz = s.codes.nnz();
  REQUIRE(s.codes.tokens() == kB);
  REQUIRE(nnz > 0);
  const Mat<Scalar> F = s.codes.to_dense();

  SECTION("kernels::decode (sparse)") {
    const Mat<Scalar> expected = (p.W_dec * F).colwise() + p.b_dec;
    s.X_hat.setZero();
    {
      NoMalloc guard;
      sae::kernels::decode(p, s.codes, s.X_hat);
    }
    CHECK(close(s.X_hat, expected, f.tol));
  }

  SECTION("LatentGroups::build") {
    // std::vector only: NO_MALLOC sees Eigen's allocations, not these. The check is that the
    // counting sort is right when rebuilt into the sized groups.
    sae::kernels::LatentGroups fresh;
    fresh.build(s.codes);
    std::fill(s.groups.entry.begin(), s.groups.entry.end(), Index(-1));
    {
      NoMalloc guard;
      s.groups.build(s.codes);
    }
    CHECK(s.groups.start == fresh.start);
    CHECK(s.groups.entry == fresh.entry);
    CHECK(s.groups.token == fresh.token);
    REQUIRE(s.groups.start.back() == nnz);
    bool grouped = true;
    for (Index j = 0; j < kM; ++j)
      for (Index e = s.groups.start[j]; e < s.groups.start[j + 1]; ++e) {
        const Index i = s.groups.entry[e], t = s.groups.token[e];
        grouped &= s.codes.indices[i] == j && s.codes.offsets[t] <= i && i < s.codes.offsets[t + 1];
      }
    CHECK(grouped);
  }

  SECTION("kernels::decoder_backward (sparse)") {
    const Mat<Scalar>& G = s.grad_xhat;
    REQUIRE(G.norm() > 0);
    const Mat<Scalar> gW = G * F.transpose();
    const Vec<Scalar> gb = G.rowwise().sum();
    std::vector<Scalar> gcodes(static_cast<std::size_t>(nnz));
    for (Index t = 0; t < kB; ++t)
      for (Index i = s.codes.offsets[t]; i < s.codes.offsets[t + 1]; ++i)
        gcodes[i] = G.col(t).dot(p.W_dec.col(s.codes.indices[i]));
    f.grads.set_zero();
    std::fill(s.grad_codes.begin(), s.grad_codes.end(), Scalar(0));
    {
      NoMalloc guard;
      sae::kernels::decoder_backward(p, s.codes, s.groups, G, s.grad_codes, f.grads);
    }
    CHECK(close(f.grads.W_dec, gW, f.tol));
    CHECK(close(f.grads.b_dec, gb, f.tol));
    CHECK(close(s.grad_codes, gcodes, f.tol));
    CHECK(f.grads.W_enc.isZero(0));
  }

  SECTION("kernels::encoder_backward (sparse)") {
    REQUIRE(f.model.config().apply_b_dec_to_input);
    const Mat<Scalar> R = sae_test::random_matrix<Scalar>(nnz, 1, 23);
    const std::vector<Scalar> grad_z(R.data(), R.data() + nnz);
    Mat<Scalar> dZ = Mat<Scalar>::Zero(kM, kB);
    for (Index t = 0; t < kB; ++t)
      for (Index i = s.codes.offsets[t]; i < s.codes.offsets[t + 1]; ++i) dZ(s.codes.indices[i], t) = grad_z[i];
    const Vec<Scalar> sum = dZ.rowwise().sum();
    const Mat<Scalar> gWe = (f.X.colwise() - p.b_dec) * dZ.transpose();
    const Vec<Scalar> gbd = -(p.W_enc * sum);
    f.grads.set_zero();
    s.dz_sum.setZero();
    {
      NoMalloc guard;
      sae::kernels::encoder_backward(p, true, s.codes, s.groups, f.X, grad_z, f.grads, s.dz_sum);
    }
    CHECK(close(f.grads.W_enc, gWe, f.tol));
    CHECK(close(f.grads.b_enc, sum, f.tol));
    CHECK(close(f.grads.b_dec, gbd, f.tol));
    CHECK(close(s.dz_sum, sum, f.tol));
    CHECK(f.grads.W_dec.isZero(0));
  }

  SECTION("TopCHeap::offer_run and sort_by_latent on a prepared tile") {
    // The selection half of the fused encoder: the tile of products W_enc^T X is computed with
    // mallocs allowed, then each token's column is offered with the bias in chunks of 100
    // latents (not a multiple of the skip groups), as fused_top_c does tile by tile.
    const Index cap = f.candidates(), chunk = 100;
    Mat<Scalar> Z, Zb;
    Zb.noalias() = p.W_enc.transpose() * f.X;
    sae::kernels::preactivations(p, s.c, f.X, Z);
    std::vector<Scalar> values(static_cast<std::size_t>(kB * cap), Scalar(-1));
    std::vector<std::int32_t> indices(static_cast<std::size_t>(kB * cap), -1);
    std::vector<Index> count(static_cast<std::size_t>(kB), -1);
    {
      NoMalloc guard;
      for (Index t = 0; t < kB; ++t) {
        sae::kernels::TopCHeap<Scalar> h{values.data() + t * cap, indices.data() + t * cap, cap};
        for (Index j0 = 0; j0 < kM; j0 += chunk)
          h.offer_run(Zb.data() + t * kM + j0, s.c.data() + j0, std::min(chunk, kM - j0),
                      static_cast<std::int32_t>(j0));
        h.sort_by_latent();
        count[t] = h.size;
      }
    }
    bool same = true;
    for (Index t = 0; t < kB; ++t) {
      const auto want = brute_top(Z, t, cap);
      same &= count[t] == static_cast<Index>(want.size());
      for (Index i = 0; same && i < count[t]; ++i)
        same &= indices[t * cap + i] == want[i].first && values[t * cap + i] == want[i].second;
    }
    CHECK(same);
  }

  SECTION("the activation's selection from prepared candidates") {
    // The model's encode path runs the tile product (see the top of the file), so the
    // activation gets a top_c callback that copies candidates prepared by plain_top_c.
    const Index cap = f.candidates();
    std::vector<Scalar> cv(static_cast<std::size_t>(kB * cap));
    std::vector<std::int32_t> ci(static_cast<std::size_t>(kB * cap));
    std::vector<Index> cn(static_cast<std::size_t>(kB));
    Mat<Scalar> Zblock;
    sae::kernels::plain_top_c(p, s.c, f.X, cap, Zblock, cv.data(), ci.data(), cn.data());
    auto top_c = [&](Index c, Scalar* values, std::int32_t* indices, Index* count) {
      if (c != cap) throw std::logic_error("unexpected candidate count");
      std::copy(cv.begin(), cv.end(), values);
      std::copy(ci.begin(), ci.end(), indices);
      std::copy(cn.begin(), cn.end(), count);
    };
    const sae::SparseCodes<Scalar> forward = s.codes;  // what the fused encoder selected
    sae::SparseCodes<Scalar> reference;

    if constexpr (std::is_same_v<typename TestType::activation_type, sae::TopK>) {
      f.model.activation().select_top(kB, kM, top_c, reference);
      {
        NoMalloc guard;
        f.model.activation().select_top(kB, kM, top_c, s.codes);
      }
    } else {
      // A token whose candidates may hide more gets all its m pre-activations recomputed: that
      // rare path allocates (a Vec of m values and std::vectors) and is allowed to, so the
      // callback lifts the ban while it runs (with this seed no token needs it).
      int recomputed = 0;
      auto token = [&](Index t, Vec<Scalar>& z) {
        AllowMalloc allow;
        ++recomputed;
        z.noalias() = p.W_enc.transpose() * f.X.col(t);
        z += s.c;
      };
      sae::kernels::EncoderState<Scalar> fresh;
      f.model.activation().select_batch(kB, kM, top_c, token, reference, fresh);
      const int recomputed_reference = recomputed;
      recomputed = 0;
      {
        NoMalloc guard;
        f.model.activation().select_batch(kB, kM, top_c, token, s.codes, s.encoder);
      }
      CHECK(recomputed == recomputed_reference);
      CHECK(s.codes.nnz() == kK * kB);
    }
    CHECK(same_codes(s.codes, reference));
    // and the same selection as the fused encoder made in the forward pass
    CHECK(s.codes.offsets == forward.offsets);
    CHECK(s.codes.indices == forward.indices);
    CHECK(close(s.codes.values, forward.values, f.tol));
  }

  SECTION("Adam::step") {
    sae::Adam<Scalar> ref_adam = f.adam;
    sae::Parameters<Scalar> ref = p;
    ref_adam.step(ref, f.grads, 1e-3);
    const sae::Parameters<Scalar> before = p;
    // The first-tensor update by the formula, in double.
    const double t = static_cast<double>(f.adam.steps_taken() + 1), lr = 1e-3;
    const Eigen::ArrayXXd g = f.grads.W_enc.template cast<double>().array();
    const Eigen::ArrayXXd m1 = 0.9 * f.adam.first_moment().W_enc.template cast<double>().array() + 0.1 * g;
    const Eigen::ArrayXXd v1 = 0.999 * f.adam.second_moment().W_enc.template cast<double>().array() + 0.001 * g * g;
    const Eigen::ArrayXXd W_expected =
        before.W_enc.template cast<double>().array() -
        (lr / (1 - std::pow(0.9, t))) * m1 / ((v1 / (1 - std::pow(0.999, t))).sqrt() + 1e-8);
    {
      NoMalloc guard;
      f.adam.step(f.model.params(), f.grads, 1e-3);
    }
    CHECK(same_params(p, ref));
    CHECK(same_params(f.adam.first_moment(), ref_adam.first_moment()));
    CHECK(same_params(f.adam.second_moment(), ref_adam.second_moment()));
    CHECK(f.adam.steps_taken() == ref_adam.steps_taken());
    CHECK_FALSE(p.W_enc == before.W_enc);
    CHECK(close(p.W_enc.template cast<double>(), W_expected.matrix(), 1e-5));
  }

  SECTION("project_decoder_gradient") {
    Mat<Scalar> expected = f.grads.W_dec;
    for (Index j = 0; j < kM; ++j) {
      const auto w = p.W_dec.col(j);
      expected.col(j) -= (expected.col(j).dot(w) / w.squaredNorm()) * w;
    }
    REQUIRE_FALSE(close(f.grads.W_dec, expected, f.tol));  // the projection does something
    {
      NoMalloc guard;
      f.model.project_decoder_gradient(f.grads);
    }
    CHECK(close(f.grads.W_dec, expected, f.tol));
    const Vec<Scalar> along = (f.grads.W_dec.array() * p.W_dec.array()).colwise().sum().transpose();
    CHECK(along.cwiseAbs().maxCoeff() < Scalar(100) * Scalar(f.tol) * f.grads.W_dec.cwiseAbs().maxCoeff());
  }

  SECTION("normalize_decoder") {
    Mat<Scalar>& W = f.model.params().W_dec;
    for (Index j = 0; j < kM; ++j) W.col(j) *= Scalar(1 + j % 5) / Scalar(3);
    W.col(5).setZero();  // a zero column is left alone
    Mat<Scalar> expected = W;
    for (Index j = 0; j < kM; ++j)
      if (j != 5) expected.col(j).normalize();
    {
      NoMalloc guard;
      f.model.normalize_decoder();
    }
    CHECK(close(W, expected, f.tol));
    CHECK(W.col(5).isZero(0));
    Vec<Scalar> norms = W.colwise().norm().transpose();
    norms[5] = Scalar(1);
    CHECK((norms.array() - Scalar(1)).abs().maxCoeff() <= Scalar(10) * Scalar(f.tol));
  }

  SECTION("kernels::count_active and update_since_fired (sparse)") {
    std::vector<std::int64_t> since(static_cast<std::size_t>(kM));
    for (Index j = 0; j < kM; ++j) since[j] = 1000 + 7 * j;
    std::vector<std::int64_t> expected = since;
    for (Index j = 0; j < kM; ++j) expected[j] = (F.row(j).array() != Scalar(0)).any() ? 0 : since[j] + kB;
    const Index active = (F.array() != Scalar(0)).count();
    Index counted = -1;
    {
      NoMalloc guard;
      counted = sae::kernels::count_active(s.codes);
      sae::kernels::update_since_fired(s.codes, since);
    }
    CHECK(counted == active);
    CHECK(counted == nnz);  // every stored code of a TopK-family activation is positive
    CHECK(since == expected);
  }

  SECTION("Reconstruction::accumulate") {
    const Mat<Scalar> E = s.X_hat - f.X;
    const double value = static_cast<double>(E.squaredNorm()) / kB;
    const Mat<Scalar> grad_expected = E * (Scalar(2) / Scalar(kB));
    s.grad_xhat.setZero();
    double got = -1;
    {
      NoMalloc guard;
      got = sae::Reconstruction{}.accumulate(f.X, p, s, f.grads);
    }
    CHECK(got == Approx(value).epsilon(f.tol));
    CHECK(close(s.grad_xhat, grad_expected, f.tol));
  }

  SECTION("a whole training step (exact at this size only, see the top of the file)") {
    // No latent is dead yet (AuxK's dead_tokens is 10M), so AuxK adds nothing: its dead-latent
    // path allocates its own temporaries and is not covered here.
    TestType ref_model = f.model;
    auto ref_state = s;
    auto ref_grads = f.grads;
    auto ref_adam = f.adam;
    const auto want = ref_model.forward_backward(f.X, ref_grads, ref_state, 2);
    ref_model.project_decoder_gradient(ref_grads);
    ref_adam.step(ref_model.params(), ref_grads, 1e-3);
    ref_model.after_update(ref_state);

    typename TestType::Report got;
    {
      NoMalloc guard;
      got = f.step(2);
    }
    CHECK(got.total == want.total);
    CHECK(got.terms == want.terms);
    CHECK(same_params(p, ref_model.params()));
    CHECK(same_params(f.grads, ref_grads));
    CHECK(same_codes(s.codes, ref_state.codes));
    if constexpr (std::is_same_v<typename TestType::activation_type, sae::BatchTopK>)
      CHECK(f.model.activation().threshold == ref_model.activation().threshold);
    CHECK(f.model.loss().template get<sae::AuxK>().since_fired ==
          ref_model.loss().template get<sae::AuxK>().since_fired);
  }
}
