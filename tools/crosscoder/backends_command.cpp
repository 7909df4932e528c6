// `crosscoder backends`: which compute backends are built and usable here, and why not.
#include <cstdio>
#include <string>

#include "cli.hpp"
#include "crosscoder/version.hpp"

namespace crosscoder::cli {

Runner add_backends_command(CLI::App& app) {
  app.add_subcommand("backends", "List the compute backends and whether each is usable here");
  return [] {
    std::printf("crosscoder %s\n", version_string);
    for (const BackendInfo& info : available_backends()) {
      const std::string name(to_string(info.kind));
      if (info.usable) {
        std::printf("  %-5s usable: %s\n", name.c_str(), info.device.c_str());
      } else {
        std::printf("  %-5s %s: %s\n", name.c_str(), info.built ? "not usable" : "not built",
                    info.reason.c_str());
      }
    }
    return 0;
  };
}

}  // namespace crosscoder::cli
