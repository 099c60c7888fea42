// Data shared by the benchmark programs.
#pragma once

#include <sae/sae.hpp>

#include <cstdint>

namespace bench {

/// A rows x cols matrix of standard-normal floats from sae's own generator (seeded).
inline sae::Mat<float> gaussian(sae::Index rows, sae::Index cols, std::uint64_t seed) {
  sae::detail::Rng rng(seed);
  sae::Mat<float> X(rows, cols);
  for (sae::Index i = 0; i < X.size(); ++i) X.data()[i] = static_cast<float>(rng.normal());
  return X;
}

}  // namespace bench
