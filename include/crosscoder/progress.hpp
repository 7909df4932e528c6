#pragma once
/// @file progress.hpp
/// Progress of long work: a redrawn bar with rate and ETA on a terminal, plain log lines
/// otherwise (CI logs, files, pipes); and the progress and stop hooks of a pass over data.

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>

namespace crosscoder {

/// How a pass over a dataset (diff, measure_data, check_dataset) reports progress and how its
/// caller stops it.
struct PassControl {
  std::int64_t chunk_rows = 4096;  ///< rows read and encoded at once
  std::string label;               ///< the progress bar's label; empty: the function's name
  bool show_progress = true;       ///< a progress bar (terminal) or log lines on stderr
  /// Called after every chunk with the rows done so far and the rows in the pass.
  std::function<void(std::int64_t rows_done, std::int64_t rows_total)> on_progress;
  /// Polled before every chunk; returning true stops the pass with Cancelled.
  std::function<bool()> should_stop;
};

class ProgressBar {
 public:
  /// `total` units of work called `unit` (e.g. "step"), drawn on `stream` (nullptr: silent), of
  /// which `initial` are already done (a resumed run): the rate counts only work done from now.
  /// Terminal mode is chosen when `stream` is a TTY; `log_every` sets how often plain mode
  /// prints a line.
  ProgressBar(std::int64_t total, std::string label, std::string unit = "step",
              std::FILE* stream = stderr, std::chrono::seconds log_every = std::chrono::seconds(10),
              std::int64_t initial = 0);
  ~ProgressBar();
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

  /// Reports that `done` units are finished; `status` is shown after the rate (e.g. the loss).
  /// Cheap to call every step: output is throttled.
  void update(std::int64_t done, const std::string& status = "");
  /// Draws the final state and ends the line.
  void finish(const std::string& status = "");

  /// "1:02:03" or "2:03" for a duration in seconds.
  static std::string format_duration(double seconds);

 private:
  void draw(std::int64_t done, const std::string& status, bool final);

  std::int64_t total_;
  std::int64_t initial_ = 0;
  bool drawn_ = false;
  std::string label_, unit_;
  std::FILE* stream_;
  bool terminal_;
  bool finished_ = false;
  std::chrono::steady_clock::duration log_every_;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

}  // namespace crosscoder
