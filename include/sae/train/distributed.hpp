/// @file sae/train/distributed.hpp
/// Data-parallel training: N processes (ranks) train one SAE, each on a contiguous share of
/// every global batch, and the step is the step of one process on the whole batch.
///
/// This header needs no MPI: the message passing is the Collectives interface below, which
/// sae/train/mpi.hpp implements with MPI (built only where MPI is found). A program that never
/// passes a Collectives trains exactly as before.
///
///     #include <sae/train/mpi.hpp>                      // SAE_HAVE_MPI builds only
///     sae::MpiCollectives comm(MPI_COMM_WORLD);
///     sae::TrainState<float> st;
///     sae::train_from(model, source, opts, st, on_progress, on_step, &comm);
///
/// What is combined, per step (docs/distributed.md has the cost model):
///   - the gradients: every rank's gradient (its loss terms normalised by its own B_r tokens) is
///     weighted by B_r / B and the weighted gradients are summed element by element in rank
///     order 0, 1, ..., N-1, so the sum has the same bits on every rank and in every run with the
///     same N. W_enc and W_dec (the d x m bulk) are reduce-scattered by latent columns: rank q
///     receives the summed gradient of its own m/N columns only, applies the decoder projection
///     and the Adam update to those columns (the same arithmetic as Adam::step), and the updated
///     columns are all-gathered. The small tensors (b_enc, b_dec, threshold) are summed and
///     updated on every rank. So the O(d m) optimizer work is divided among the ranks, and the
///     traffic is that of one all-reduce (reduce-scatter + all-gather). Adam's moments of the
///     other ranks' columns are stale until gather_sharded_moments (train_from calls it after
///     the last step; a caller that checkpoints from on_step calls it first, as run.hpp does);
///   - AuxK, whose normaliser sum_t ||e_t||^2 is over the whole batch: its gradient is computed
///     apart and weighted by each rank's share of that global sum;
///   - BatchTopK's selection of the k B largest pre-activations of the whole batch and its
///     threshold (activations/batch_topk.hpp, through the Collectives it is given);
///   - OrtSAE's orthogonality penalty, which depends on W_dec only: each rank computes its share
///     of the random chunks (chunk q on rank q mod N), added with weight 1;
///   - jumprelu's target-L0 penalty lambda (L0/T - 1)^2, a non-linear function of the whole
///     batch's L0: applied once the global L0 is known (each rank's dL0/dtheta is linear);
///   - the loss terms, L0, FVU (from per-rank sums, counts, column sums and centred sums of
///     squares) by one small all-gather, added in rank order;
///   - which latents fired (a bitwise OR of m bytes): the trainer's and AuxK's dead-latent
///     counters advance by the global B and reset where a latent fired on any rank.
/// Every rank ends the step with the same weights, bit for bit.
///
/// Exact for every variant libsae lists: standard (ReLU + L1), topk and batchtopk (+ AuxK),
/// jumprelu (L0 or target-L0 penalty), matryoshka_batchtopk and ortsae. A model with a loss term
/// or activation not listed in detail::data_parallel_term / data_parallel_activation is refused
/// (data_parallel_refusal) rather than trained wrongly.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "../activations/batch_topk.hpp"
#include "../activations/jumprelu.hpp"
#include "../activations/relu.hpp"
#include "../activations/topk.hpp"
#include "../core/collectives.hpp"
#include "../core/kernels.hpp"
#include "../core/parameters.hpp"
#include "../detail/omp.hpp"
#include "../losses/aux_k.hpp"
#include "../losses/combined_loss.hpp"
#include "../losses/l0_sparsity.hpp"
#include "../losses/l1_sparsity.hpp"
#include "../losses/matryoshka.hpp"
#include "../losses/orthogonality.hpp"
#include "../losses/reconstruction.hpp"
#include "../optim/adam.hpp"

namespace sae {

/// Completes the Adam moments of W_enc and W_dec on every rank after data-parallel steps (each
/// rank updates only its own columns' moments). Collective; call it before saving a TrainState.
template <class Scalar>
void gather_sharded_moments(Collectives& c, Adam<Scalar>& adam) {
  for (Parameters<Scalar>* p : {&adam.first_moment(), &adam.second_moment()})
    for (Mat<Scalar>* t : {&p->W_enc, &p->W_dec})
      if (t->size() > 0)
        c.allgather_units(t->data(), static_cast<std::size_t>(t->cols()), static_cast<std::size_t>(t->rows()));
}

/// Rank r's share of a global batch of B tokens: the columns [begin, begin + count), with
/// begin = r B / N (uneven splits differ by at most one token).
struct BatchShare {
  Index begin = 0;
  Index count = 0;
};
inline BatchShare batch_share(Index B, int rank, int size) {
  const Index b0 = static_cast<Index>(rank) * B / size, b1 = static_cast<Index>(rank + 1) * B / size;
  return {b0, b1 - b0};
}

namespace detail {
/// Loss terms that are a sum over tokens divided by B (or see only the weights): exact when each
/// rank's value and gradient are weighted by B_r / B (AuxK, Orthogonality and TargetL0 are
/// handled apart, see DataParallel::forward_backward).
template <class T>
inline constexpr bool data_parallel_term =
    std::is_same_v<T, Reconstruction> || std::is_same_v<T, L1Sparsity> || std::is_same_v<T, L0Sparsity> ||
    std::is_same_v<T, AuxK> || std::is_same_v<T, MatryoshkaInner> || std::is_same_v<T, Orthogonality> ||
    std::is_same_v<T, TargetL0>;
template <class Loss>
inline constexpr bool data_parallel_loss = false;
template <class... Terms>
inline constexpr bool data_parallel_loss<CombinedLoss<Terms...>> = (data_parallel_term<Terms> && ...);
/// Activations that select per token, or (BatchTopK) over the whole batch through Collectives.
template <class A>
inline constexpr bool data_parallel_activation =
    std::is_same_v<A, ReLU> || std::is_same_v<A, TopK> || std::is_same_v<A, JumpReLU> || std::is_same_v<A, BatchTopK>;
}  // namespace detail

/// True when data-parallel training of Model gives the step of one process on the global batch.
template <class Model>
inline constexpr bool data_parallel_exact = detail::data_parallel_activation<typename Model::activation_type>&&
    detail::data_parallel_loss<typename Model::loss_type>;

/// Empty when Model can be trained data-parallel, else why not (one sentence naming the
/// architecture).
template <class Model>
std::string data_parallel_refusal(const Model& model) {
  if constexpr (data_parallel_exact<Model>) {
    (void)model;
    return {};
  } else {
    const std::string arch(model.architecture());
    std::string why;
    why = detail::data_parallel_activation<typename Model::activation_type>
              ? "a term of its loss is not combined across ranks"
              : "its activation is not combined across ranks";
    return "data-parallel training (MPI) does not support architecture '" + arch + "': " + why +
           "; train it in one process";
  }
}

/// The data-parallel hooks of the training loop (trainer.hpp). Built from a Collectives (or
/// nullptr: then `bool(*this)` is false and the trainer runs its single-process code; a group
/// of one rank also takes that path, so `mpirun -np 1` is bit for bit one process).
template <class Scalar>
class DataParallel {
 public:
  explicit DataParallel(Collectives* c = nullptr) : c_(c) {}

  explicit operator bool() const { return c_ != nullptr && c_->size() > 1; }
  Collectives* collectives() const { return c_; }

  /// Throws std::invalid_argument when the model cannot be trained data-parallel, or when the
  /// batch has fewer tokens than there are ranks.
  template <class Model>
  void check(const Model& model, Index batch) const {
    if (const std::string why = data_parallel_refusal(model); !why.empty()) throw std::invalid_argument(why);
    if (batch < c_->size())
      throw std::invalid_argument("data-parallel training: --batch " + std::to_string(batch) + " is smaller than the " +
                                  std::to_string(c_->size()) + " ranks");
  }

  /// Lets the policies that take part in the step (BatchTopK's batch-wide selection and
  /// threshold) see the ranks, until the returned guard is destroyed.
  template <class Model>
  auto attach(Model& model, bool on) const {
    struct Guard {
      Model* m = nullptr;
      ~Guard() {
        if constexpr (std::is_same_v<typename Model::activation_type, BatchTopK>)
          if (m) m->activation().collectives = nullptr;
      }
      Guard(Model* mm) : m(mm) {}
      Guard(const Guard&) = delete;
      Guard& operator=(const Guard&) = delete;
    };
    if (!on) return Guard(nullptr);
    if constexpr (std::is_same_v<typename Model::activation_type, BatchTopK>) model.activation().collectives = c_;
    return Guard(&model);
  }

  /// This rank's forward/backward on its share of the global batch: inputs @p X (d_in x B) and
  /// targets @p Y (d_out x B; X itself for an SAE), identical on every rank; then the
  /// combination: @p grads receives the gradient of the global batch and the report holds the
  /// global loss terms, on every rank.
  template <class Model>
  typename Model::Report forward_backward(Model& model, const Mat<Scalar>& X, const Mat<Scalar>& Y,
                                          Parameters<Scalar>& grads, typename Model::State& s, std::int64_t step) {
    using Report = typename Model::Report;
    constexpr bool has_aux = Model::loss_type::template has<AuxK>();
    constexpr bool has_ortho = Model::loss_type::template has<Orthogonality>();
    constexpr bool has_target = Model::loss_type::template has<TargetL0>();
    const int N = c_->size(), me = c_->rank();
    const Index B = X.cols(), m = model.d_sae();
    const Index d = Y.rows();  // the outputs' dimension (d_out; d_in for an SAE)
    const BatchShare share = batch_share(B, me, N);
    const Eigen::Map<const Mat<Scalar>> Xr(X.data() + share.begin * X.rows(), X.rows(), share.count);
    const Eigen::Map<const Mat<Scalar>> Yr(Y.data() + share.begin * d, d, share.count);

    // The local pass, with AuxK silenced (no dead latents): its normaliser is global, so it
    // runs below on its own; and so does the orthogonality penalty (it depends on W_dec only:
    // each rank computes its share of the chunks, the shares are added with weight 1).
    Report r;
    struct SilenceOrtho {
      Orthogonality* o = nullptr;
      ~SilenceOrtho() {
        if (o) o->part = 0, o->parts = 1;
      }
    } silence_ortho;
    if constexpr (has_ortho) {
      silence_ortho.o = &model.loss().template get<Orthogonality>();
      silence_ortho.o->part = -1;
    }
    // TargetL0's penalty lambda (L0/T - 1)^2 is a function of the whole batch's L0: silenced here
    // (coefficient 0), applied below once the global L0 is known.
    struct SilenceTarget {
      TargetL0* t = nullptr;
      double coefficient = 0;
      ~SilenceTarget() {
        if (t) t->coefficient = coefficient;
      }
    } silence_target;
    if constexpr (has_target) {
      silence_target.t = &model.loss().template get<TargetL0>();
      silence_target.coefficient = silence_target.t->coefficient;
      silence_target.t->coefficient = 0;
    }
    if constexpr (has_aux) {
      struct Silenced {  // AuxK's counters set aside for the pass, put back even on an exception
        std::vector<std::int64_t>& counts;
        std::vector<std::int64_t> kept;
        explicit Silenced(std::vector<std::int64_t>& c) : counts(c) { kept.swap(counts); }
        ~Silenced() { kept.swap(counts); }
        Silenced(const Silenced&) = delete;
        Silenced& operator=(const Silenced&) = delete;
      } silenced(model.loss().template get<AuxK>().since_fired);
      r = model.forward_backward(Xr, Yr, grads, s, step);
    } else {
      r = model.forward_backward(Xr, Yr, grads, s, step);
    }
    double aux_value = 0, aux_denom = 0;
    bool aux_on = false;
    if constexpr (has_aux) {
      const AuxK& aux = model.loss().template get<AuxK>();
      if (aux.dead_count() > 0) {  // the same on every rank: the counters are global
        aux_on = true;
        if (!aux_grads_.same_shape(grads))
          aux_grads_ = Parameters<Scalar>::zeros_like(grads);
        else
          aux_grads_.set_zero();
        s.input.emplace(Xr);  // AuxK reads the encoder inputs from the step state
        aux_value = aux.accumulate(Yr, model.params(), s, aux_grads_);
        s.input.reset();
        aux_denom = static_cast<double>((Yr - s.X_hat).squaredNorm());
      }
    }

    double ortho_value = 0;
    if constexpr (has_ortho) {
      Orthogonality& o = *silence_ortho.o;
      o.part = me;
      o.parts = N;
      ortho_grads_.W_dec.setZero(model.params().W_dec.rows(), m);  // the only tensor the penalty touches
      ortho_value = o.accumulate(Yr, model.params(), s, ortho_grads_);
      o.part = 0;
      o.parts = 1;
    }

    // Small sums, gathered once: terms, active codes, error, centred sum of squares, AuxK's
    // numerator and normaliser, this rank's share of the orthogonality penalty, column sums.
    const std::size_t nt = r.terms.size(), ns = nt + 7 + static_cast<std::size_t>(d);
    stats_.assign(ns, 0.0);
    for (std::size_t i = 0; i < nt; ++i) stats_[i] = r.terms[i];
    stats_[nt] = static_cast<double>(kernels::count_active(s.codes));
    stats_[nt + 1] = static_cast<double>((s.X_hat - Yr).squaredNorm());
    const Eigen::VectorXd colsum = Yr.template cast<double>().rowwise().sum();
    const Eigen::VectorXd mean_r = colsum / static_cast<double>(share.count);
    stats_[nt + 2] = (Yr.template cast<double>().colwise() - mean_r).squaredNorm();
    stats_[nt + 3] = aux_value * aux_denom;
    stats_[nt + 4] = aux_denom;
    stats_[nt + 5] = static_cast<double>(share.count);
    stats_[nt + 6] = ortho_value;
    for (Index i = 0; i < d; ++i) stats_[nt + 7 + static_cast<std::size_t>(i)] = colsum[i];
    all_.resize(ns * static_cast<std::size_t>(N));
    c_->allgather(stats_.data(), ns, all_.data());

    Report g;
    double active = 0, err = 0, m2 = 0, aux_num = 0, aux_den = 0, ortho = 0;
    Eigen::VectorXd mean = Eigen::VectorXd::Zero(d);
    for (int q = 0; q < N; ++q) {
      const double* a = all_.data() + static_cast<std::size_t>(q) * ns;
      const double w = a[nt + 5] / static_cast<double>(B);
      for (std::size_t i = 0; i < nt; ++i) g.terms[i] += w * a[i];
      active += a[nt];
      err += a[nt + 1];
      m2 += a[nt + 2];
      aux_num += a[nt + 3];
      aux_den += a[nt + 4];
      ortho += a[nt + 6];
      mean += Eigen::Map<const Eigen::VectorXd>(a + nt + 7, d);
    }
    mean /= static_cast<double>(B);
    for (int q = 0; q < N; ++q) {  // var = sum_q M2_q + sum_q B_q ||mean_q - mean||^2
      const double* a = all_.data() + static_cast<std::size_t>(q) * ns;
      m2 += a[nt + 5] * (Eigen::Map<const Eigen::VectorXd>(a + nt + 7, d) / a[nt + 5] - mean).squaredNorm();
    }
    double target_scale = 0, target_value = 0;  // TargetL0: dL/dL0 and L of the global batch
    if constexpr (has_target) {
      const TargetL0& t = *silence_target.t;
      const double lam = linear_warmup(silence_target.coefficient, step, t.warmup_steps);
      const double rr = active / static_cast<double>(B) / t.target - 1.0;
      target_scale = lam * 2.0 * rr / t.target;
      target_value = lam * rr * rr;
    }
    const auto names = Model::loss_type::names();
    for (std::size_t i = 0; i < nt; ++i) {
      if (has_aux && std::string_view(names[i]) == AuxK::name) g.terms[i] = aux_den > 0 ? aux_num / aux_den : 0.0;
      if (has_ortho && std::string_view(names[i]) == Orthogonality::name) g.terms[i] = ortho;
      if (has_target && std::string_view(names[i]) == TargetL0::name) g.terms[i] = target_value;
    }
    for (double v : g.terms) g.total += v;
    l0_ = active / static_cast<double>(B);
    err_ = err;
    var_ = m2;
    B_ = B;

    // The gradient: weighted by B_q / B (by the receiver, in the sum) and summed in rank order;
    // with AuxK active each rank first adds its AuxK gradient weighted by its share of the
    // global normaliser, divided by its own weight. W_enc and W_dec are only reduce-scattered:
    // step() updates this rank's columns and gathers them.
    weights_.resize(static_cast<std::size_t>(N));
    for (int q = 0; q < N; ++q) {
      const double* a = all_.data() + static_cast<std::size_t>(q) * ns;
      weights_[static_cast<std::size_t>(q)] = static_cast<Scalar>(a[nt + 5] / static_cast<double>(B));
    }
    const Scalar* wts = weights_.data();
    if constexpr (has_target) {  // this rank's dL0/dtheta (normalised by B_r: weighted like the rest)
      Vec<Scalar> dl0;
      detail::l0_and_threshold_gradient(s.codes, s.below, model.params().threshold, s.bandwidth, dl0);
      grads.threshold.noalias() += static_cast<Scalar>(target_scale) * dl0;
    }
    if (aux_on && aux_den > 0) {  // rare (only while latents are dead): weight locally, sum plainly
      const Scalar w = weights_[static_cast<std::size_t>(me)];
      const Scalar wa = static_cast<Scalar>(aux_denom / aux_den);
      zip_tensors([&](const char*, auto& t, auto& ta) { t = w * t + wa * ta; }, grads, aux_grads_);
      wts = nullptr;
    }
    if constexpr (has_ortho) {  // this rank's chunks of the penalty, weight 1
      if (wts) {
        zip_tensors([&](const char*, auto& t) { t *= weights_[static_cast<std::size_t>(me)]; }, grads);
        wts = nullptr;
      }
      grads.W_dec += ortho_grads_.W_dec;
    }
    zip_tensors(
        [&](const char* name, auto& t) {
          if (t.size() == 0) return;
          if (std::string_view(name) == "W_enc" || std::string_view(name) == "W_dec")
            c_->reduce_scatter(t.data(), static_cast<std::size_t>(t.cols()), static_cast<std::size_t>(t.rows()), wts);
          else
            c_->sum_in_rank_order(t.data(), static_cast<std::size_t>(t.size()), wts);
        },
        grads);

    // Which latents fired anywhere.
    fired_.assign(static_cast<std::size_t>(m), 0);
    mark_fired(s.codes);
    c_->any(fired_.data(), fired_.size());
    return g;
  }

  /// The optimizer step on the combined gradient (in place of the trainer's decoder projection
  /// and Adam::step): this rank's columns of W_enc and W_dec and all of the small tensors, then
  /// the updated columns are gathered from every rank.
  template <class Model>
  void step(Model& model, Parameters<Scalar>& grads, Adam<Scalar>& adam, double lr) {
    Parameters<Scalar>& p = model.params();
    const auto [j0, j1] = rank_range(static_cast<std::size_t>(p.d_sae()), c_->rank(), c_->size());
    if constexpr (Model::activation_type::unit_norm_decoder) {  // as project_decoder_gradient
      const Index n = static_cast<Index>(j1 - j0) * p.W_dec.rows();
      SAE_OMP(parallel for schedule(static) if (detail::parallel_worth(detail::streamed(n))))
      for (Index j = static_cast<Index>(j0); j < static_cast<Index>(j1); ++j) {
        const auto w = p.W_dec.col(j);
        const Scalar nn = w.squaredNorm();
        if (nn > Scalar(0)) grads.W_dec.col(j) -= (grads.W_dec.col(j).dot(w) / nn) * w;
      }
    }
    // Adam::step's arithmetic (Adam::update_range), on the owned ranges.
    const typename Adam<Scalar>::StepConstants k = adam.begin_step(lr);
    zip_tensors(
        [&](const char* name, auto& pt, const auto& g, auto& m, auto& v) {
          if (pt.size() == 0) return;
          const bool bulk = std::string_view(name) == "W_enc" || std::string_view(name) == "W_dec";
          const Index rows = pt.rows();
          const Index i0 = bulk ? static_cast<Index>(j0) * rows : 0;
          const Index i1 = bulk ? static_cast<Index>(j1) * rows : pt.size();
          Adam<Scalar>::update_range(k, pt.data(), g.data(), m.data(), v.data(), i0, i1);
          if (bulk) c_->allgather_units(pt.data(), static_cast<std::size_t>(pt.cols()), static_cast<std::size_t>(rows));
        },
        p, grads, adam.first_moment(), adam.second_moment());
  }

  /// model.after_update(s), with AuxK's dead-latent counters advanced from the global batch.
  template <class Model>
  void after_update(Model& model, const typename Model::State& s) {
    if constexpr (Model::loss_type::template has<AuxK>()) {
      std::vector<std::int64_t> counts = model.loss().template get<AuxK>().since_fired;
      model.after_update(s);
      update_since_fired(counts);
      model.loss().template get<AuxK>().since_fired = std::move(counts);
    } else {
      model.after_update(s);
    }
  }

  /// Tokens since each latent fired, advanced by the global batch (as kernels::update_since_fired).
  void update_since_fired(std::vector<std::int64_t>& since_fired) const {
    since_fired.resize(fired_.size(), 0);
    for (std::size_t j = 0; j < fired_.size(); ++j) since_fired[j] = fired_[j] ? 0 : since_fired[j] + B_;
  }

  /// The last step's global L0 (active codes per token), sum ||x - x_hat||^2 and sum ||x - mean||^2.
  double l0() const { return l0_; }
  double err() const { return err_; }
  double var() const { return var_; }

 private:
  template <class S>
  void mark_fired(const SparseCodes<S>& codes) {
    for (Index i = 0; i < codes.nnz(); ++i)
      if (codes.values[i] != S(0)) fired_[static_cast<std::size_t>(codes.indices[i])] = 1;
  }
  template <class S>
  void mark_fired(const Mat<S>& F) {
    const Index m = F.rows();
    for (Index t = 0; t < F.cols(); ++t) {
      const S* f = F.data() + t * m;
      for (Index j = 0; j < m; ++j)
        if (f[j] != S(0)) fired_[static_cast<std::size_t>(j)] = 1;
    }
  }

  Collectives* c_ = nullptr;
  Parameters<Scalar> aux_grads_;
  Parameters<Scalar> ortho_grads_;  // W_dec only
  std::vector<double> stats_, all_;
  std::vector<Scalar> weights_;
  std::vector<std::uint8_t> fired_;
  double l0_ = 0, err_ = 0, var_ = 0;
  Index B_ = 0;
};

}  // namespace sae
