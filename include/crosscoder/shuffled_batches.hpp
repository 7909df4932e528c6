#pragma once
/// @file shuffled_batches.hpp
/// Shuffled training batches from an ActivationDataset, read in large sequential blocks.

#include <cstdint>
#include <memory>
#include <vector>

#include "crosscoder/batch_source.hpp"
#include "crosscoder/dataset.hpp"

namespace crosscoder {

struct ShuffleOptions {
  std::uint64_t seed = 0;
  /// Rows read together, sequentially: the unit of I/O on a cold file.
  std::int64_t block_rows = 4096;
  /// Memory for the shuffle buffer (float32 rows of all sources); rounded down to whole blocks,
  /// at least one block.
  std::int64_t buffer_bytes = std::int64_t{512} << 20;
  /// The rows used: [first_row, first_row + row_count); row_count < 0 means to the end.
  std::int64_t first_row = 0;
  std::int64_t row_count = -1;
};

/// Each epoch visits every row of the range exactly once. The range is cut into blocks; an
/// epoch's blocks are put in a seeded random order and taken a buffer-full at a time; each
/// buffer is read sequentially block by block and its rows are then permuted. Rows thus mix
/// across the whole dataset at block granularity and freely within a buffer, while the disk sees
/// large sequential reads. Batch `step` is a pure function of (dataset, options, step), so a
/// resumed run gets exactly the batches an uninterrupted one would have.
class ShuffledBatches : public BatchSource {
 public:
  /// @throws Error when the range is empty or outside the dataset, or block_rows or
  ///         buffer_bytes is not positive.
  ShuffledBatches(std::shared_ptr<const ActivationDataset> dataset, ShuffleOptions options);

  int sources() const override { return dataset_->sources(); }
  int width() const override { return dataset_->width(); }
  /// Rows per epoch.
  std::int64_t rows() const noexcept { return range_rows_; }
  /// Rows the shuffle buffer holds.
  std::int64_t buffer_rows() const noexcept { return blocks_per_buffer_ * options_.block_rows; }
  /// @throws Error naming the file and row of a non-finite value.
  void fill(std::int64_t step, std::int64_t rows, float* out, std::int8_t* labels) override;
  /// Reads only the slice's rows: of each buffer, the rows that this slice of the batches will
  /// deliver (a rank of several reads its own 1/N of every buffer, and holds only those).
  void fill_rows(std::int64_t step, std::int64_t rows, std::int64_t first, std::int64_t count,
                 float* out, std::int8_t* labels) override;
  /// Rows read from the dataset so far (a buffer read again after another was counts again).
  std::int64_t rows_read() const noexcept { return rows_read_; }
  std::string identity() const override;

 private:
  struct EpochPlan {
    std::int64_t epoch = -1;
    std::vector<std::int64_t> block_order;     // blocks in visiting order
    std::vector<std::int64_t> buffer_offsets;  // first epoch position of each buffer, + end
  };
  // The part of every batch that a fill delivers: rows [first, first + count) of `rows`.
  struct Slice {
    std::int64_t rows = 0, first = 0, count = 0;
    bool operator==(const Slice&) const = default;
  };
  struct Buffer {
    std::int64_t epoch = -1, index = -1;
    std::vector<std::int64_t> rows;         // dataset row of each buffered row, in read order
    std::vector<std::int64_t> permutation;  // delivery order → read order
    Slice slice;                            // the slice whose rows `values` holds
    std::vector<std::int64_t> held;         // read order → row of `values`, or −1 if not held
    std::vector<float> values;              // [held rows, M, d]
    std::vector<std::int8_t> labels;        // [held rows] when the dataset has labels
  };

  const EpochPlan& plan(std::int64_t epoch);
  // Where epoch position `position` lies: buffer index and position within it.
  std::pair<std::int64_t, std::int64_t> locate(const EpochPlan& plan, std::int64_t position) const;
  // Buffer `index` of `epoch`; with a slice, holding the values of the rows the slice delivers.
  Buffer& buffer(std::int64_t epoch, std::int64_t index, const Slice* slice);
  std::int64_t block_size(std::int64_t block) const;

  std::shared_ptr<const ActivationDataset> dataset_;
  ShuffleOptions options_;
  std::int64_t range_rows_ = 0;
  std::int64_t blocks_ = 0;
  std::int64_t blocks_per_buffer_ = 1;
  EpochPlan plan_;
  Buffer buffer_;
  std::int64_t rows_read_ = 0;
};

}  // namespace crosscoder
