// Prints the library version and every backend, usable or not, with the reason.
#include <cstdio>

#include "crosscoder/crosscoder.hpp"

int main() {
  std::printf("crosscoder %s\n", crosscoder::version_string);
  for (const crosscoder::BackendInfo& info : crosscoder::available_backends()) {
    const std::string_view name = crosscoder::to_string(info.kind);
    if (info.usable) {
      std::printf("  %-5.*s usable: %s\n", static_cast<int>(name.size()), name.data(),
                  info.device.c_str());
    } else {
      std::printf("  %-5.*s %s: %s\n", static_cast<int>(name.size()), name.data(),
                  info.built ? "not usable" : "not built", info.reason.c_str());
    }
  }
  return 0;
}
