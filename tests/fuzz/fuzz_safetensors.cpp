// libFuzzer target: the safetensors parser and its readers. A crosscoder::Error is the expected
// answer to a bad file; a crash, a sanitizer report, another exception type or a hang is a
// finding.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "crosscoder/error.hpp"
#include "crosscoder/io/safetensors.hpp"
#include "fuzz_input_file.hpp"

namespace {

template <typename Read>
void expect_error_or_success(Read read) {
  try {
    read();
  } catch (const crosscoder::Error&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto path = crosscoder::fuzz::write_input(data, size, ".safetensors");
  try {
    const auto file = crosscoder::io::SafetensorsFile::open(path);
    for (const auto& [key, value] : file.metadata()) {
      if (key.size() + value.size() > size) __builtin_trap();
    }
    std::size_t tensor_bytes = 0;
    for (const std::string& name : file.names()) {
      if (!file.contains(name)) __builtin_trap();
      const crosscoder::io::TensorInfo& info = file.info(name);
      // What open() promises: the data span is exactly product(shape) × element size bytes.
      const std::int64_t elements = info.elements();
      if (elements < 0 || info.data.size() != static_cast<std::size_t>(elements) *
                                                  crosscoder::io::element_size(info.dtype))
        __builtin_trap();
      tensor_bytes += info.data.size();
      if (tensor_bytes > size) __builtin_trap();  // tensors lie within the file, not overlapping
      expect_error_or_success([&] {
        if (file.read_float(name).size() != static_cast<std::size_t>(elements)) __builtin_trap();
      });
      expect_error_or_success([&] { (void)file.read_float(name, info.shape); });
      expect_error_or_success([&] {
        if (file.read_int(name).size() != static_cast<std::size_t>(elements)) __builtin_trap();
      });
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
