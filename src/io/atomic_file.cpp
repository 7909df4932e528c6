#include "crosscoder/io/atomic_file.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "crosscoder/error.hpp"

namespace crosscoder::io {

void write_bytes(std::FILE* stream, const void* data, std::size_t bytes,
                 const std::filesystem::path& path) {
  if (bytes > 0 && std::fwrite(data, 1, bytes, stream) != bytes) {
    throw Error(fmt::format("{}: write failed: {}", path.string(), std::strerror(errno)));
  }
}

void write_file_atomically(const std::filesystem::path& path,
                           const std::function<void(std::FILE*)>& write) {
  const std::filesystem::path directory =
      path.has_parent_path() ? path.parent_path() : std::filesystem::path(".");
  // Built with += rather than operator+: GCC 12 warns falsely (-Wrestrict) on the latter.
  std::string name = ".";
  name += path.filename().string();
  name += ".tmp-XXXXXX";
  std::string temporary = (directory / name).string();
  const int fd = ::mkstemp(temporary.data());
  if (fd < 0) {
    throw Error(fmt::format("{}: cannot create a temporary file in {}: {}", path.string(),
                            directory.string(), std::strerror(errno)));
  }
  std::FILE* stream = ::fdopen(fd, "wb");
  if (!stream) {
    const int error = errno;
    ::close(fd);
    ::unlink(temporary.c_str());
    throw Error(fmt::format("{}: cannot open a stream: {}", path.string(), std::strerror(error)));
  }
  try {
    write(stream);
    if (std::fflush(stream) != 0 || ::fsync(::fileno(stream)) != 0) {
      throw Error(fmt::format("{}: cannot flush to disk: {}", path.string(), std::strerror(errno)));
    }
    if (std::fclose(stream) != 0) {
      stream = nullptr;
      throw Error(fmt::format("{}: cannot close: {}", path.string(), std::strerror(errno)));
    }
    stream = nullptr;
    if (std::rename(temporary.c_str(), path.c_str()) != 0) {
      throw Error(
          fmt::format("{}: cannot replace the file: {}", path.string(), std::strerror(errno)));
    }
  } catch (...) {
    if (stream) std::fclose(stream);
    ::unlink(temporary.c_str());
    throw;
  }
  // Make the rename itself durable.
  const int directory_fd = ::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (directory_fd >= 0) {
    ::fsync(directory_fd);
    ::close(directory_fd);
  }
}

}  // namespace crosscoder::io
