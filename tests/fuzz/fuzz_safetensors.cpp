// libFuzzer target: the safetensors parser and its readers. A crosscoder::Error is the expected
// answer to a bad file; a crash, a sanitizer report, another exception type or a hang is a
// finding.
#include <cstdint>

#include "crosscoder/error.hpp"
#include "crosscoder/io/safetensors.hpp"
#include "fuzz_input_file.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto& path = crosscoder::fuzz::write_input(data, size, ".safetensors");
  try {
    const auto file = crosscoder::io::SafetensorsFile::open(path);
    for (const auto& [key, value] : file.metadata()) (void)(key.size() + value.size());
    for (const std::string& name : file.names()) {
      const crosscoder::io::TensorInfo& info = file.info(name);
      if (info.elements() > (std::int64_t{1} << 22)) continue;
      try {
        (void)file.read_float(name);
      } catch (const crosscoder::Error&) {
      }
      try {
        (void)file.read_int(name);
      } catch (const crosscoder::Error&) {
      }
    }
    try {
      (void)file.info("\x01 not a tensor name");
      __builtin_trap();
    } catch (const crosscoder::Error&) {
    }
  } catch (const crosscoder::Error&) {
  }
  return 0;
}
