#pragma once
/// @file mapped_file.hpp
/// A whole file mapped read-only into memory: the storage behind NpyFile and SafetensorsFile.
/// An implementation detail (namespace io::detail), public only because those classes hold one.

#include <cstddef>
#include <filesystem>
#include <span>

namespace crosscoder::io::detail {

/// RAII read-only memory map of a whole regular file. Move-only; a moved-from or
/// default-constructed MappedFile is empty. An empty file maps to an empty span (mmap of size
/// 0 is not attempted). The file must not be truncated by others while mapped.
class MappedFile {
 public:
  /// @throws Error naming the path and the system's reason when the file cannot be opened,
  ///         is not a regular file, or cannot be mapped.
  static MappedFile open(const std::filesystem::path& path);

  MappedFile() = default;
  ~MappedFile();
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  /// The file's contents, valid while this object lives.
  std::span<const std::byte> bytes() const noexcept { return {data_, size_}; }
  const std::filesystem::path& path() const noexcept { return path_; }

 private:
  void unmap() noexcept;

  const std::byte* data_ = nullptr;
  std::size_t size_ = 0;
  std::filesystem::path path_;
};

}  // namespace crosscoder::io::detail
