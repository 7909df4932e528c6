#pragma once
// The `crosscoder` tool's shared layer: how a command registers itself, and the checks and
// choices every command makes the same way. Each command lives in its own <name>_command.cpp
// and only translates flags into library calls.

#include <CLI/CLI.hpp>

#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "crosscoder/backend.hpp"

namespace crosscoder::cli {

/// Runs a parsed command; returns the process's exit status.
using Runner = std::function<int()>;

/// Each adds its subcommand and flags to `app` and returns what runs it once parsed.
Runner add_backends_command(CLI::App& app);
Runner add_demo_command(CLI::App& app);
Runner add_train_command(CLI::App& app);
Runner add_diff_command(CLI::App& app);
Runner add_examples_command(CLI::App& app);
Runner add_export_command(CLI::App& app);
Runner add_info_command(CLI::App& app);

/// Fails before any work when a file could not be written later, naming `flag`.
void require_writable_parent(const std::filesystem::path& path, const char* flag);

/// `--device`: auto | cpu | cuda.
void add_device_option(CLI::App& command, std::string& device);
/// The backend `--device` names ("auto": the best usable one).
std::shared_ptr<Backend> backend_for(const std::string& device);

/// The positional or repeated file arguments as paths.
std::vector<std::filesystem::path> as_paths(const std::vector<std::string>& names);

}  // namespace crosscoder::cli
