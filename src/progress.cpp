#include "crosscoder/progress.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>

namespace crosscoder {

ProgressBar::ProgressBar(std::int64_t total, std::string label, std::string unit, std::FILE* stream,
                         std::chrono::seconds log_every, std::int64_t initial)
    : total_(std::max<std::int64_t>(total, 1)),
      initial_(initial),
      label_(std::move(label)),
      unit_(std::move(unit)),
      stream_(stream),
      terminal_(stream != nullptr && isatty(fileno(stream)) != 0),
      log_every_(log_every),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_) {}

ProgressBar::~ProgressBar() {
  if (terminal_ && !finished_ && drawn_) std::fputc('\n', stream_);
}

std::string ProgressBar::format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const auto total = static_cast<long long>(std::llround(seconds));
  const long long hours = total / 3600, minutes = (total / 60) % 60, secs = total % 60;
  return hours > 0 ? fmt::format("{}:{:02}:{:02}", hours, minutes, secs)
                   : fmt::format("{}:{:02}", minutes, secs);
}

void ProgressBar::update(std::int64_t done, const std::string& status) {
  if (stream_ == nullptr) return;
  const auto now = std::chrono::steady_clock::now();
  const auto interval =
      terminal_ ? std::chrono::steady_clock::duration(std::chrono::milliseconds(100)) : log_every_;
  // The final state is drawn once, by finish().
  if (now - last_draw_ < interval || done >= total_) return;
  last_draw_ = now;
  draw(done, status, false);
}

void ProgressBar::finish(const std::string& status) {
  if (stream_ == nullptr || finished_) return;
  draw(total_, status, true);
  finished_ = true;
}

void ProgressBar::draw(std::int64_t done, const std::string& status, bool final) {
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  drawn_ = true;
  const auto progressed = static_cast<double>(done - initial_);
  const double rate = elapsed > 0.0 ? progressed / elapsed : 0.0;
  const double eta = rate > 0.0 ? static_cast<double>(total_ - done) / rate : NAN;
  const double fraction =
      std::clamp(static_cast<double>(done) / static_cast<double>(total_), 0.0, 1.0);
  const std::string tail =
      fmt::format("{}/{} {}s  {:.1f} {}/s  elapsed {}  ETA {}{}{}", done, total_, unit_, rate,
                  unit_, format_duration(elapsed), final ? "0:00" : format_duration(eta),
                  status.empty() ? "" : "  ", status);
  if (terminal_) {
    constexpr int kWidth = 28;
    const int filled = static_cast<int>(fraction * kWidth);
    fmt::print(stream_, "\r\x1b[2K{} [{}{}] {:3.0f}% {}", label_, std::string(filled, '#'),
               std::string(kWidth - filled, '.'), 100.0 * fraction, tail);
    if (final) std::fputc('\n', stream_);
  } else {
    fmt::print(stream_, "{}: {:.0f}% {}\n", label_, 100.0 * fraction, tail);
  }
  std::fflush(stream_);
}

}  // namespace crosscoder
