#pragma once
/// @file batch_source.hpp
/// Where training batches come from: paired raw activations [rows, M, d] addressed by step.

#include <cstdint>
#include <string>

namespace crosscoder {

/// A source of paired activation batches. Batch contents are a pure function of the step
/// number (and the source's own seed), so a run resumed at step s sees exactly the batches an
/// uninterrupted run would have seen.
class BatchSource {
 public:
  virtual ~BatchSource() = default;
  /// M, the number of sources (models or layers) per row.
  virtual int sources() const = 0;
  /// d, the width of each source.
  virtual int width() const = 0;
  /// Writes batch `step` (0-based): `rows` rows of raw activations to out[rows, M, d] and,
  /// when `labels` is not null and the source has labels, one label per row (else −1).
  virtual void fill(std::int64_t step, std::int64_t rows, float* out, std::int8_t* labels) = 0;
  /// A short description that identifies the data (files and seed), stored in checkpoints
  /// so that a resume on different data is refused.
  virtual std::string identity() const = 0;
};

}  // namespace crosscoder
