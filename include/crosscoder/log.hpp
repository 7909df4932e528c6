#pragma once
/// @file log.hpp
/// Where the library's diagnostics go. By default: standard error, one line each.

#include <functional>
#include <string_view>

namespace crosscoder {

enum class LogLevel { debug, info, warning };

/// Receives each diagnostic line (without a trailing newline).
using LogSink = std::function<void(LogLevel level, std::string_view message)>;

/// Replaces the sink; an empty function restores the default (stderr, info and above).
void set_log_sink(LogSink sink);

/// Sends one line to the current sink. Thread-safe.
void log_message(LogLevel level, std::string_view message);

}  // namespace crosscoder
