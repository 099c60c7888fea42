/// @file sae/detail/checked.hpp
/// Overflow-checked size arithmetic for file readers (sizes come from untrusted headers).
#pragma once

#include <cstddef>
#include <limits>

namespace sae::detail {

/// out = a * b, or false (out untouched) when the product overflows std::size_t.
inline bool checked_mul(std::size_t a, std::size_t b, std::size_t& out) noexcept {
  if (a != 0 && b > std::numeric_limits<std::size_t>::max() / a) return false;
  out = a * b;
  return true;
}

}  // namespace sae::detail
