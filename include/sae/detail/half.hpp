/// @file sae/detail/half.hpp
/// IEEE 754 binary16 (float16) and bfloat16 <-> float conversions on raw 16-bit patterns.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>

namespace sae::detail {

/// float16 bit pattern -> float. Exact for every input (float16 is a subset of float):
/// subnormals are normalised, +-inf maps to +-inf, NaN maps to a NaN with the same sign and
/// the payload shifted into the top mantissa bits.
constexpr float half_bits_to_float(std::uint16_t h) noexcept {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exp = (h >> 10) & 0x1Fu;
  std::uint32_t man = h & 0x3FFu;
  std::uint32_t bits = 0;
  if (exp == 0x1Fu) {
    bits = sign | 0x7F800000u | (man << 13);  // inf or NaN (payload kept, stays NaN)
  } else if (exp == 0) {
    if (man == 0) {
      bits = sign;  // +-0
    } else {
      // Subnormal: value = man * 2^-24. Normalise so that bit 10 is the implicit one.
      std::uint32_t e = 127 - 15 + 1;
      while ((man & 0x400u) == 0) {
        man <<= 1;
        --e;
      }
      bits = sign | (e << 23) | ((man & 0x3FFu) << 13);
    }
  } else {
    bits = sign | ((exp + (127 - 15)) << 23) | (man << 13);
  }
  return std::bit_cast<float>(bits);
}

/// float -> float16 bit pattern, rounding to nearest with ties to even.
/// Values whose magnitude rounds beyond 65504 become +-inf, tiny values become float16
/// subnormals or +-0, and NaN stays NaN (quiet; sign and the top payload bits are kept).
constexpr std::uint16_t float_to_half_bits(float f) noexcept {
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(f);
  const std::uint16_t sign = static_cast<std::uint16_t>((bits >> 16) & 0x8000u);
  const std::uint32_t abs = bits & 0x7FFFFFFFu;
  if (abs >= 0x7F800000u) {  // inf or NaN
    if (abs == 0x7F800000u) return static_cast<std::uint16_t>(sign | 0x7C00u);
    return static_cast<std::uint16_t>(sign | 0x7E00u | ((abs >> 13) & 0x3FFu));
  }
  // 65520 = 0x477FF000 is halfway between 65504 (max finite half, odd mantissa) and 65536:
  // ties-to-even rounds it (and anything larger) up to infinity.
  if (abs >= 0x477FF000u) return static_cast<std::uint16_t>(sign | 0x7C00u);
  if (abs >= 0x38800000u) {  // >= 2^-14: normal half
    std::uint32_t h = (abs >> 13) - ((127u - 15u) << 23 >> 13);
    const std::uint32_t rest = abs & 0x1FFFu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // may carry into exponent
    return static_cast<std::uint16_t>(sign | h);
  }
  const std::uint32_t e = abs >> 23;  // biased float exponent
  if (e < 102) return sign;           // < 2^-25: rounds to zero (2^-25 itself ties to 0)
  // Subnormal half: h = round(value / 2^-24) = round(m * 2^(e - 150 + 24)) = m >> (126 - e).
  const std::uint32_t m = (abs & 0x7FFFFFu) | 0x800000u;
  const std::uint32_t shift = 126 - e;  // 14..24
  std::uint32_t h = m >> shift;
  const std::uint32_t rest = m & ((1u << shift) - 1u);
  const std::uint32_t half_way = 1u << (shift - 1);
  if (rest > half_way || (rest == half_way && (h & 1u))) ++h;  // may carry to min normal
  return static_cast<std::uint16_t>(sign | h);
}

/// bfloat16 bit pattern -> float (exact: bfloat16 is the top half of a float).
constexpr float bf16_bits_to_float(std::uint16_t b) noexcept {
  return std::bit_cast<float>(static_cast<std::uint32_t>(b) << 16);
}

/// float -> bfloat16 bit pattern, rounding to nearest with ties to even; overflow becomes
/// +-inf, NaN stays a quiet NaN with its sign.
constexpr std::uint16_t float_to_bf16_bits(float f) noexcept {
  std::uint32_t bits = std::bit_cast<std::uint32_t>(f);
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<std::uint16_t>((bits >> 16) | 0x0040u);
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  return static_cast<std::uint16_t>(bits >> 16);
}

/// Converts n float16 values to float.
inline void half_to_float(const std::uint16_t* in, float* out, std::size_t n) noexcept {
  for (std::size_t i = 0; i < n; ++i) out[i] = half_bits_to_float(in[i]);
}
/// Converts n floats to float16 (round to nearest even).
inline void float_to_half(const float* in, std::uint16_t* out, std::size_t n) noexcept {
  for (std::size_t i = 0; i < n; ++i) out[i] = float_to_half_bits(in[i]);
}
/// Converts n bfloat16 values to float.
inline void bf16_to_float(const std::uint16_t* in, float* out, std::size_t n) noexcept {
  for (std::size_t i = 0; i < n; ++i) out[i] = bf16_bits_to_float(in[i]);
}
/// Converts n floats to bfloat16 (round to nearest even).
inline void float_to_bf16(const float* in, std::uint16_t* out, std::size_t n) noexcept {
  for (std::size_t i = 0; i < n; ++i) out[i] = float_to_bf16_bits(in[i]);
}

static_assert(float_to_half_bits(1.0f) == 0x3C00);
static_assert(half_bits_to_float(0x3C00) == 1.0f);
static_assert(float_to_bf16_bits(1.0f) == 0x3F80);

}  // namespace sae::detail
