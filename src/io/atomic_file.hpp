#pragma once
/// @file atomic_file.hpp
/// Writing a file so that readers, and a crash at any moment, see either the old contents or
/// the complete new ones.

#include <cstddef>
#include <cstdio>
#include <filesystem>
#include <functional>

namespace crosscoder::io {

/// Calls `write` with a binary stream on a new temporary file in the directory of `path`, then
/// flushes and fsyncs it, renames it over `path` and fsyncs the directory. A new file gets the
/// usual permissions (0666 less the umask). On any failure the temporary file is removed and
/// `path` is left exactly as it was.
/// @throws Error naming `path` and the system's reason (strerror) when the temporary file
///         cannot be created (e.g. a missing or unwritable directory), written, synced or
///         renamed. An exception thrown by `write` itself is passed on unchanged.
void write_file_atomically(const std::filesystem::path& path,
                           const std::function<void(std::FILE* stream)>& write);

/// fwrite of `bytes` bytes that throws Error (naming `path` and strerror) on a short write; a
/// helper for `write` callbacks.
void write_bytes(std::FILE* stream, const void* data, std::size_t bytes,
                 const std::filesystem::path& path);

}  // namespace crosscoder::io
