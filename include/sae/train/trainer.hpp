/// @file sae/train/trainer.hpp
/// train(): the training loop (forward/backward, decoder constraint, Adam, schedule, progress).
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "../core/finite.hpp"
#include "../core/kernels.hpp"
#include "../core/parameters.hpp"
#include "../optim/adam.hpp"
#include "../optim/schedule.hpp"
#include "distributed.hpp"

namespace sae {

/// Settings of one training run.
struct TrainOptions {
  std::int64_t steps = 2000;       ///< S, optimizer steps
  Index batch = 1024;              ///< B, tokens per step
  double lr = 1e-3;                ///< peak learning rate
  std::int64_t warmup_steps = -1;  ///< linear lr warm-up; -1: min(100, S/10)
  std::int64_t decay_steps = -1;   ///< final linear lr decay; -1: S/5
  AdamOptions adam;
  std::uint64_t seed = 0;                 ///< initialisation seed
  bool initialize = true;                 ///< initialise from the first batch (false: keep the weights)
  std::int64_t log_every = 100;           ///< progress callback period, in steps (and the last step)
  std::int64_t dead_tokens = 10'000'000;  ///< a latent silent for this many tokens counts as dead

  LrSchedule schedule() const {
    LrSchedule s;
    s.lr = lr;
    s.total_steps = steps;
    s.warmup_steps = warmup_steps >= 0 ? warmup_steps : std::min<std::int64_t>(100, steps / 10);
    s.decay_steps = decay_steps >= 0 ? decay_steps : steps / 5;
    return s;
  }
};

/// What the progress callback sees: averages over the steps since the previous report.
struct TrainProgress {
  std::int64_t step = 0;                              ///< steps done so far (1-based count)
  std::int64_t steps = 0;                             ///< total steps of the run
  std::int64_t tokens = 0;                            ///< tokens seen so far
  double loss = 0;                                    ///< mean total loss
  std::vector<std::pair<const char*, double>> terms;  ///< mean of each loss term
  double l0 = 0;                                      ///< mean active latents per token
  double fvu = 0;            ///< sum ||x - x_hat||^2 / sum ||x - batch mean||^2 over the window
  double dead_fraction = 0;  ///< latents silent for min(dead_tokens, tokens seen) tokens
  double lr = 0;             ///< learning rate of the last step
  double seconds = 0;        ///< wall time since training started
  double tokens_per_s = 0;   ///< throughput over the window
  double eta_seconds = 0;    ///< remaining time at the window's throughput
};

/// Summary of a finished run.
struct TrainResult {
  std::int64_t steps = 0;
  std::int64_t tokens = 0;
  double seconds = 0;
  double final_loss = 0;  ///< mean loss over the last report window
  double final_l0 = 0;
  double final_fvu = 0;
  double final_dead_fraction = 0;
};

/// Sums over the steps since the last progress report.
struct ProgressWindow {
  double loss = 0, l0 = 0, err = 0, var = 0;
  std::vector<double> terms;
  std::int64_t steps = 0, tokens = 0;
};

/// Everything the training loop carries from one step to the next, apart from the model
/// (its parameters and the state of its activation and loss terms) and the data source
/// (its position). A run interrupted after step s and restarted from the TrainState, model and
/// source position of step s continues bit for bit as the uninterrupted run (checkpoint.hpp
/// saves and restores all three).
template <class Scalar>
struct TrainState {
  std::int64_t step = 0;                  ///< optimizer steps done
  std::int64_t tokens = 0;                ///< tokens trained on
  Adam<Scalar> adam;                      ///< moments and step count (shaped at the first step)
  std::vector<std::int64_t> since_fired;  ///< tokens since each latent fired (for dead_fraction reports)
  ProgressWindow window;                  ///< report sums since the last report
};

namespace detail {
/// Throws NumericalError naming the step, the first non-finite entry of X (a batch of inputs,
/// or with @p targets of a transcoder's targets) and, when the source can tell
/// (`origin(column)`, `target_origin(column)`), the file and row it came from.
template <class Source, class Derived>
void check_finite_input(const Source& source, const Eigen::MatrixBase<Derived>& X, std::int64_t step,
                        bool targets = false) {
  if (X.allFinite()) return;
  for (Index t = 0; t < X.cols(); ++t)
    for (Index i = 0; i < X.rows(); ++i) {
      const double v = static_cast<double>(X(i, t));
      if (std::isfinite(v)) continue;
      std::string where = "batch column " + std::to_string(t);
      if constexpr (requires {
                      source.origin(t);
                      source.target_origin(t);
                    })
        where = targets ? source.target_origin(t) : source.origin(t);
      else if constexpr (requires { source.origin(t); })
        if (!targets) where = source.origin(t);
      throw NumericalError("step " + std::to_string(step + 1) + ": " + (targets ? "target" : "input") +
                           " activation is " +
                           (std::isnan(v) ? std::string("nan") : std::string(v > 0 ? "inf" : "-inf")) + " at " + where +
                           ", dimension " + std::to_string(i));
    }
}
}  // namespace detail

/// train() starting from @p st (step st.step of opts.steps; a fresh TrainState starts at step
/// 0 and initialises the model from the first batch when opts.initialize). The source must be
/// positioned at the matching token (st.tokens). After every step, when @p st has been
/// updated, calls @p on_step(const TrainState&) — the place to write checkpoints (an
/// exception from it stops training).
///
/// Checks every batch for NaN/Inf before using it and the loss after the forward pass: either
/// throws NumericalError naming the 1-based step (and the file and row of a bad token, see
/// detail::check_finite_input) before that step changes any state, so on_step never sees it.
///
/// With @p collectives of N > 1 ranks (distributed.hpp), trains data-parallel: every rank runs
/// this with the same source, options and state; each computes its share of every batch and
/// all end each step with the same weights, state and (global) progress numbers.
template <class Model, class Source, class OnProgress, class OnStep>
TrainResult train_from(Model& model, Source& source, const TrainOptions& opts,
                       TrainState<typename Model::scalar_type>& st, OnProgress&& on_progress, OnStep&& on_step,
                       Collectives* collectives = nullptr) {
  using Scalar = typename Model::scalar_type;
  using Act = typename Model::activation_type;
  if (source.d_in() != model.d_in())
    throw std::invalid_argument("training data has d_in=" + std::to_string(source.d_in()) +
                                ", the SAE has d_in=" + std::to_string(model.d_in()));
  // A transcoder trains against targets: the source's target() after each next() (d_out x B).
  constexpr bool source_has_targets = requires { source.target(); };
  bool paired = false;
  if constexpr (source_has_targets) paired = source.has_target();
  if (paired != model.config().is_transcoder())
    throw std::invalid_argument(paired ? "the training data has targets, but the model is an SAE (not a transcoder)"
                                       : "a transcoder needs target data beside its inputs (--target)");
  if constexpr (source_has_targets)
    if (paired && source.d_out() != model.d_out())
      throw std::invalid_argument("target data has d_out=" + std::to_string(source.d_out()) +
                                  ", the transcoder has d_out=" + std::to_string(model.d_out()));
  if (opts.steps < 0) throw std::invalid_argument("steps must be >= 0");
  if (st.step < 0 || st.step > opts.steps)
    throw std::invalid_argument("cannot start at step " + std::to_string(st.step) + " of " +
                                std::to_string(opts.steps));
  const LrSchedule schedule = opts.schedule();
  const auto names = Model::loss_type::names();

  DataParallel<Scalar> dp(collectives);  // data-parallel hooks (distributed.hpp); off without collectives
  if (dp) dp.check(model, opts.batch);
  const auto attached = dp.attach(model, bool(dp));  // data-parallel hook: the policies see the ranks
  typename Model::State state;
  Parameters<Scalar> grads;
  Vec<Scalar> batch_mean;
  if (st.step == 0 && !st.adam.first_moment().same_shape(model.params()))
    st.adam = Adam<Scalar>(opts.adam, model.params());
  if (!st.adam.first_moment().same_shape(model.params()) || !st.adam.second_moment().same_shape(model.params()))
    throw std::invalid_argument("optimizer state does not match the model's parameters");
  ProgressWindow& w = st.window;
  w.terms.resize(names.size(), 0.0);

  using clock = std::chrono::steady_clock;
  const auto t_start = clock::now();
  auto t_window = t_start;

  TrainResult result;
  for (std::int64_t step = st.step; step < opts.steps; ++step) {
    const Mat<Scalar>& X = source.next();
    detail::check_finite_input(source, X, step);
    const Mat<Scalar>* target = &X;  // what the output is compared with: X itself, or the targets
    if constexpr (source_has_targets) {
      if (paired) {
        target = &source.target();
        detail::check_finite_input(source, *target, step, /*targets=*/true);
      }
    }
    const Mat<Scalar>& Y = *target;
    if (step == 0 && opts.initialize) {
      model.initialize(X, Y, opts.seed);
      if constexpr (Act::unit_norm_decoder) model.normalize_decoder();
    }
    const auto report = dp ? dp.forward_backward(model, X, Y, grads, state, step)  // data-parallel hook
                           : model.forward_backward(X, Y, grads, state, step);
    if (!std::isfinite(report.total))
      throw NumericalError("training diverged at step " + std::to_string(step + 1) + ": loss is " +
                           std::to_string(report.total));
    const double lr = schedule(step);
    if (dp) {  // data-parallel hook: each rank updates its own columns, then they are gathered
      dp.step(model, grads, st.adam, lr);
    } else {
      if constexpr (Act::unit_norm_decoder) model.project_decoder_gradient(grads);
      st.adam.step(model.params(), grads, lr);
    }
    if (dp)  // data-parallel hook
      dp.after_update(model, state);
    else
      model.after_update(state);

    const Index B = X.cols();
    st.tokens += B;
    st.step = step + 1;
    w.tokens += B;
    ++w.steps;
    w.loss += report.total;
    for (std::size_t i = 0; i < names.size(); ++i) w.terms[i] += report.terms[i];
    if (dp) {  // data-parallel hook: the global batch's numbers
      w.l0 += dp.l0();
      dp.update_since_fired(st.since_fired);
      w.err += dp.err();
      w.var += dp.var();
    } else {
      w.l0 += static_cast<double>(kernels::count_active(state.codes)) / static_cast<double>(B);
      kernels::update_since_fired(state.codes, st.since_fired);
      w.err += static_cast<double>((state.X_hat - Y).squaredNorm());
      batch_mean.noalias() = Y.rowwise().mean();
      w.var += static_cast<double>((Y.colwise() - batch_mean).squaredNorm());
    }

    const bool last = step + 1 == opts.steps;
    if (last || (opts.log_every > 0 && (step + 1) % opts.log_every == 0)) {
      const auto now = clock::now();
      const double ws = static_cast<double>(w.steps);
      TrainProgress p;
      p.step = step + 1;
      p.steps = opts.steps;
      p.tokens = st.tokens;
      p.loss = w.loss / ws;
      for (std::size_t i = 0; i < names.size(); ++i) p.terms.emplace_back(names[i], w.terms[i] / ws);
      p.l0 = w.l0 / ws;
      p.fvu = w.var > 0 ? w.err / w.var : 0.0;
      const std::int64_t window = std::min(opts.dead_tokens, st.tokens);
      p.dead_fraction = static_cast<double>(std::count_if(st.since_fired.begin(), st.since_fired.end(),
                                                          [&](std::int64_t v) { return v >= window; })) /
                        static_cast<double>(st.since_fired.size());
      p.lr = lr;
      p.seconds = std::chrono::duration<double>(now - t_start).count();
      const double dt = std::chrono::duration<double>(now - t_window).count();
      p.tokens_per_s = dt > 0 ? static_cast<double>(w.tokens) / dt : 0.0;
      p.eta_seconds = p.tokens_per_s > 0 ? static_cast<double>((opts.steps - p.step) * B) / p.tokens_per_s : 0.0;
      on_progress(static_cast<const TrainProgress&>(p));
      result.final_loss = p.loss;
      result.final_l0 = p.l0;
      result.final_fvu = p.fvu;
      result.final_dead_fraction = p.dead_fraction;
      w.loss = w.l0 = w.err = w.var = 0;
      std::fill(w.terms.begin(), w.terms.end(), 0.0);
      w.steps = w.tokens = 0;
      t_window = clock::now();
    }
    on_step(static_cast<const TrainState<Scalar>&>(st));
  }
  if (dp) gather_sharded_moments(*collectives, st.adam);  // data-parallel hook: complete Adam's moments
  if (!model.params().all_finite())
    throw NumericalError("training produced non-finite weights after step " + std::to_string(opts.steps));
  result.steps = opts.steps;
  result.tokens = st.tokens;
  result.seconds = std::chrono::duration<double>(clock::now() - t_start).count();
  return result;
}

/// Trains @p model on batches from @p source (DataSource: `d_in()`, `next()` returning a
/// d x B matrix of the model's Scalar; see ShuffledBatches) for opts.steps Adam steps. A
/// transcoder's source also has `has_target()` (true), `d_out()` and `target()`, the d_out x B
/// targets of the last next() (TrainSource with target data).
///
/// Each step: forward/backward on one batch; for unit-norm decoders (TopK family) project
/// the decoder gradient onto the sphere's tangent; Adam with the scheduled lr; then
/// model.after_update (renormalise the decoder, update activation state such as thresholds). @p on_progress(const TrainProgress&) is called every opts.log_every steps and
/// after the last step. Throws NumericalError if the loss becomes NaN or infinite.
template <class Model, class Source, class Callback>
TrainResult train(Model& model, Source& source, const TrainOptions& opts, Callback&& on_progress) {
  TrainState<typename Model::scalar_type> state;
  return train_from(model, source, opts, state, std::forward<Callback>(on_progress),
                    [](const TrainState<typename Model::scalar_type>&) {});
}

/// train() without a progress callback.
template <class Model, class Source>
TrainResult train(Model& model, Source& source, const TrainOptions& opts) {
  return train(model, source, opts, [](const TrainProgress&) {});
}

}  // namespace sae
