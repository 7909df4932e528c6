#include "crosscoder/batch_source.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <vector>

#include "crosscoder/error.hpp"
#include "validation.hpp"

namespace crosscoder {

void BatchSource::fill_rows(std::int64_t step, std::int64_t rows, std::int64_t first,
                            std::int64_t count, float* out, std::int8_t* labels) {
  detail::check_row_slice(rows, first, count);
  const auto row_size = static_cast<std::size_t>(sources()) * static_cast<std::size_t>(width());
  std::vector<float> whole(static_cast<std::size_t>(rows) * row_size);
  std::vector<std::int8_t> whole_labels(labels ? static_cast<std::size_t>(rows) : 0);
  fill(step, rows, whole.data(), labels ? whole_labels.data() : nullptr);
  std::copy_n(whole.begin() + static_cast<std::ptrdiff_t>(first * row_size), count * row_size, out);
  if (labels) std::copy_n(whole_labels.begin() + first, count, labels);
}

RankSliceBatches::RankSliceBatches(std::unique_ptr<BatchSource> global, std::int64_t global_rows,
                                   RowSlice slice)
    : global_(std::move(global)), global_rows_(global_rows), slice_(slice) {
  if (!global_) throw Error("RankSliceBatches: no source");
  detail::check_row_slice(global_rows_, slice_.first, slice_.count);
}

void RankSliceBatches::fill(std::int64_t step, std::int64_t rows, float* out, std::int8_t* labels) {
  if (rows != slice_.count) {
    throw Error(
        fmt::format("this rank's slice of each batch has {} rows, not {}", slice_.count, rows));
  }
  global_->fill_rows(step, global_rows_, slice_.first, slice_.count, out, labels);
}

}  // namespace crosscoder
