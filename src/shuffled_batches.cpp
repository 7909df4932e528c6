#include "crosscoder/shuffled_batches.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <numeric>

#include "crosscoder/error.hpp"
#include "random.hpp"
#include "validation.hpp"

namespace crosscoder {

namespace {

// Fisher–Yates with the library's portable generator, so orders reproduce across platforms.
void shuffle(std::vector<std::int64_t>& values, std::uint64_t seed) {
  detail::Random random(seed);
  for (std::size_t i = values.size(); i > 1; --i) {
    const auto j = static_cast<std::size_t>(random.uniform() * static_cast<double>(i));
    std::swap(values[i - 1], values[std::min(j, i - 1)]);
  }
}

std::uint64_t mix(std::uint64_t a, std::uint64_t b) {
  // splitmix64 finaliser of a combined key: distinct (seed, epoch, buffer) give unrelated seeds.
  std::uint64_t z = a * 0x9E3779B97F4A7C15ull + b + 0x632BE59BD9B4E019ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

}  // namespace

ShuffledBatches::ShuffledBatches(std::shared_ptr<const ActivationDataset> dataset,
                                 ShuffleOptions options)
    : dataset_(std::move(dataset)), options_(options) {
  if (!dataset_) throw Error("ShuffledBatches: no dataset");
  const std::int64_t total = dataset_->rows();
  if (options_.row_count < 0) options_.row_count = total - options_.first_row;
  if (options_.first_row < 0 || options_.row_count <= 0 || options_.first_row > total ||
      options_.row_count > total - options_.first_row) {
    throw Error(fmt::format("training rows [{}, {}) are empty or outside the dataset's {} rows",
                            options_.first_row, options_.first_row + options_.row_count, total));
  }
  if (options_.block_rows <= 0) {
    throw Error(fmt::format("shuffle block of {} rows: must be positive", options_.block_rows));
  }
  if (options_.buffer_bytes <= 0) {
    throw Error(fmt::format("shuffle buffer of {} bytes: must be positive", options_.buffer_bytes));
  }
  range_rows_ = options_.row_count;
  blocks_ = (range_rows_ + options_.block_rows - 1) / options_.block_rows;
  const std::int64_t row_bytes =
      static_cast<std::int64_t>(sizeof(float)) * dataset_->sources() * dataset_->width();
  blocks_per_buffer_ = std::clamp<std::int64_t>(
      options_.buffer_bytes / (row_bytes * options_.block_rows), 1, blocks_);
}

std::int64_t ShuffledBatches::block_size(std::int64_t block) const {
  return std::min(options_.block_rows, range_rows_ - block * options_.block_rows);
}

const ShuffledBatches::EpochPlan& ShuffledBatches::plan(std::int64_t epoch) {
  if (plan_.epoch != epoch) {
    plan_.block_order.resize(static_cast<std::size_t>(blocks_));
    std::iota(plan_.block_order.begin(), plan_.block_order.end(), 0);
    shuffle(plan_.block_order, mix(options_.seed, static_cast<std::uint64_t>(2 * epoch)));
    plan_.buffer_offsets.assign(1, 0);
    for (std::int64_t first = 0; first < blocks_; first += blocks_per_buffer_) {
      std::int64_t rows = 0;
      for (std::int64_t b = first; b < std::min(first + blocks_per_buffer_, blocks_); ++b)
        rows += block_size(plan_.block_order[static_cast<std::size_t>(b)]);
      plan_.buffer_offsets.push_back(plan_.buffer_offsets.back() + rows);
    }
    plan_.epoch = epoch;
  }
  return plan_;
}

std::pair<std::int64_t, std::int64_t> ShuffledBatches::locate(const EpochPlan& plan,
                                                              std::int64_t position) const {
  const auto it =
      std::upper_bound(plan.buffer_offsets.begin(), plan.buffer_offsets.end(), position) - 1;
  return {it - plan.buffer_offsets.begin(), position - *it};
}

ShuffledBatches::Buffer& ShuffledBatches::buffer(std::int64_t epoch, std::int64_t index,
                                                 const Slice* slice) {
  const bool have_rows = buffer_.epoch == epoch && buffer_.index == index;
  if (have_rows && (!slice || buffer_.slice == *slice)) return buffer_;
  const EpochPlan& p = plan(epoch);
  if (!have_rows) {
    buffer_.rows.clear();
    buffer_.slice = Slice{};
    const std::int64_t first_block = index * blocks_per_buffer_;
    for (std::int64_t b = first_block; b < std::min(first_block + blocks_per_buffer_, blocks_);
         ++b) {
      const std::int64_t block = p.block_order[static_cast<std::size_t>(b)];
      const std::int64_t begin = options_.first_row + block * options_.block_rows;
      for (std::int64_t r = 0; r < block_size(block); ++r) buffer_.rows.push_back(begin + r);
    }
    buffer_.permutation.resize(buffer_.rows.size());
    std::iota(buffer_.permutation.begin(), buffer_.permutation.end(), 0);
    shuffle(buffer_.permutation, mix(mix(options_.seed, static_cast<std::uint64_t>(2 * epoch + 1)),
                                     static_cast<std::uint64_t>(index)));
    buffer_.epoch = epoch;
    buffer_.index = index;
  }
  if (slice) {
    // The rows this slice will deliver from the buffer: positions whose place in their batch
    // falls in [first, first + count) (all of them for whole batches).
    const auto n = static_cast<std::int64_t>(buffer_.rows.size());
    const std::int64_t offset =
        epoch * range_rows_ + p.buffer_offsets[static_cast<std::size_t>(index)];
    // Marked first, then numbered in read order: the row of `values` that holds each.
    buffer_.held.assign(static_cast<std::size_t>(n), -1);
    for (std::int64_t i = 0; i < n; ++i) {
      const std::int64_t place = (offset + i) % slice->rows - slice->first;
      if (place < 0 || place >= slice->count) continue;
      const auto read_index =
          static_cast<std::size_t>(buffer_.permutation[static_cast<std::size_t>(i)]);
      buffer_.held[read_index] = 0;
    }
    std::int64_t held = 0;
    for (std::int64_t& row : buffer_.held)
      if (row >= 0) row = held++;
    // Read in runs of consecutive dataset rows: whole blocks, sequentially, for whole batches.
    const std::int64_t row_size = static_cast<std::int64_t>(sources()) * width();
    buffer_.values.assign(static_cast<std::size_t>(held * row_size), 0.0f);
    buffer_.labels.assign(dataset_->has_labels() ? static_cast<std::size_t>(held) : 0, -1);
    for (std::int64_t start = 0; start < n;) {
      if (buffer_.held[static_cast<std::size_t>(start)] < 0) {
        ++start;
        continue;
      }
      std::int64_t run = 1;
      while (start + run < n && buffer_.held[static_cast<std::size_t>(start + run)] >= 0 &&
             buffer_.rows[start + run] == buffer_.rows[start] + run)
        ++run;
      const std::int64_t at = buffer_.held[static_cast<std::size_t>(start)];
      dataset_->read(buffer_.rows[start], run, buffer_.values.data() + at * row_size);
      if (dataset_->has_labels())
        dataset_->read_labels(buffer_.rows[start], run, buffer_.labels.data() + at);
      rows_read_ += run;
      start += run;
    }
    buffer_.slice = *slice;
  }
  return buffer_;
}

void ShuffledBatches::fill(std::int64_t step, std::int64_t rows, float* out, std::int8_t* labels) {
  fill_rows(step, rows, 0, rows, out, labels);
}

void ShuffledBatches::fill_rows(std::int64_t step, std::int64_t rows, std::int64_t first,
                                std::int64_t count, float* out, std::int8_t* labels) {
  if (step < 0 || rows <= 0) {
    throw Error(fmt::format("batch {} of {} rows: step must be ≥ 0 and rows > 0", step, rows));
  }
  detail::check_row_slice(rows, first, count);
  const std::int64_t row_size = static_cast<std::int64_t>(sources()) * width();
  const Slice slice{rows, first, count};
  for (std::int64_t i = 0; i < count;) {
    const std::int64_t position = step * rows + first + i;
    const std::int64_t epoch = position / range_rows_;
    const EpochPlan& p = plan(epoch);
    const auto [index, within] = locate(p, position % range_rows_);
    Buffer& b = buffer(epoch, index, &slice);
    // Serve as many rows as this buffer still has.
    const std::int64_t available = p.buffer_offsets[static_cast<std::size_t>(index + 1)] -
                                   p.buffer_offsets[static_cast<std::size_t>(index)] - within;
    const std::int64_t n = std::min(count - i, available);
    for (std::int64_t r = 0; r < n; ++r) {
      const std::int64_t read_index = b.permutation[static_cast<std::size_t>(within + r)];
      const std::int64_t source_row = b.held[static_cast<std::size_t>(read_index)];
      std::copy_n(b.values.data() + source_row * row_size, row_size, out + (i + r) * row_size);
      if (labels) labels[i + r] = b.labels.empty() ? std::int8_t{-1} : b.labels[source_row];
    }
    i += n;
  }
}

std::string ShuffledBatches::identity() const {
  return fmt::format("{};seed={};block_rows={};buffer_rows={};first_row={};row_count={}",
                     dataset_->identity(), options_.seed, options_.block_rows, buffer_rows(),
                     options_.first_row, range_rows_);
}

}  // namespace crosscoder
