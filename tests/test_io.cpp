// safetensors, .npy, half-precision conversions and atomic writes, on fresh random data and
// on hand-built malformed files.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "crosscoder/error.hpp"
#include "crosscoder/io/atomic_file.hpp"
#include "crosscoder/io/half.hpp"
#include "crosscoder/io/npy.hpp"
#include "crosscoder/io/safetensors.hpp"

namespace crosscoder::io {
namespace {

namespace fs = std::filesystem;

class IoTest : public ::testing::Test {
 protected:
  IoTest() : rng_(std::random_device{}()) {
    dir_ = fs::temp_directory_path() / ("crosscoder-io-" + std::to_string(rng_()));
    fs::create_directories(dir_);
  }
  ~IoTest() override { fs::remove_all(dir_); }

  fs::path file(const std::string& name) const { return dir_ / name; }
  void write_raw(const fs::path& path, const std::string& bytes) const {
    std::ofstream(path, std::ios::binary)
        .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }
  static std::string safetensors_bytes(const std::string& header, const std::string& data) {
    std::string out(8, '\0');
    std::uint64_t n = header.size();
    for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xFF);
    return out + header + data;
  }
  std::string error_of(const std::string& bytes) {
    write_raw(file("t.safetensors"), bytes);
    try {
      SafetensorsFile::open(file("t.safetensors"));
    } catch (const Error& error) {
      return error.what();
    }
    return "no error";
  }

  std::mt19937_64 rng_;
  fs::path dir_;
};

// ---- half and bfloat16 ----------------------------------------------------------------------

// float64 value of a float16 bit pattern, from the definition.
double reference_half(std::uint16_t h) {
  const int sign = (h >> 15) ? -1 : 1, exponent = (h >> 10) & 0x1F, mantissa = h & 0x3FF;
  if (exponent == 0) return sign * std::ldexp(static_cast<double>(mantissa), -24);
  if (exponent == 31)
    return mantissa ? std::nan("") : sign * std::numeric_limits<double>::infinity();
  return sign * std::ldexp(static_cast<double>(1024 + mantissa), exponent - 25);
}

TEST(Half, EveryFloat16DecodesExactlyAndRoundTrips) {
  for (std::uint32_t bits = 0; bits < 65536; ++bits) {
    const auto h = static_cast<std::uint16_t>(bits);
    const double want = reference_half(h);
    const float got = half_to_float(h);
    if (std::isnan(want)) {
      ASSERT_TRUE(std::isnan(got)) << bits;
      continue;
    }
    ASSERT_EQ(static_cast<double>(got), want) << bits;
    ASSERT_EQ(float_to_half(got), h) << bits;  // -0 and +0 stay distinct
  }
}

TEST(Half, FloatToHalfRoundsToNearestEven) {
  std::mt19937_64 rng(std::random_device{}());
  std::uniform_int_distribution<std::uint32_t> any;
  for (int i = 0; i < 200000; ++i) {
    float value;
    const std::uint32_t bits = any(rng);
    std::memcpy(&value, &bits, 4);
    if (std::isnan(value)) continue;
    const std::uint16_t h = float_to_half(value);
    // Compare against the two nearest float16 values computed in float64.
    const double x = value, got = reference_half(h);
    if (std::abs(x) >= 65520.0) {
      ASSERT_TRUE(std::isinf(got) && (got > 0) == (x > 0)) << x;
      continue;
    }
    const std::uint16_t neighbour_up = static_cast<std::uint16_t>(h + 1),
                        neighbour_down = static_cast<std::uint16_t>(h - 1);
    const double error = std::abs(got - x);
    for (std::uint16_t other : {neighbour_up, neighbour_down}) {
      const double candidate = reference_half(other);
      if (std::isnan(candidate) || std::isinf(candidate) || ((other ^ h) & 0x8000)) continue;
      const double other_error = std::abs(candidate - x);
      ASSERT_LE(error, other_error) << "value " << x;
      if (error == other_error) {
        ASSERT_EQ(h & 1, 0) << "tie not to even for " << x;
      }
    }
  }
  EXPECT_EQ(float_to_half(NAN) & 0x7C00, 0x7C00);
  EXPECT_NE(float_to_half(NAN) & 0x03FF, 0);
}

TEST(Half, Bfloat16RoundsToNearestEven) {
  std::mt19937_64 rng(std::random_device{}());
  std::uniform_real_distribution<float> uniform(-1e6f, 1e6f);
  for (int i = 0; i < 100000; ++i) {
    const float x = uniform(rng);
    const std::uint16_t b = float_to_bfloat16(x);
    const double got = bfloat16_to_float(b);
    const double up = bfloat16_to_float(static_cast<std::uint16_t>(b + 1));
    const double down = bfloat16_to_float(static_cast<std::uint16_t>(b - 1));
    ASSERT_LE(std::abs(got - x), std::abs(up - x));
    ASSERT_LE(std::abs(got - x), std::abs(down - x));
  }
  EXPECT_EQ(bfloat16_to_float(float_to_bfloat16(1.0f)), 1.0f);
  EXPECT_TRUE(std::isnan(bfloat16_to_float(float_to_bfloat16(NAN))));
}

// ---- safetensors ----------------------------------------------------------------------------

TEST_F(IoTest, SafetensorsRoundTripsEveryWrittenTensor) {
  std::normal_distribution<float> normal;
  std::vector<float> a(3 * 5 * 7);
  for (float& v : a) v = normal(rng_);
  std::vector<std::int64_t> b = {static_cast<std::int64_t>(rng_()), -3, 7};
  SafetensorsWriter writer;
  writer.add_float("layer.a", {3, 5, 7}, a);
  writer.add_int64("b", {3}, b);
  writer.add_float("scalar", {}, std::vector<float>{2.5f});
  writer.add_float("empty", {0, 4}, std::vector<float>{});
  writer.set_metadata("config", "{\"x\": 1}");
  writer.write(file("x.safetensors"));
  const SafetensorsFile f = SafetensorsFile::open(file("x.safetensors"));
  EXPECT_EQ(f.read_float("layer.a", {3, 5, 7}), a);
  EXPECT_EQ(f.read_int("b"), b);
  EXPECT_EQ(f.read_float("scalar", {}), std::vector<float>{2.5f});
  EXPECT_TRUE(f.read_float("empty", {0, 4}).empty());
  EXPECT_EQ(f.metadata().at("config"), "{\"x\": 1}");
  EXPECT_EQ(f.names(), (std::vector<std::string>{"layer.a", "b", "scalar", "empty"}));
  EXPECT_THROW(f.read_float("missing"), Error);
  EXPECT_THROW(f.read_float("layer.a", {3, 35}), Error);
  EXPECT_THROW(f.read_float("b"), Error);
  // The data section starts 8-byte aligned.
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(f.info("layer.a").data.data()) % 8, 0u);
}

TEST_F(IoTest, SafetensorsConvertsHalfAndBfloat16) {
  const std::vector<float> values = {1.0f, -2.5f, 0.099975586f, 65504.0f};
  std::vector<std::uint16_t> halves, brains;
  for (float v : values) {
    halves.push_back(float_to_half(v));
    brains.push_back(float_to_bfloat16(v));
  }
  SafetensorsWriter writer;
  writer.add_raw("h", DType::F16, {4}, std::as_bytes(std::span(halves)));
  writer.add_raw("b", DType::BF16, {2, 2}, std::as_bytes(std::span(brains)));
  writer.write(file("h.safetensors"));
  const SafetensorsFile f = SafetensorsFile::open(file("h.safetensors"));
  const auto h = f.read_float("h");
  const auto b = f.read_float("b");
  for (std::size_t i = 0; i < values.size(); ++i) {
    EXPECT_EQ(h[i], half_to_float(halves[i]));
    EXPECT_EQ(b[i], bfloat16_to_float(brains[i]));
  }
}

TEST_F(IoTest, SafetensorsWriterRejectsDuplicatesAndSizeMismatches) {
  SafetensorsWriter writer;
  writer.add_float("a", {2}, std::vector<float>{1, 2});
  EXPECT_THROW(writer.add_float("a", {2}, std::vector<float>{1, 2}), Error);
  EXPECT_THROW(writer.add_float("b", {3}, std::vector<float>{1, 2}), Error);
  EXPECT_THROW(writer.add_float("__metadata__", {1}, std::vector<float>{1}), Error);
}

TEST_F(IoTest, MalformedSafetensorsGiveErrorsThatNameTheProblem) {
  const std::string ok_header = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  const std::string eight(8, '\1');
  EXPECT_EQ(error_of(safetensors_bytes(ok_header, eight)), "no error");
  struct Case {
    std::string bytes;
    std::string expected;
  } cases[] = {
      {"abc", "too short"},
      {safetensors_bytes(ok_header, eight).substr(0, 20), "past the end"},
      {std::string("\xff\xff\xff\xff\xff\xff\xff\x7f", 8) + "{}", "exceeds"},
      {safetensors_bytes("not json", ""), "not valid JSON"},
      {safetensors_bytes("[1, 2]", ""), "not an object"},
      {safetensors_bytes(R"({"a":{"dtype":"Q8","shape":[2],"data_offsets":[0,8]}})", eight),
       "unsupported dtype"},
      {safetensors_bytes(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", eight),
       "non-negative"},
      {safetensors_bytes(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", eight),
       "needs 12"},
      {safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", eight),
       "reversed"},
      {safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", eight + "xx"),
       "data section has"},
      {safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", eight),
       "beyond the data section"},
      {safetensors_bytes(
           R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
           eight),
       "contiguous"},
      {safetensors_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", eight),
       "contiguous"},
      {safetensors_bytes(
           R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
           eight),
       "twice"},
      {safetensors_bytes(
           R"({"__metadata__":{"k":1},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
           eight),
       "not a string"},
      {safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2]}})", eight), "data_offsets"},
      {safetensors_bytes(
           R"({"a":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,8]}})", eight),
       "too large"},
  };
  for (const Case& c : cases) {
    const std::string message = error_of(c.bytes);
    EXPECT_NE(message.find(c.expected), std::string::npos)
        << "expected '" << c.expected << "' in: " << message;
    EXPECT_NE(message.find("t.safetensors"), std::string::npos) << message;
  }
}

TEST_F(IoTest, RandomlyMutatedSafetensorsParseOrThrowButNeverCrash) {
  SafetensorsWriter writer;
  writer.add_float("a", {4, 3}, std::vector<float>(12, 1.5f));
  writer.add_int64("b", {2}, std::vector<std::int64_t>{1, 2});
  writer.set_metadata("m", "v");
  writer.write(file("base.safetensors"));
  std::ifstream in(file("base.safetensors"), std::ios::binary);
  const std::string base((std::istreambuf_iterator<char>(in)), {});
  std::uniform_int_distribution<std::size_t> position(0, base.size() - 1);
  int parsed = 0, rejected = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    std::string bytes = base;
    const int edits = 1 + static_cast<int>(rng_() % 4);
    for (int e = 0; e < edits; ++e) {
      switch (rng_() % 3) {
        case 0:
          bytes[position(rng_) % bytes.size()] = static_cast<char>(rng_());
          break;
        case 1:
          bytes.resize(position(rng_) % bytes.size());
          break;
        default:
          bytes.insert(position(rng_) % (bytes.size() + 1), 1, static_cast<char>(rng_()));
          break;
      }
      if (bytes.empty()) break;
    }
    write_raw(file("m.safetensors"), bytes);
    try {
      const SafetensorsFile f = SafetensorsFile::open(file("m.safetensors"));
      for (const std::string& name : f.names()) {
        const TensorInfo& info = f.info(name);
        if (info.dtype == DType::F32 || info.dtype == DType::F16 || info.dtype == DType::BF16 ||
            info.dtype == DType::F64) {
          EXPECT_EQ(f.read_float(name).size(), static_cast<std::size_t>(info.elements()));
        }
      }
      ++parsed;
    } catch (const Error&) {
      ++rejected;
    }
  }
  EXPECT_GT(rejected, 0);
  EXPECT_GT(parsed, 0);  // edits inside the data section leave a valid file
}

// ---- .npy -----------------------------------------------------------------------------------

std::string npy_bytes(int major, const std::string& header, const std::string& data) {
  std::string out = std::string("\x93NUMPY", 6) + static_cast<char>(major) + '\0';
  std::string padded = header;
  const std::size_t prefix = out.size() + (major == 1 ? 2 : 4);
  padded.append((64 - (prefix + padded.size() + 1) % 64) % 64, ' ');
  padded += '\n';
  const std::uint32_t n = static_cast<std::uint32_t>(padded.size());
  for (int i = 0; i < (major == 1 ? 2 : 4); ++i) out += static_cast<char>((n >> (8 * i)) & 0xFF);
  return out + padded + data;
}

TEST_F(IoTest, NpyRoundTripsFloat32AndInt32) {
  std::normal_distribution<float> normal;
  std::vector<float> a(17 * 9);
  for (float& v : a) v = normal(rng_);
  write_npy(file("a.npy"), {17, 9}, a);
  const NpyFile f = NpyFile::open(file("a.npy"));
  EXPECT_EQ(f.shape(), (std::vector<std::size_t>{17, 9}));
  EXPECT_EQ(f.rows(), 17u);
  EXPECT_EQ(f.row_width(), 9u);
  std::vector<float> back(a.size());
  f.read_rows_float(0, 17, back.data());
  EXPECT_EQ(back, a);
  std::vector<float> two(18);
  f.read_rows_float(5, 2, two.data());
  EXPECT_EQ(std::vector<float>(a.begin() + 45, a.begin() + 63), two);
  EXPECT_THROW(f.read_rows_float(16, 2, two.data()), Error);
  // Data starts on a 64-byte boundary, as numpy's writer does.
  std::ifstream in(file("a.npy"), std::ios::binary | std::ios::ate);
  EXPECT_EQ((static_cast<std::size_t>(in.tellg()) - a.size() * 4) % 64, 0u);

  std::vector<std::int32_t> labels = {1, 0, -1, 1, 7};
  write_npy(file("l.npy"), {5}, labels);
  EXPECT_EQ(NpyFile::open(file("l.npy")).read_int(), (std::vector<std::int64_t>{1, 0, -1, 1, 7}));
}

TEST_F(IoTest, NpyReadsVersions1To3AndHalfAndDouble) {
  std::string data(6 * 2, '\0');
  std::vector<float> want(6);
  std::uniform_real_distribution<float> uniform(-4.0f, 4.0f);
  for (int i = 0; i < 6; ++i) {
    const std::uint16_t h = float_to_half(uniform(rng_));
    want[i] = half_to_float(h);
    std::memcpy(&data[2 * i], &h, 2);
  }
  for (int major : {1, 2, 3}) {
    write_raw(
        file("h.npy"),
        npy_bytes(major, "{'descr': '<f2', 'fortran_order': False, 'shape': (2, 3), }", data));
    const NpyFile f = NpyFile::open(file("h.npy"));
    std::vector<float> got(6);
    f.read_rows_float(0, 2, got.data());
    EXPECT_EQ(got, want) << "version " << major;
  }
  std::string doubles(3 * 8, '\0');
  const double values[3] = {0.5, -1.25, 3.0};
  std::memcpy(doubles.data(), values, sizeof values);
  write_raw(
      file("d.npy"),
      npy_bytes(1, "{\"descr\": \"<f8\", \"shape\": (3,), \"fortran_order\": False}", doubles));
  std::vector<float> got(3);
  NpyFile::open(file("d.npy")).read_rows_float(0, 3, got.data());
  EXPECT_EQ(got, (std::vector<float>{0.5f, -1.25f, 3.0f}));
}

TEST_F(IoTest, UnsupportedOrBrokenNpyFilesNameTheProblem) {
  const auto message = [&](const std::string& bytes) {
    write_raw(file("x.npy"), bytes);
    try {
      NpyFile::open(file("x.npy"));
    } catch (const Error& error) {
      return std::string(error.what());
    }
    return std::string("no error");
  };
  const std::string floats(16, '\0');
  EXPECT_NE(
      message(npy_bytes(1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }", floats))
          .find("Fortran"),
      std::string::npos);
  EXPECT_NE(
      message(npy_bytes(1, "{'descr': '>f4', 'fortran_order': False, 'shape': (2, 2), }", floats))
          .find("big-endian"),
      std::string::npos);
  EXPECT_NE(
      message(npy_bytes(1, "{'descr': '<c8', 'fortran_order': False, 'shape': (2, 2), }", floats))
          .find("unsupported dtype"),
      std::string::npos);
  EXPECT_NE(
      message(npy_bytes(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2), }", floats))
          .find("needs 24"),
      std::string::npos);
  EXPECT_NE(
      message(npy_bytes(1, "{'descr': '<f4', 'shape': (2, 2), }", floats)).find("fortran_order"),
      std::string::npos);
  EXPECT_NE(message(npy_bytes(4, "{}", "")).find("version"), std::string::npos);
  EXPECT_NE(message("not numpy at all").find("magic"), std::string::npos);
  EXPECT_NE(
      message(npy_bytes(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, -2), }", floats))
          .find("non-negative"),
      std::string::npos);
  EXPECT_NE(message("").find("magic"), std::string::npos);
  EXPECT_EQ(
      message(npy_bytes(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }", floats)),
      "no error");
}

TEST_F(IoTest, RandomlyMutatedNpyHeadersParseOrThrowButNeverCrash) {
  const std::string base = npy_bytes(
      1, "{'descr': '<f4', 'fortran_order': False, 'shape': (4, 3), }", std::string(48, '\1'));
  std::uniform_int_distribution<std::size_t> position(0, 80);
  int rejected = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    std::string bytes = base;
    bytes[position(rng_)] = static_cast<char>(rng_());
    if (rng_() % 4 == 0) bytes.resize(position(rng_));
    write_raw(file("m.npy"), bytes);
    try {
      const NpyFile f = NpyFile::open(file("m.npy"));
      if (f.descr()[1] == 'f') {
        std::vector<float> out(f.rows() * f.row_width());
        f.read_rows_float(0, f.rows(), out.data());
      }
    } catch (const Error&) {
      ++rejected;
    }
  }
  EXPECT_GT(rejected, 0);
}

// ---- atomic writes --------------------------------------------------------------------------

TEST_F(IoTest, AtomicWriteKeepsTheOldFileWhenTheWriterFails) {
  write_raw(file("keep.txt"), "old contents");
  EXPECT_THROW(write_file_atomically(file("keep.txt"),
                                     [](std::FILE* stream) {
                                       std::fputs("partial", stream);
                                       throw Error("writer failed");
                                     }),
               Error);
  std::ifstream in(file("keep.txt"));
  EXPECT_EQ(std::string((std::istreambuf_iterator<char>(in)), {}), "old contents");
  std::size_t leftovers = 0;
  for (const auto& entry : fs::directory_iterator(dir_))
    leftovers += entry.path().filename() != "keep.txt";
  EXPECT_EQ(leftovers, 0u) << "the temporary file was not removed";
  try {
    write_file_atomically(dir_ / "no-such-dir" / "f", [](std::FILE*) {});
    FAIL();
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("no-such-dir"), std::string::npos);
  }
}

}  // namespace
}  // namespace crosscoder::io
