// The C++ half of tests/python/test_interop.py: reads files that NumPy and the `safetensors`
// package wrote, and writes files for them to read.
//
//   io_roundtrip read-npy IN.npy OUT.npy [--bf16]
//       Opens IN with io::NpyFile, prints {"descr", "shape"} as JSON and writes its values to OUT
//       with io::write_npy, same shape: float dtypes as '<f4' ('<u2' read as bfloat16 with
//       --bf16), integer dtypes as '<i4'.
//   io_roundtrip read-safetensors IN.safetensors OUT_DIR
//       Opens IN with io::SafetensorsFile, prints {"metadata", "tensors": [{"name", "dtype",
//       "shape", "file"}]} as JSON and writes each tensor i to OUT_DIR/tensor-<i>.npy as above.
//   io_roundtrip write OUT_DIR
//       Writes f32.npy [5, 7], f32_3d.npy [2, 3, 4], i32.npy [11], numeric.safetensors (F32
//       "weights" [4, 3], I64 "counts" [6], F16 "halves" [2, 5], metadata) and bf16.safetensors
//       (BF16 "bf16" [3, 2], F32 "reference" [3, 2], metadata), all from values(seed, n) below.
//
// values(seed, n): x ← seed; n times x ← (1664525·x + 1013904223) mod 2^32 and emit
// (x >> 8) · 2^-23 − 1 as float32 (exact). F16 and BF16 tensors hold those floats rounded to
// nearest even; integer tensors hold (x >> 16) − 32768.
// Exit status: 0 on success, 1 with "error: ..." on stderr when the library throws, 2 on usage.
#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "crosscoder/error.hpp"
#include "crosscoder/io/half.hpp"
#include "crosscoder/io/npy.hpp"
#include "crosscoder/io/safetensors.hpp"

namespace {

namespace fs = std::filesystem;
namespace io = crosscoder::io;
using crosscoder::Error;

std::vector<std::uint32_t> lcg(std::uint32_t seed, std::size_t n) {
  std::vector<std::uint32_t> out(n);
  std::uint32_t x = seed;
  for (auto& value : out) {
    x = 1664525u * x + 1013904223u;
    value = x;
  }
  return out;
}

std::vector<float> float_values(std::uint32_t seed, std::size_t n) {
  std::vector<float> out;
  for (std::uint32_t x : lcg(seed, n)) {
    out.push_back(static_cast<float>(x >> 8) * 0x1p-23f - 1.0f);
  }
  return out;
}

std::vector<std::int64_t> int_values(std::uint32_t seed, std::size_t n) {
  std::vector<std::int64_t> out;
  for (std::uint32_t x : lcg(seed, n)) out.push_back(static_cast<std::int64_t>(x >> 16) - 32768);
  return out;
}

template <typename T>
std::span<const std::byte> bytes_of(const std::vector<T>& values) {
  return std::as_bytes(std::span(values));
}

std::vector<std::int32_t> narrow_to_int32(const std::vector<std::int64_t>& values,
                                          const std::string& what) {
  std::vector<std::int32_t> out;
  out.reserve(values.size());
  for (std::int64_t v : values) {
    if (v < std::numeric_limits<std::int32_t>::min() ||
        v > std::numeric_limits<std::int32_t>::max()) {
      throw Error(what + ": value " + std::to_string(v) + " does not fit in int32");
    }
    out.push_back(static_cast<std::int32_t>(v));
  }
  return out;
}

int read_npy(const fs::path& in, const fs::path& out, bool bf16) {
  const io::NpyFile file = io::NpyFile::open(in);
  const std::string& descr = file.descr();
  nlohmann::json report = {{"descr", descr}, {"shape", file.shape()}};
  if (descr[1] == 'f' || (bf16 && descr == "<u2")) {
    std::vector<float> values(file.rows() * file.row_width());
    file.read_rows_float(0, file.rows(), values.data(), {.u2_as_bfloat16 = bf16});
    io::write_npy(out, file.shape(), values);
  } else {
    io::write_npy(out, file.shape(), narrow_to_int32(file.read_int(), in.string()));
  }
  std::printf("%s\n", report.dump().c_str());
  return 0;
}

int read_safetensors(const fs::path& in, const fs::path& out_dir) {
  const io::SafetensorsFile file = io::SafetensorsFile::open(in);
  fs::create_directories(out_dir);
  nlohmann::json tensors = nlohmann::json::array();
  const std::vector<std::string> names = file.names();
  for (std::size_t i = 0; i < names.size(); ++i) {
    const io::TensorInfo& info = file.info(names[i]);
    const std::string name = "tensor-" + std::to_string(i) + ".npy";
    const std::vector<std::size_t> shape(info.shape.begin(), info.shape.end());
    switch (info.dtype) {
      case io::DType::F32:
      case io::DType::F16:
      case io::DType::BF16:
      case io::DType::F64:
        io::write_npy(out_dir / name, shape, file.read_float(names[i]));
        break;
      default:
        io::write_npy(out_dir / name, shape,
                      narrow_to_int32(file.read_int(names[i]), in.string() + ": " + names[i]));
    }
    tensors.push_back({{"name", names[i]},
                       {"dtype", io::to_string(info.dtype)},
                       {"shape", info.shape},
                       {"file", name}});
  }
  const nlohmann::json report = {{"metadata", file.metadata()}, {"tensors", tensors}};
  std::printf("%s\n", report.dump().c_str());
  return 0;
}

int write_files(const fs::path& out_dir) {
  fs::create_directories(out_dir);
  io::write_npy(out_dir / "f32.npy", {5, 7}, float_values(1, 35));
  io::write_npy(out_dir / "f32_3d.npy", {2, 3, 4}, float_values(2, 24));
  io::write_npy(out_dir / "i32.npy", {11}, narrow_to_int32(int_values(3, 11), "i32.npy"));

  std::vector<std::uint16_t> halves;
  for (float v : float_values(6, 10)) halves.push_back(io::float_to_half(v));
  io::SafetensorsWriter numeric;
  numeric.add_float("weights", {4, 3}, float_values(4, 12));
  numeric.add_int64("counts", {6}, int_values(5, 6));
  numeric.add_raw("halves", io::DType::F16, {2, 5}, bytes_of(halves));
  numeric.set_metadata("format", "io-roundtrip-1");
  numeric.set_metadata("note", "caf\xc3\xa9 {\"json\": [1, 2]}");
  numeric.write(out_dir / "numeric.safetensors");

  const std::vector<float> reference = float_values(7, 6);
  std::vector<std::uint16_t> bf16;
  for (float v : reference) bf16.push_back(io::float_to_bfloat16(v));
  io::SafetensorsWriter mixed;
  mixed.add_raw("bf16", io::DType::BF16, {3, 2}, bytes_of(bf16));
  mixed.add_float("reference", {3, 2}, reference);
  mixed.set_metadata("sources", "[\"bf16\"]");
  mixed.write(out_dir / "bf16.safetensors");
  // The 16-bit .npy shards ActivationWriter writes: '<f2', and bfloat16 bits as '<u2'.
  io::write_npy_raw(out_dir / "f16.npy", {2, 5}, "<f2", bytes_of(halves));
  io::write_npy_raw(out_dir / "bf16_u2.npy", {3, 2}, "<u2", bytes_of(bf16));
  std::printf("wrote %s\n", out_dir.c_str());
  return 0;
}

int usage(const char* program) {
  std::fprintf(stderr,
               "usage: %s read-npy IN.npy OUT.npy [--bf16]\n"
               "       %s read-safetensors IN.safetensors OUT_DIR\n"
               "       %s write OUT_DIR\n",
               program, program, program);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string_view> args(argv + 1, argv + argc);
  try {
    if (args.size() >= 3 && args.size() <= 4 && args[0] == "read-npy") {
      const bool bf16 = args.size() == 4;
      if (bf16 && args[3] != "--bf16") return usage(argv[0]);
      return read_npy(args[1], args[2], bf16);
    }
    if (args.size() == 3 && args[0] == "read-safetensors")
      return read_safetensors(args[1], args[2]);
    if (args.size() == 2 && args[0] == "write") return write_files(args[1]);
    return usage(argv[0]);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
