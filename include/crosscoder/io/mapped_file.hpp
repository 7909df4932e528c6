#pragma once
/// @file mapped_file.hpp
/// A whole file mapped read-only into memory.

#include <cstddef>
#include <filesystem>
#include <span>

namespace crosscoder::io {

/// RAII read-only memory map of a file. Move-only. An empty file maps to an empty span.
class MappedFile {
 public:
  /// @throws Error naming the path when the file cannot be opened or mapped.
  static MappedFile open(const std::filesystem::path& path);
  MappedFile() = default;
  ~MappedFile();
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  std::span<const std::byte> bytes() const noexcept { return {data_, size_}; }
  const std::filesystem::path& path() const noexcept { return path_; }

 private:
  const std::byte* data_ = nullptr;
  std::size_t size_ = 0;
  std::filesystem::path path_;
};

}  // namespace crosscoder::io
