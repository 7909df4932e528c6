#pragma once
// Checks on user-supplied activation batches, shared by inference and training.

#include <fmt/format.h>

#include <cmath>
#include <cstdint>
#include <span>

#include "crosscoder/error.hpp"

namespace crosscoder::detail {

/// Throws Error when x is not rows×M×d floats or holds NaN/Inf (naming row and source).
inline void check_batch(std::span<const float> x, std::int64_t rows, int sources, int width,
                        const char* what) {
  const std::int64_t input_width = static_cast<std::int64_t>(sources) * width;
  if (rows < 0 || static_cast<std::int64_t>(x.size()) != rows * input_width) {
    throw Error(fmt::format("{}: expected {} rows × {} sources × {} = {} floats, got {}", what,
                            rows, sources, width, rows * input_width, x.size()));
  }
  for (std::int64_t i = 0; i < static_cast<std::int64_t>(x.size()); ++i) {
    if (!std::isfinite(x[i])) {
      const std::int64_t row = i / input_width;
      const std::int64_t source = (i % input_width) / width;
      throw Error(fmt::format("{}: non-finite value {} at row {}, source {}, element {}", what,
                              x[i], row, source, i % width));
    }
  }
}

/// Throws Error unless rows [first, first + count) are a non-empty part of a `rows`-row batch.
inline void check_row_slice(std::int64_t rows, std::int64_t first, std::int64_t count) {
  if (first < 0 || count < 1 || first + count > rows) {
    throw Error(
        fmt::format("rows [{}, {}) are not inside a batch of {} rows", first, first + count, rows));
  }
}

}  // namespace crosscoder::detail
