#pragma once
/// @file atomic_file.hpp
/// Writing a file so that readers see either the old contents or the complete new ones.

#include <cstdio>
#include <filesystem>
#include <functional>

namespace crosscoder::io {

/// Calls `write` with a stream on a temporary file in the same directory, then flushes,
/// fsyncs and renames it over `path` and fsyncs the directory. On any failure (including an
/// exception from `write`) the temporary file is removed and `path` is left untouched.
/// @throws Error naming the path and the system's reason.
void write_file_atomically(const std::filesystem::path& path,
                           const std::function<void(std::FILE* stream)>& write);

/// fwrite that throws Error (naming `path`) on a short write.
void write_bytes(std::FILE* stream, const void* data, std::size_t bytes,
                 const std::filesystem::path& path);

}  // namespace crosscoder::io
