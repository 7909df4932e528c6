// A downstream program: links crosscoder::crosscoder and prints what it can use.
#include <cstdio>

#include <crosscoder/crosscoder.hpp>

int main() {
  std::printf("consumer: crosscoder %s\n", crosscoder::version_string);
  for (const auto& info : crosscoder::available_backends()) {
    std::printf("consumer: %s %s%s\n", crosscoder::to_string(info.kind).data(),
                info.usable ? "usable " : "unusable: ",
                info.usable ? info.device.c_str() : info.reason.c_str());
  }
  return 0;
}
