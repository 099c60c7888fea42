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

#include "../core/kernels.hpp"
#include "../core/parameters.hpp"
#include "../optim/adam.hpp"
#include "../optim/schedule.hpp"

namespace sae {

/// Settings of one training run.
struct TrainOptions {
  std::int64_t steps = 2000;       ///< S, optimizer steps
  Index batch = 1024;              ///< B, tokens per step
  double lr = 1e-3;                ///< peak learning rate
  std::int64_t warmup_steps = -1;  ///< linear lr warm-up; -1: min(100, S/10)
  std::int64_t decay_steps = -1;   ///< final linear lr decay; -1: S/5
  AdamOptions adam;
  std::uint64_t seed = 0;          ///< initialisation seed
  bool initialize = true;          ///< initialise from the first batch (false: keep the weights)
  std::int64_t log_every = 100;    ///< progress callback period, in steps (and the last step)
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
  std::int64_t step = 0;       ///< steps done so far (1-based count)
  std::int64_t steps = 0;      ///< total steps of the run
  std::int64_t tokens = 0;     ///< tokens seen so far
  double loss = 0;             ///< mean total loss
  std::vector<std::pair<const char*, double>> terms;  ///< mean of each loss term
  double l0 = 0;               ///< mean active latents per token
  double fvu = 0;              ///< sum ||x - x_hat||^2 / sum ||x - batch mean||^2 over the window
  double dead_fraction = 0;    ///< latents silent for min(dead_tokens, tokens seen) tokens
  double lr = 0;               ///< learning rate of the last step
  double seconds = 0;          ///< wall time since training started
  double tokens_per_s = 0;     ///< throughput over the window
  double eta_seconds = 0;      ///< remaining time at the window's throughput
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

/// Raised when the loss or the weights stop being finite; names the step.
struct NumericalError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// Trains @p model on batches from @p source (DataSource: `d_in()`, `next()` returning a
/// d x B matrix of the model's Scalar; see ShuffledBatches) for opts.steps Adam steps.
///
/// Each step: forward/backward on one batch; for unit-norm decoders (TopK family) project
/// the decoder gradient onto the sphere's tangent; Adam with the scheduled lr; then
/// model.after_update (renormalise the decoder, update activation state such as thresholds). @p on_progress(const TrainProgress&) is called every opts.log_every steps and
/// after the last step. Throws NumericalError if the loss becomes NaN or infinite.
template <class Model, class Source, class Callback>
TrainResult train(Model& model, Source& source, const TrainOptions& opts, Callback&& on_progress) {
  using Scalar = typename Model::scalar_type;
  using Act = typename Model::activation_type;
  if (source.d_in() != model.d_in())
    throw std::invalid_argument("training data has d_in=" + std::to_string(source.d_in()) +
                                ", the SAE has d_in=" + std::to_string(model.d_in()));
  if (opts.steps < 0) throw std::invalid_argument("steps must be >= 0");
  const LrSchedule schedule = opts.schedule();
  const auto names = Model::loss_type::names();

  typename Model::State state;
  Parameters<Scalar> grads;
  Adam<Scalar> adam(opts.adam, model.params());

  using clock = std::chrono::steady_clock;
  const auto t_start = clock::now();
  auto t_window = t_start;

  TrainResult result;
  double w_loss = 0, w_l0 = 0, w_err = 0, w_var = 0;
  std::vector<double> w_terms(names.size(), 0.0);
  std::int64_t w_steps = 0, w_tokens = 0, tokens = 0;
  std::vector<std::int64_t> since_fired;

  for (std::int64_t step = 0; step < opts.steps; ++step) {
    const Mat<Scalar>& X = source.next();
    if (step == 0 && opts.initialize) {
      model.initialize(X, opts.seed);
      if constexpr (Act::unit_norm_decoder) model.normalize_decoder();
    }
    const auto report = model.forward_backward(X, grads, state, step);
    if (!std::isfinite(report.total))
      throw NumericalError("training diverged at step " + std::to_string(step + 1) +
                           ": loss is " + std::to_string(report.total));
    if constexpr (Act::unit_norm_decoder) model.project_decoder_gradient(grads);
    const double lr = schedule(step);
    adam.step(model.params(), grads, lr);
    model.after_update(state);

    const Index B = X.cols();
    tokens += B;
    w_tokens += B;
    ++w_steps;
    w_loss += report.total;
    for (std::size_t i = 0; i < names.size(); ++i) w_terms[i] += report.terms[i];
    w_l0 += static_cast<double>(kernels::count_active(state.codes)) / static_cast<double>(B);
    kernels::update_since_fired(state.codes, since_fired);
    w_err += static_cast<double>((state.X_hat - X).squaredNorm());
    w_var += static_cast<double>((X.colwise() - X.rowwise().mean()).squaredNorm());

    const bool last = step + 1 == opts.steps;
    if (last || (opts.log_every > 0 && (step + 1) % opts.log_every == 0)) {
      const auto now = clock::now();
      TrainProgress p;
      p.step = step + 1;
      p.steps = opts.steps;
      p.tokens = tokens;
      p.loss = w_loss / static_cast<double>(w_steps);
      for (std::size_t i = 0; i < names.size(); ++i)
        p.terms.emplace_back(names[i], w_terms[i] / static_cast<double>(w_steps));
      p.l0 = w_l0 / static_cast<double>(w_steps);
      p.fvu = w_var > 0 ? w_err / w_var : 0.0;
      const std::int64_t window = std::min(opts.dead_tokens, tokens);
      p.dead_fraction = static_cast<double>(std::count_if(since_fired.begin(), since_fired.end(),
                                                          [&](std::int64_t v) { return v >= window; })) /
                        static_cast<double>(since_fired.size());
      p.lr = lr;
      p.seconds = std::chrono::duration<double>(now - t_start).count();
      const double dt = std::chrono::duration<double>(now - t_window).count();
      p.tokens_per_s = dt > 0 ? static_cast<double>(w_tokens) / dt : 0.0;
      p.eta_seconds = p.tokens_per_s > 0 ? static_cast<double>((opts.steps - p.step) * B) / p.tokens_per_s : 0.0;
      on_progress(static_cast<const TrainProgress&>(p));
      result.final_loss = p.loss;
      result.final_l0 = p.l0;
      result.final_fvu = p.fvu;
      result.final_dead_fraction = p.dead_fraction;
      w_loss = w_l0 = w_err = w_var = 0;
      std::fill(w_terms.begin(), w_terms.end(), 0.0);
      w_steps = w_tokens = 0;
      t_window = clock::now();
    }
  }
  if (!model.params().all_finite())
    throw NumericalError("training produced non-finite weights after step " + std::to_string(opts.steps));
  result.steps = opts.steps;
  result.tokens = tokens;
  result.seconds = std::chrono::duration<double>(clock::now() - t_start).count();
  return result;
}

/// train() without a progress callback.
template <class Model, class Source>
TrainResult train(Model& model, Source& source, const TrainOptions& opts) {
  return train(model, source, opts, [](const TrainProgress&) {});
}

}  // namespace sae
