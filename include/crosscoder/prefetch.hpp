#pragma once
/// @file prefetch.hpp
/// Background prefetch of batches, so that reading and converting data overlaps training.

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "crosscoder/batch_source.hpp"

namespace crosscoder {

/// Wraps a BatchSource: a worker thread fills the next `depth` batches while the caller trains on
/// the current one. Batches are a pure function of the step, so the results are exactly those of
/// the wrapped source; a request for an unexpected step (a resume, a jump) restarts the worker
/// there. An exception the worker meets (a bad file, a NaN row) is rethrown by the fill() call
/// that asks for that batch, and the worker stops. Destruction stops and joins the worker.
class PrefetchingBatchSource : public BatchSource {
 public:
  /// @throws Error when `source` is null or depth < 1.
  PrefetchingBatchSource(std::unique_ptr<BatchSource> source, int depth = 2);
  ~PrefetchingBatchSource() override;
  PrefetchingBatchSource(const PrefetchingBatchSource&) = delete;
  PrefetchingBatchSource& operator=(const PrefetchingBatchSource&) = delete;

  int sources() const override { return source_->sources(); }
  int width() const override { return source_->width(); }
  void fill(std::int64_t step, std::int64_t rows, float* out, std::int8_t* labels) override;
  std::string identity() const override { return source_->identity(); }

  BatchSource& wrapped() noexcept { return *source_; }

 private:
  struct Slot {
    std::int64_t step = 0;
    std::vector<float> values;
    std::vector<std::int8_t> labels;
    std::exception_ptr error;
  };

  void run();
  void stop_worker();
  void start_worker(std::int64_t step, std::int64_t rows);

  std::unique_ptr<BatchSource> source_;
  int depth_;
  std::thread worker_;
  std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<Slot> ready_;          // filled batches, in step order
  std::vector<Slot> spare_;         // buffers to reuse
  std::int64_t next_step_ = 0;      // the step the worker fills next
  std::int64_t consumer_next_ = 0;  // the step fill() expects to be asked for next
  std::int64_t rows_ = 0;
  bool stopping_ = false;
};

}  // namespace crosscoder
