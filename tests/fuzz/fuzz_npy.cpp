// libFuzzer target: the .npy parser and its readers. A crosscoder::Error is the expected answer
// to a bad file; a crash, a sanitizer report, another exception type or a hang is a finding.
#include <cstdint>
#include <vector>

#include "crosscoder/error.hpp"
#include "crosscoder/io/npy.hpp"
#include "fuzz_input_file.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto& path = crosscoder::fuzz::write_input(data, size, ".npy");
  try {
    const crosscoder::io::NpyFile file = crosscoder::io::NpyFile::open(path);
    const std::size_t rows = file.rows(), width = file.row_width();
    // Stay within a sane allocation: the parser already checked the bytes exist.
    if (width > 0 && rows * width <= (std::size_t{1} << 22)) {
      std::vector<float> out(rows * width);
      for (const bool bf16 : {false, true}) {
        try {
          file.read_rows_float(0, rows, out.data(), {bf16});
        } catch (const crosscoder::Error&) {
        }
      }
      try {
        (void)file.read_int();
      } catch (const crosscoder::Error&) {
      }
    }
    // Out-of-range requests must be refused, not read.
    try {
      std::vector<float> one(width + 1);
      file.read_rows_float(rows, 1, one.data());
      __builtin_trap();
    } catch (const crosscoder::Error&) {
    }
  } catch (const crosscoder::Error&) {
  }
  return 0;
}
