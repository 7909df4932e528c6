#include "crosscoder/prefetch.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "crosscoder/error.hpp"

namespace crosscoder {

PrefetchingBatchSource::PrefetchingBatchSource(std::unique_ptr<BatchSource> source, int depth)
    : source_(std::move(source)), depth_(depth) {
  if (!source_) throw Error("PrefetchingBatchSource: no source");
  if (depth_ < 1) throw Error(fmt::format("prefetch depth {}: must be at least 1", depth_));
}

PrefetchingBatchSource::~PrefetchingBatchSource() { stop_worker(); }

void PrefetchingBatchSource::stop_worker() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  changed_.notify_all();
  if (worker_.joinable()) worker_.join();
  std::lock_guard lock(mutex_);
  for (Slot& slot : ready_) spare_.push_back(std::move(slot));
  ready_.clear();
  stopping_ = false;
}

void PrefetchingBatchSource::start_worker(std::int64_t step, std::int64_t rows) {
  next_step_ = step;
  consumer_next_ = step;
  rows_ = rows;
  worker_ = std::thread([this] { run(); });
}

void PrefetchingBatchSource::run() {
  const std::int64_t row_size = static_cast<std::int64_t>(sources()) * width();
  for (;;) {
    Slot slot;
    std::int64_t step = 0;
    {
      std::unique_lock lock(mutex_);
      changed_.wait(lock, [&] { return stopping_ || static_cast<int>(ready_.size()) < depth_; });
      if (stopping_) return;
      if (!spare_.empty()) {
        slot = std::move(spare_.back());
        spare_.pop_back();
      }
      step = next_step_++;
    }
    // Fill outside the lock: this is the slow part the caller must not wait for.
    slot.step = step;
    slot.error = nullptr;
    slot.values.resize(static_cast<std::size_t>(rows_ * row_size));
    slot.labels.resize(static_cast<std::size_t>(rows_));
    try {
      source_->fill(step, rows_, slot.values.data(), slot.labels.data());
    } catch (...) {
      slot.error = std::current_exception();
    }
    const bool failed = slot.error != nullptr;
    {
      std::lock_guard lock(mutex_);
      ready_.push_back(std::move(slot));
    }
    changed_.notify_all();
    if (failed) return;  // the caller gets the error when it asks for this step
  }
}

void PrefetchingBatchSource::fill(std::int64_t step, std::int64_t rows, float* out,
                                  std::int8_t* labels) {
  if (!worker_.joinable() || rows != rows_ || step != consumer_next_) {
    stop_worker();
    start_worker(step, rows);
  }
  ++consumer_next_;
  Slot slot;
  {
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return !ready_.empty(); });
    slot = std::move(ready_.front());
    ready_.pop_front();
  }
  changed_.notify_all();
  if (slot.error) {
    stop_worker();
    std::rethrow_exception(slot.error);
  }
  std::copy(slot.values.begin(), slot.values.end(), out);
  if (labels) std::copy(slot.labels.begin(), slot.labels.end(), labels);
  std::lock_guard lock(mutex_);
  spare_.push_back(std::move(slot));
}

}  // namespace crosscoder
