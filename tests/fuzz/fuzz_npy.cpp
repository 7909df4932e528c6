// libFuzzer target: the .npy parser and its readers. A crosscoder::Error is the expected answer
// to a bad file; a crash, a sanitizer report, another exception type or a hang is a finding.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "crosscoder/error.hpp"
#include "crosscoder/io/npy.hpp"
#include "fuzz_input_file.hpp"

namespace {

// Far more elements than an input of -max_len bytes can hold: the readers never allocate for
// the caller, so the buffers here are sized from the shape and capped.
constexpr std::size_t kMaxElements = std::size_t{1} << 22;

template <typename Read>
void expect_error_or_success(Read read) {
  try {
    read();
  } catch (const crosscoder::Error&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto path = crosscoder::fuzz::write_input(data, size, ".npy");
  try {
    const crosscoder::io::NpyFile file = crosscoder::io::NpyFile::open(path);
    const std::size_t rows = file.rows(), width = file.row_width();
    // The parser checked that product(shape) × item size bytes exist, so every element can be
    // read. (Exact buffers: ASan reports a write past the rows asked for.)
    if (width > 0 && rows <= kMaxElements / width) {
      for (const bool bf16 : {false, true}) {
        std::vector<float> all(rows * width);
        expect_error_or_success([&] { file.read_rows_float(0, rows, all.data(), {bf16}); });
        const std::size_t first = rows / 2;
        std::vector<float> tail((rows - first) * width);
        expect_error_or_success(
            [&] { file.read_rows_float(first, rows - first, tail.data(), {bf16}); });
      }
      expect_error_or_success([&] {
        const std::vector<std::int64_t> values = file.read_int();
        if (values.size() != rows * width) __builtin_trap();
      });
    }
    // Out-of-range requests must be refused before anything is written.
    std::vector<float> one(std::min(width, kMaxElements) + 1);
    const std::size_t past_end = rows < SIZE_MAX ? rows + 1 : rows;  // (rows never is SIZE_MAX)
    for (const auto& [first, count] :
         {std::pair{rows, std::size_t{1}}, std::pair{std::size_t{0}, past_end},
          std::pair{SIZE_MAX, std::size_t{2}}}) {
      try {
        file.read_rows_float(first, count, one.data());
        __builtin_trap();
      } catch (const crosscoder::Error&) {
      }
    }
  } catch (const crosscoder::Error&) {
  }
  return 0;
}
