/// @file sae/optim/schedule.hpp
/// Learning-rate schedule: linear warm-up, constant, then a final linear decay.
#pragma once

#include <algorithm>
#include <cstdint>

namespace sae {

/// value * min(1, (s + 1) / W) at 0-based step s: a linear ramp from value/W to value over the
/// first W steps (W <= 0: no ramp). The warm-up of the lr and of penalty coefficients.
inline double linear_warmup(double value, std::int64_t step, std::int64_t warmup_steps) {
  if (warmup_steps <= 0) return value;
  return value * std::min(1.0, static_cast<double>(step + 1) / static_cast<double>(warmup_steps));
}

/// lr(s) for 0-based step s of S = total_steps:
///
///     lr * (s + 1) / W                 for s < W                       (warm-up)
///     lr * (S - s) / D                 for s >= S - D                  (final linear decay)
///     lr                               otherwise
///
/// (the smaller of the two factors where warm-up and decay overlap). The decay ends at lr / D
/// on the last step rather than 0, so every step still moves the weights.
struct LrSchedule {
  double lr = 1e-3;
  std::int64_t warmup_steps = 0;  ///< W
  std::int64_t decay_steps = 0;   ///< D
  std::int64_t total_steps = 0;   ///< S

  double operator()(std::int64_t step) const {
    double f = linear_warmup(1.0, step, warmup_steps);
    if (decay_steps > 0 && step >= total_steps - decay_steps)
      f = std::min(
          f, static_cast<double>(std::max<std::int64_t>(total_steps - step, 1)) / static_cast<double>(decay_steps));
    return lr * f;
  }
};

}  // namespace sae
