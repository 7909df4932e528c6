#include "io/atomic_file.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <string>

#include "crosscoder/error.hpp"

namespace crosscoder::io {
namespace {

std::string reason(int error) { return std::strerror(error); }

// Creates ".<name>.tmp-<pid>-<n>" next to `path` with O_EXCL. Not mkstemp: that creates mode
// 0600, and the file we rename into place should get the permissions a plain fopen would give
// (0666 less the umask), which open(…, 0666) applies for us.
int create_temporary(const std::filesystem::path& path, const std::filesystem::path& directory,
                     std::string& temporary) {
  static std::atomic<std::uint64_t> counter{
      static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count())};
  for (int attempt = 0; attempt < 100; ++attempt) {
    // Built with += rather than operator+: GCC 12 warns falsely (-Wrestrict) on the latter.
    std::string name = ".";
    name += path.filename().string();
    name += fmt::format(".tmp-{}-{:x}", ::getpid(), counter.fetch_add(1) & 0xFFFFFFFFu);
    temporary = (directory / name).string();
    const int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd >= 0 || errno != EEXIST) return fd;
  }
  errno = EEXIST;
  return -1;
}

}  // namespace

void write_bytes(std::FILE* stream, const void* data, std::size_t bytes,
                 const std::filesystem::path& path) {
  if (bytes > 0 && std::fwrite(data, 1, bytes, stream) != bytes) {
    throw Error(fmt::format("{}: write failed: {}", path.string(), reason(errno)));
  }
}

void write_file_atomically(const std::filesystem::path& path,
                           const std::function<void(std::FILE*)>& write) {
  if (path.empty() || !path.has_filename()) {
    throw Error(fmt::format("'{}': not a file path to write to", path.string()));
  }
  const std::filesystem::path directory =
      path.has_parent_path() ? path.parent_path() : std::filesystem::path(".");
  std::string temporary;
  const int fd = create_temporary(path, directory, temporary);
  if (fd < 0) {
    throw Error(fmt::format("{}: cannot create a temporary file in directory '{}': {}",
                            path.string(), directory.string(), reason(errno)));
  }
  std::FILE* stream = ::fdopen(fd, "wb");
  if (!stream) {
    const int error = errno;
    ::close(fd);
    ::unlink(temporary.c_str());
    throw Error(fmt::format("{}: cannot open a stream: {}", path.string(), reason(error)));
  }
  try {
    write(stream);
    // ferror catches failures of writes the callback did not check itself (fputs, fprintf).
    if (std::ferror(stream)) {
      throw Error(fmt::format("{}: write failed: {}", path.string(), reason(errno)));
    }
    if (std::fflush(stream) != 0 || ::fsync(::fileno(stream)) != 0) {
      throw Error(fmt::format("{}: cannot flush to disk: {}", path.string(), reason(errno)));
    }
    const int closed = std::fclose(stream);
    stream = nullptr;  // closed even when fclose reports an error
    if (closed != 0) {
      throw Error(fmt::format("{}: cannot close: {}", path.string(), reason(errno)));
    }
    if (std::rename(temporary.c_str(), path.c_str()) != 0) {
      throw Error(fmt::format("{}: cannot replace the file: {}", path.string(), reason(errno)));
    }
  } catch (...) {
    if (stream) std::fclose(stream);
    ::unlink(temporary.c_str());
    throw;
  }
  // Make the rename itself durable. The new contents are already in place, so a filesystem
  // that cannot sync directories is not a reason to report failure.
  const int directory_fd = ::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (directory_fd >= 0) {
    ::fsync(directory_fd);
    ::close(directory_fd);
  }
}

}  // namespace crosscoder::io
