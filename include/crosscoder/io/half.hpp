#pragma once
/// @file half.hpp
/// IEEE float16 and bfloat16 conversions (bit patterns in std::uint16_t), round to nearest even.

#include <bit>
#include <cmath>
#include <cstdint>

namespace crosscoder::io {

/// float16 bits → float (exact: every float16 is a float).
inline float half_to_float(std::uint16_t h) noexcept {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exponent = (h >> 10) & 0x1Fu;
  const std::uint32_t mantissa = h & 0x3FFu;
  if (exponent == 0) {  // zero or subnormal: mantissa · 2^-24
    const float magnitude = std::ldexp(static_cast<float>(mantissa), -24);
    return sign ? -magnitude : magnitude;
  }
  if (exponent == 31) return std::bit_cast<float>(sign | 0x7F800000u | (mantissa << 13));
  return std::bit_cast<float>(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

/// float → float16 bits, rounding to nearest even; overflow gives ±inf, NaN stays NaN.
inline std::uint16_t float_to_half(float value) noexcept {
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(value);
  const auto sign = static_cast<std::uint16_t>((bits >> 16) & 0x8000u);
  const std::uint32_t magnitude = bits & 0x7FFFFFFFu;
  if (magnitude >= 0x7F800000u) return sign | (magnitude > 0x7F800000u ? 0x7E00u : 0x7C00u);
  if (magnitude >= 0x477FF000u) return sign | 0x7C00u;  // ≥ 65520 rounds to infinity
  if (magnitude < 0x38800000u) {
    // Below the smallest normal float16 (2^-14): the result is mantissa · 2^-24. Scaling by
    // 2^24 is exact and nearbyint rounds to nearest even in the default rounding mode.
    const float scaled = std::bit_cast<float>(magnitude) * 16777216.0f;
    return sign | static_cast<std::uint16_t>(std::nearbyint(scaled));
  }
  const std::uint32_t rebased = magnitude - 0x38000000u;  // exponent bias 127 → 15
  return sign | static_cast<std::uint16_t>((rebased + 0xFFFu + ((rebased >> 13) & 1u)) >> 13);
}

/// bfloat16 bits → float (exact).
inline float bfloat16_to_float(std::uint16_t b) noexcept {
  return std::bit_cast<float>(static_cast<std::uint32_t>(b) << 16);
}

/// float → bfloat16 bits, rounding to nearest even; NaN stays NaN.
inline std::uint16_t float_to_bfloat16(float value) noexcept {
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(value);
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<std::uint16_t>((bits >> 16) | 0x0040u);
  return static_cast<std::uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}

}  // namespace crosscoder::io
