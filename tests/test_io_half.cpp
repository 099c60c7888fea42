// Tests for sae/detail/half.hpp: float16 / bfloat16 conversions.
#include <catch2/catch.hpp>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>

#include "sae/detail/half.hpp"

using sae::detail::bf16_bits_to_float;
using sae::detail::float_to_bf16_bits;
using sae::detail::float_to_half_bits;
using sae::detail::half_bits_to_float;

namespace {

float from_bits(std::uint32_t b) { return std::bit_cast<float>(b); }

bool half_is_nan(std::uint16_t h) { return (h & 0x7C00u) == 0x7C00u && (h & 0x3FFu) != 0; }
bool bf16_is_nan(std::uint16_t b) { return (b & 0x7F80u) == 0x7F80u && (b & 0x7Fu) != 0; }

}  // namespace

// The conversions are usable in constant expressions.
static_assert(float_to_half_bits(-2.0f) == 0xC000);
static_assert(half_bits_to_float(0x7BFF) == 65504.0f);
static_assert(bf16_bits_to_float(0x3F80) == 1.0f);

TEST_CASE("half: known float16 bit patterns", "[io][half]") {
  CHECK(float_to_half_bits(1.0f) == 0x3C00);
  CHECK(half_bits_to_float(0x3C00) == 1.0f);
  CHECK(float_to_half_bits(65504.0f) == 0x7BFF);
  CHECK(half_bits_to_float(0x7BFF) == 65504.0f);
  CHECK(float_to_half_bits(0.5f) == 0x3800);
  CHECK(float_to_half_bits(-1.5f) == 0xBE00);
  // Smallest subnormal 2^-24 and largest subnormal, smallest normal 2^-14.
  CHECK(float_to_half_bits(std::ldexp(1.0f, -24)) == 0x0001);
  CHECK(half_bits_to_float(0x0001) == std::ldexp(1.0f, -24));
  CHECK(half_bits_to_float(0x03FF) == std::ldexp(1023.0f, -24));
  CHECK(float_to_half_bits(std::ldexp(1023.0f, -24)) == 0x03FF);
  CHECK(float_to_half_bits(std::ldexp(1.0f, -14)) == 0x0400);
  // Signed zero.
  CHECK(float_to_half_bits(0.0f) == 0x0000);
  CHECK(float_to_half_bits(-0.0f) == 0x8000);
  CHECK(std::signbit(half_bits_to_float(0x8000)));
  CHECK(half_bits_to_float(0x8000) == 0.0f);
  // Infinities.
  const float inf = std::numeric_limits<float>::infinity();
  CHECK(float_to_half_bits(inf) == 0x7C00);
  CHECK(float_to_half_bits(-inf) == 0xFC00);
  CHECK(half_bits_to_float(0x7C00) == inf);
  CHECK(half_bits_to_float(0xFC00) == -inf);
  CHECK(float_to_half_bits(1e6f) == 0x7C00);
  CHECK(float_to_half_bits(-1e6f) == 0xFC00);
  CHECK(float_to_half_bits(std::numeric_limits<float>::max()) == 0x7C00);
  // NaN stays NaN, including a float NaN whose payload is only in the low bits.
  CHECK(half_is_nan(float_to_half_bits(std::numeric_limits<float>::quiet_NaN())));
  CHECK(half_is_nan(float_to_half_bits(from_bits(0x7F800001u))));
  CHECK(half_is_nan(float_to_half_bits(from_bits(0xFF800001u))));
  CHECK((float_to_half_bits(from_bits(0xFFC00000u)) & 0x8000u) == 0x8000u);
  CHECK(std::isnan(half_bits_to_float(0x7E00)));
  CHECK(std::isnan(half_bits_to_float(0x7C01)));
  // Tiny values flush to signed zero.
  CHECK(float_to_half_bits(1e-10f) == 0x0000);
  CHECK(float_to_half_bits(-1e-10f) == 0x8000);
  CHECK(float_to_half_bits(from_bits(0x00000001u)) == 0x0000);
}

TEST_CASE("half: float16 rounds to nearest, ties to even", "[io][half]") {
  const float ulp1 = std::ldexp(1.0f, -10);  // float16 spacing in [1, 2)
  // Exactly halfway between 1.0 (even) and 1+ulp: stays 1.0.
  CHECK(float_to_half_bits(1.0f + ulp1 / 2) == 0x3C00);
  // Halfway between 1+ulp (odd) and 1+2ulp (even): goes up to even.
  CHECK(float_to_half_bits(1.0f + 1.5f * ulp1) == 0x3C02);
  // Just above / below halfway.
  CHECK(float_to_half_bits(std::nextafter(1.0f + ulp1 / 2, 2.0f)) == 0x3C01);
  CHECK(float_to_half_bits(std::nextafter(1.0f + 1.5f * ulp1, 0.0f)) == 0x3C01);
  CHECK(float_to_half_bits(-(1.0f + 1.5f * ulp1)) == 0xBC02);
  // Mantissa carry into the exponent: 2 - ulp/2 is a tie between 0x3BFF (odd) and 2.0.
  CHECK(float_to_half_bits(2.0f - std::ldexp(1.0f, -12)) == 0x4000);
  // The overflow threshold: 65519 rounds down to 65504, 65520 (a tie, 65504 is odd) to inf.
  CHECK(float_to_half_bits(65519.0f) == 0x7BFF);
  CHECK(float_to_half_bits(std::nextafter(65520.0f, 0.0f)) == 0x7BFF);
  CHECK(float_to_half_bits(65520.0f) == 0x7C00);
  // Subnormal range: 2^-25 ties to 0 (even); just above rounds to the smallest subnormal.
  CHECK(float_to_half_bits(std::ldexp(1.0f, -25)) == 0x0000);
  CHECK(float_to_half_bits(std::nextafter(std::ldexp(1.0f, -25), 1.0f)) == 0x0001);
  // 1.5 * 2^-24 ties between 1 (odd) and 2 (even) -> 2; 2.5 * 2^-24 -> 2.
  CHECK(float_to_half_bits(std::ldexp(3.0f, -25)) == 0x0002);
  CHECK(float_to_half_bits(std::ldexp(5.0f, -25)) == 0x0002);
  // Largest subnormal + half an ulp ties to the smallest normal (0x0400, even).
  CHECK(float_to_half_bits(std::ldexp(2047.0f, -25)) == 0x0400);
}

TEST_CASE("half: every float16 value round-trips exactly through float", "[io][half]") {
  int checked = 0;
  for (std::uint32_t h = 0; h <= 0xFFFFu; ++h) {
    const auto bits = static_cast<std::uint16_t>(h);
    const float f = half_bits_to_float(bits);
    if (half_is_nan(bits)) {
      REQUIRE(std::isnan(f));
      REQUIRE(half_is_nan(float_to_half_bits(f)));
      continue;
    }
    REQUIRE(float_to_half_bits(f) == bits);
    ++checked;
  }
  CHECK(checked == 65536 - 2 * 1023);
}

TEST_CASE("half: float16 values are monotone and match the exact value formula", "[io][half]") {
  // Finite positive halves: value = (1024*[e>0] + m) * 2^(max(e,1) - 25).
  for (std::uint32_t h = 0; h < 0x7C00u; ++h) {
    const std::uint32_t e = h >> 10, m = h & 0x3FFu;
    const float expect = std::ldexp(static_cast<float>((e ? 1024u : 0u) + m), static_cast<int>(e ? e : 1) - 25);
    REQUIRE(half_bits_to_float(static_cast<std::uint16_t>(h)) == expect);
    REQUIRE(half_bits_to_float(static_cast<std::uint16_t>(h | 0x8000u)) == -expect);
  }
}

#if defined(__FLT16_MAX__) && defined(__x86_64__)
TEST_CASE("half: float->float16 agrees with the compiler's _Float16 conversion", "[io][half]") {
  std::mt19937 rng(12345);
  std::uniform_int_distribution<std::uint32_t> any;
  auto check = [](std::uint32_t bits) {
    const float f = std::bit_cast<float>(bits);
    if (std::isnan(f)) return;
    const auto ref = std::bit_cast<std::uint16_t>(static_cast<_Float16>(f));
    REQUIRE(float_to_half_bits(f) == ref);
  };
  for (int i = 0; i < 200000; ++i) check(any(rng));
  // Dense sweep over the interesting exponent range (subnormal to overflow), every 61st float.
  for (std::uint32_t b = 0x32800000u; b < 0x47900000u; b += 61) {
    check(b);
    check(b | 0x80000000u);
  }
}
#endif

TEST_CASE("half: bfloat16 bit patterns, rounding and round trip", "[io][half]") {
  CHECK(float_to_bf16_bits(1.0f) == 0x3F80);
  CHECK(bf16_bits_to_float(0x3F80) == 1.0f);
  CHECK(float_to_bf16_bits(-2.0f) == 0xC000);
  CHECK(float_to_bf16_bits(-0.0f) == 0x8000);
  CHECK(float_to_bf16_bits(std::numeric_limits<float>::infinity()) == 0x7F80);
  CHECK(float_to_bf16_bits(-std::numeric_limits<float>::infinity()) == 0xFF80);
  // Ties to even.
  CHECK(float_to_bf16_bits(from_bits(0x3F808000u)) == 0x3F80);  // tie, 0x3F80 even
  CHECK(float_to_bf16_bits(from_bits(0x3F818000u)) == 0x3F82);  // tie, 0x3F81 odd -> up
  CHECK(float_to_bf16_bits(from_bits(0x3F808001u)) == 0x3F81);  // above the tie
  CHECK(float_to_bf16_bits(from_bits(0x3F807FFFu)) == 0x3F80);  // below the tie
  // Overflow rounds to infinity; the largest bf16 stays.
  CHECK(float_to_bf16_bits(std::numeric_limits<float>::max()) == 0x7F80);
  CHECK(float_to_bf16_bits(from_bits(0x7F7F0000u)) == 0x7F7F);
  // Subnormals are kept (bf16 has float's exponent range).
  CHECK(float_to_bf16_bits(from_bits(0x00010000u)) == 0x0001);
  // NaN stays NaN even with a low-only payload.
  CHECK(bf16_is_nan(float_to_bf16_bits(std::numeric_limits<float>::quiet_NaN())));
  CHECK(bf16_is_nan(float_to_bf16_bits(from_bits(0x7F800001u))));
  CHECK(bf16_is_nan(float_to_bf16_bits(from_bits(0xFF800001u))));
  CHECK(std::isnan(bf16_bits_to_float(0x7FC0)));

  for (std::uint32_t b = 0; b <= 0xFFFFu; ++b) {
    const auto bits = static_cast<std::uint16_t>(b);
    const float f = bf16_bits_to_float(bits);
    if (bf16_is_nan(bits)) {
      REQUIRE(std::isnan(f));
      continue;
    }
    REQUIRE(std::bit_cast<std::uint32_t>(f) == (b << 16));
    REQUIRE(float_to_bf16_bits(f) == bits);
  }
}

TEST_CASE("half: bulk helpers convert arrays", "[io][half]") {
  const float in[5] = {0.0f, 1.0f, -3.25f, 65504.0f, 1e-3f};
  std::uint16_t h[5];
  float back[5];
  sae::detail::float_to_half(in, h, 5);
  sae::detail::half_to_float(h, back, 5);
  for (int i = 0; i < 4; ++i) CHECK(back[i] == in[i]);
  CHECK(std::abs(back[4] - 1e-3f) <= 1e-3f * std::ldexp(1.0f, -11));
  sae::detail::float_to_bf16(in, h, 5);
  sae::detail::bf16_to_float(h, back, 5);
  CHECK(back[1] == 1.0f);
  CHECK(back[2] == -3.25f);
  CHECK(std::abs(back[4] - 1e-3f) <= 1e-3f * std::ldexp(1.0f, -8));
}
