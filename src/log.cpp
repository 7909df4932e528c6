#include "crosscoder/log.hpp"

#include <cstdio>
#include <mutex>
#include <string>

namespace crosscoder {
namespace {

std::mutex& sink_mutex() {
  static std::mutex mutex;
  return mutex;
}

LogSink& current_sink() {
  static LogSink sink;
  return sink;
}

void default_sink(LogLevel level, std::string_view message) {
  if (level == LogLevel::debug) return;
  const char* prefix = level == LogLevel::warning ? "crosscoder: warning: " : "crosscoder: ";
  std::fprintf(stderr, "%s%.*s\n", prefix, static_cast<int>(message.size()), message.data());
}

}  // namespace

void set_log_sink(LogSink sink) {
  std::lock_guard lock(sink_mutex());
  current_sink() = std::move(sink);
}

void log_message(LogLevel level, std::string_view message) {
  std::lock_guard lock(sink_mutex());
  if (current_sink()) {
    current_sink()(level, message);
  } else {
    default_sink(level, message);
  }
}

}  // namespace crosscoder
