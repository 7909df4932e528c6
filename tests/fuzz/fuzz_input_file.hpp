#pragma once
// The parsers read memory-mapped files: each fuzz input is written to one temporary file per
// process (reused), which the target then opens by path.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

namespace crosscoder::fuzz {

inline const std::filesystem::path& input_path(const char* suffix) {
  static const std::filesystem::path path = [suffix] {
    std::string name =
        (std::filesystem::temp_directory_path() / ("crosscoder-fuzz-XXXXXX" + std::string(suffix)))
            .string();
    const int fd = ::mkstemps(name.data(), static_cast<int>(std::string(suffix).size()));
    if (fd < 0) std::abort();
    ::close(fd);
    return std::filesystem::path(name);
  }();
  return path;
}

inline const std::filesystem::path& write_input(const std::uint8_t* data, std::size_t size,
                                                const char* suffix) {
  const std::filesystem::path& path = input_path(suffix);
  std::FILE* file = std::fopen(path.c_str(), "wb");
  if (!file) std::abort();
  if (size > 0 && std::fwrite(data, 1, size, file) != size) std::abort();
  std::fclose(file);
  return path;
}

}  // namespace crosscoder::fuzz
