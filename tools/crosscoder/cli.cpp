#include "cli.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "crosscoder/error.hpp"

namespace crosscoder::cli {

void require_writable_parent(const std::filesystem::path& path, const char* flag) {
  const std::filesystem::path parent =
      path.has_parent_path() ? path.parent_path() : std::filesystem::path(".");
  if (!std::filesystem::is_directory(parent)) {
    throw Error(
        fmt::format("{} {}: directory {} does not exist", flag, path.string(), parent.string()));
  }
  // Creating a file is the test that counts: access(W_OK) says yes to root on a read-only
  // file system or in /proc, and training would then fail only when it saves.
  const std::filesystem::path probe =
      parent / fmt::format(".crosscoder-write-probe-{}", static_cast<long>(::getpid()));
  const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    throw Error(fmt::format("{} {}: directory {} is not writable ({})", flag, path.string(),
                            parent.string(), std::strerror(errno)));
  }
  ::close(fd);
  ::unlink(probe.c_str());
}

void add_device_option(CLI::App& command, std::string& device) {
  command.add_option("--device", device, "auto | cpu | cuda")->capture_default_str();
}

std::shared_ptr<Backend> backend_for(const std::string& device) {
  if (device == "auto") return best_backend();
  return make_backend(parse_backend_kind(device));
}

std::vector<std::filesystem::path> as_paths(const std::vector<std::string>& names) {
  return {names.begin(), names.end()};
}

}  // namespace crosscoder::cli
