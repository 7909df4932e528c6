#pragma once
/// @file sparse_codes.hpp
/// Sparse latent activations in CSR form, the output of the crosscoder's encoder.

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "crosscoder/device_array.hpp"

namespace crosscoder {

/// Active latents of `rows` input rows, on a backend: row b's entries are
/// `latent[row_ptr[b] .. row_ptr[b+1])` with activations `value[...]`. Within a row, latents
/// are in descending order of their selection score for TopK/BatchTopK and ascending index
/// order otherwise. TopK is the special case nnz = rows·k.
struct SparseCodes {
  std::int64_t rows = 0;
  std::int64_t nnz = 0;
  DeviceArray<std::int64_t> row_ptr;  ///< [rows + 1]
  DeviceArray<std::int32_t> latent;   ///< [nnz] latent index in [0, F)
  DeviceArray<float> value;           ///< [nnz] activation f_j(x) (in normalised units)
};

/// The same codes copied to host memory.
struct HostSparseCodes {
  std::int64_t rows = 0;
  std::vector<std::int64_t> row_ptr;
  std::vector<std::int32_t> latent;
  std::vector<float> value;

  /// Copies `codes` from its backend.
  static HostSparseCodes from(const SparseCodes& codes);
  /// Row b's activations scattered into a dense vector of `latents` entries.
  std::vector<float> dense_row(std::int64_t row, std::int64_t latents) const;
};

/// The codes of consecutive blocks of rows (each on `backend`) joined into codes over all their
/// rows, in order: how a batch selected tile by tile becomes one batch's codes.
SparseCodes concatenate_rows(const std::shared_ptr<Backend>& backend,
                             std::span<const SparseCodes> parts);

}  // namespace crosscoder
