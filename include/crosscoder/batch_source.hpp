#pragma once
/// @file batch_source.hpp
/// Where training batches come from: paired raw activations [rows, M, d] addressed by step.

#include <cstdint>
#include <memory>
#include <string>

#include "crosscoder/communicator.hpp"

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
  /// Rows [first, first + count) of batch `step` of `rows` rows, as fill would write them (a
  /// rank's slice in data-parallel training). The default fills the whole batch and copies the
  /// slice; a source that can read only the slice overrides it.
  /// @throws Error when the slice is not inside the batch.
  virtual void fill_rows(std::int64_t step, std::int64_t rows, std::int64_t first,
                         std::int64_t count, float* out, std::int8_t* labels);
  /// A short description that identifies the data (files and seed), stored in checkpoints
  /// so that a resume on different data is refused.
  virtual std::string identity() const = 0;
};

/// This rank's rows of another source's global batches, for data-parallel training: batch
/// `step` of slice.count rows is rows [slice.first, slice.first + slice.count) of the wrapped
/// source's batch `step` of `global_rows` rows. Its identity is the wrapped source's, so a
/// training checkpoint's data position means the same global batches at any rank count.
class RankSliceBatches : public BatchSource {
 public:
  /// @throws Error when `global` is null or the slice is not inside a global batch.
  RankSliceBatches(std::unique_ptr<BatchSource> global, std::int64_t global_rows, RowSlice slice);
  int sources() const override { return global_->sources(); }
  int width() const override { return global_->width(); }
  /// @throws Error unless rows == slice.count.
  void fill(std::int64_t step, std::int64_t rows, float* out, std::int8_t* labels) override;
  std::string identity() const override { return global_->identity(); }

 private:
  std::unique_ptr<BatchSource> global_;
  std::int64_t global_rows_;
  RowSlice slice_;
};

}  // namespace crosscoder
