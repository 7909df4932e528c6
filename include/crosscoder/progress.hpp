#pragma once
/// @file progress.hpp
/// Progress of long work: a redrawn bar with rate and ETA on a terminal, plain log lines
/// otherwise (CI logs, files, pipes).

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace crosscoder {

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
