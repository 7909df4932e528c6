#pragma once
/// @file half.hpp
/// IEEE 754 binary16 ("float16") and bfloat16 conversions to and from float32. The 16-bit
/// values are bit patterns in std::uint16_t. Narrowing rounds to nearest, ties to even, using
/// integer arithmetic only (independent of the floating-point rounding mode); infinities,
/// NaNs (kept quiet, sign kept) and subnormals are handled. Nothing here throws.

#include <bit>
#include <cstdint>

namespace crosscoder::io {

/// float16 bits → float. Exact: every float16 value is a float.
constexpr float half_to_float(std::uint16_t h) noexcept {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exponent = (h >> 10) & 0x1Fu;
  const std::uint32_t mantissa = h & 0x3FFu;
  if (exponent == 0) {
    // Zero or subnormal: mantissa · 2^-24; both factors are exact floats, so is the product.
    const float magnitude = static_cast<float>(mantissa) * (1.0f / 16777216.0f);
    return std::bit_cast<float>(sign | std::bit_cast<std::uint32_t>(magnitude));
  }
  if (exponent == 31) return std::bit_cast<float>(sign | 0x7F800000u | (mantissa << 13));
  return std::bit_cast<float>(sign | ((exponent + (127 - 15)) << 23) | (mantissa << 13));
}

/// float → float16 bits, rounding to nearest even. Magnitudes from 65520 up become ±inf,
/// those at or below 2^-25 become ±0; NaN stays a (quiet) NaN.
constexpr std::uint16_t float_to_half(float value) noexcept {
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(value);
  const auto sign = static_cast<std::uint16_t>((bits >> 16) & 0x8000u);
  const std::uint32_t magnitude = bits & 0x7FFFFFFFu;
  if (magnitude > 0x7F800000u) {  // NaN: keep the top payload bits, force quiet
    return static_cast<std::uint16_t>(sign | 0x7E00u | ((magnitude >> 13) & 0x3FFu));
  }
  if (magnitude >= 0x477FF000u) return sign | 0x7C00u;  // ≥ 65520 (and inf) round to inf
  if (magnitude >= 0x38800000u) {                       // ≥ 2^-14: a normal float16
    // Rebase the exponent (bias 127 → 15) and drop 13 mantissa bits, rounding half to even.
    // A mantissa carry correctly bumps the exponent.
    const std::uint32_t rebased = magnitude - ((127u - 15u) << 23);
    return static_cast<std::uint16_t>(sign | ((rebased + 0xFFFu + ((rebased >> 13) & 1u)) >> 13));
  }
  // Below 2^-14 the result is a float16 subnormal q · 2^-24 (q = 1024 is the smallest normal,
  // which the bit layout encodes correctly). With m the 24-bit significand and E the biased
  // exponent, value / 2^-24 = m · 2^(E - 126), so q = m >> (126 - E), rounded half to even.
  const std::uint32_t biased_exponent = magnitude >> 23;
  if (biased_exponent < 102) return sign;  // below 2^-25: rounds to zero
  const std::uint32_t significand = (magnitude & 0x7FFFFFu) | 0x800000u;
  const std::uint32_t shift = 126 - biased_exponent;  // 14 … 24
  std::uint32_t q = significand >> shift;
  const std::uint32_t remainder = significand & ((1u << shift) - 1u);
  const std::uint32_t halfway = 1u << (shift - 1);
  if (remainder > halfway || (remainder == halfway && (q & 1u))) ++q;
  return static_cast<std::uint16_t>(sign | q);
}

/// bfloat16 bits → float. Exact: bfloat16 is the top half of a float.
constexpr float bfloat16_to_float(std::uint16_t b) noexcept {
  return std::bit_cast<float>(static_cast<std::uint32_t>(b) << 16);
}

/// float → bfloat16 bits, rounding to nearest even (values past the largest bfloat16 become
/// ±inf); NaN stays a (quiet) NaN.
constexpr std::uint16_t float_to_bfloat16(float value) noexcept {
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(value);
  // Plain truncation could turn a NaN whose payload is all in the low half into infinity.
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<std::uint16_t>((bits >> 16) | 0x40u);
  return static_cast<std::uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}

}  // namespace crosscoder::io
