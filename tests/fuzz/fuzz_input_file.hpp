#pragma once
// The parsers read memory-mapped files by path: each fuzz input is written to one file per
// process, made once and rewritten for every input, which the target then opens by its path.
// The file is an in-memory one (memfd, opened as /proc/self/fd/N) where the kernel allows:
// rewriting a file on disk thousands of times a second costs writeback (ext4 flushes a file
// truncated and rewritten when it is closed), which made the targets I/O-bound. Elsewhere it is
// a temporary file (mkstemps, removed at exit).
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>

namespace crosscoder::fuzz {

struct InputFile {
  int fd = -1;
  std::string path;
};

// A plain buffer rather than a std::string, so that it is still there for the exit handler.
inline char temporary_name[4096];

inline const InputFile& input_file(const char* suffix) {
  static const InputFile file = [suffix] {
    InputFile made;
    made.fd = ::memfd_create(("crosscoder-fuzz" + std::string(suffix)).c_str(), MFD_CLOEXEC);
    if (made.fd >= 0) {
      made.path = "/proc/self/fd/" + std::to_string(made.fd);
      if (::access(made.path.c_str(), R_OK) == 0) return made;
      ::close(made.fd);
    }
    const std::string name =
        (std::filesystem::temp_directory_path() / ("crosscoder-fuzz-XXXXXX" + std::string(suffix)))
            .string();
    if (name.size() >= sizeof(temporary_name)) std::abort();
    std::memcpy(temporary_name, name.c_str(), name.size() + 1);
    made.fd = ::mkstemps(temporary_name, static_cast<int>(std::strlen(suffix)));
    if (made.fd < 0) std::abort();
    std::atexit([] { ::unlink(temporary_name); });
    made.path = temporary_name;
    return made;
  }();
  return file;
}

// Replaces the file's contents with the input and returns its path.
inline std::filesystem::path write_input(const std::uint8_t* data, std::size_t size,
                                         const char* suffix) {
  const InputFile& file = input_file(suffix);
  for (std::size_t done = 0; done < size;) {
    const ssize_t written = ::pwrite(file.fd, data + done, size - done, static_cast<off_t>(done));
    if (written <= 0) std::abort();
    done += static_cast<std::size_t>(written);
  }
  if (::ftruncate(file.fd, static_cast<off_t>(size)) != 0) std::abort();
  return file.path;
}

}  // namespace crosscoder::fuzz
