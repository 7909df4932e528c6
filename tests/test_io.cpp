// The io module: float16/bfloat16 conversions, atomic writes, safetensors and .npy reading and
// writing, on fresh random data and on hand-built valid and malformed files.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "crosscoder/error.hpp"
#include "crosscoder/io/half.hpp"
#include "crosscoder/io/npy.hpp"
#include "crosscoder/io/safetensors.hpp"
#include "io/atomic_file.hpp"

namespace crosscoder::io {
namespace {

namespace fs = std::filesystem;

// A fresh temporary directory per test, removed afterwards, and a random generator seeded
// from std::random_device (the seed is printed so a failure can be reproduced by hand).
class IoTempDirTest : public ::testing::Test {
 protected:
  IoTempDirTest() : seed_(std::random_device{}()), rng_(seed_) {
    dir_ = fs::temp_directory_path() /
           ("crosscoder-io-" + std::to_string(::getpid()) + "-" + std::to_string(rng_()));
    fs::create_directories(dir_);
  }
  ~IoTempDirTest() override {
    std::error_code ignored;
    fs::permissions(dir_, fs::perms::owner_all, fs::perm_options::add, ignored);
    fs::remove_all(dir_, ignored);
  }

  fs::path file(const std::string& name) const { return dir_ / name; }
  static void write_raw(const fs::path& path, const std::string& bytes) {
    // Removing first is much faster than truncating in place, which makes ext4 flush on close.
    fs::remove(path);
    std::ofstream(path, std::ios::binary)
        .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }
  static std::string read_raw(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), {}};
  }
  std::vector<std::int64_t> random_shape() {
    std::vector<std::int64_t> shape(rng_() % 4);
    for (auto& extent : shape) extent = static_cast<std::int64_t>(rng_() % 7);
    return shape;
  }

  std::uint32_t seed_;
  std::mt19937_64 rng_;
  fs::path dir_;
};

template <typename T>
std::string bytes_of(const std::vector<T>& values) {
  std::string out(values.size() * sizeof(T), '\0');
  if (!values.empty()) std::memcpy(out.data(), values.data(), out.size());
  return out;
}

// ---- float16 and bfloat16 -------------------------------------------------------------------

// The float64 value of a float16 bit pattern, from the definition.
double reference_half(std::uint16_t h) {
  const double sign = (h & 0x8000) ? -1.0 : 1.0;
  const int exponent = (h >> 10) & 0x1F, mantissa = h & 0x3FF;
  if (exponent == 0) return sign * std::ldexp(mantissa, -24);
  if (exponent == 31) return mantissa ? NAN : sign * INFINITY;
  return sign * std::ldexp(1024 + mantissa, exponent - 25);
}

// The float64 value of a bfloat16 bit pattern, from the definition.
double reference_bfloat16(std::uint16_t b) {
  const double sign = (b & 0x8000) ? -1.0 : 1.0;
  const int exponent = (b >> 7) & 0xFF, mantissa = b & 0x7F;
  if (exponent == 0) return sign * std::ldexp(mantissa, -133);
  if (exponent == 255) return mantissa ? NAN : sign * INFINITY;
  return sign * std::ldexp(128 + mantissa, exponent - 134);
}

// Round-to-nearest-even of a finite float into a binary format with `mantissa_bits` stored
// mantissa bits and minimum normal exponent `min_exponent`, by plain arithmetic: scale |x| by
// the format's spacing at x's binade (exact in double), round the quotient half to even, and
// lay out the bits. A quotient that rounds up to the next binade, or past the largest finite
// value, carries into the exponent field (giving inf) by the same addition.
std::uint16_t reference_round(double x, int mantissa_bits, int min_exponent, int bias) {
  const std::uint16_t sign = std::signbit(x) ? 0x8000 : 0;
  const double magnitude = std::fabs(x);
  if (magnitude == 0) return sign;
  int binade = std::ilogb(magnitude);                // floor(log2 |x|)
  if (binade < min_exponent) binade = min_exponent;  // subnormal range: fixed spacing
  const double spacing = std::ldexp(1.0, binade - mantissa_bits);
  const double quotient = magnitude / spacing;  // < 2^(mantissa_bits + 1), exact
  double rounded = std::floor(quotient);
  const double fraction = quotient - rounded;
  if (fraction > 0.5 || (fraction == 0.5 && std::fmod(rounded, 2.0) == 1.0)) rounded += 1;
  const auto q = static_cast<std::uint32_t>(rounded);
  const std::uint32_t implicit = 1u << mantissa_bits;
  if (q < implicit) return static_cast<std::uint16_t>(sign | q);  // subnormal (or zero)
  const std::uint32_t exponent_field = static_cast<std::uint32_t>(binade + bias);
  return static_cast<std::uint16_t>(sign | ((exponent_field << mantissa_bits) + (q - implicit)));
}

std::uint16_t reference_float_to_half(float x) {
  // From 2^16 up the exponent field would overflow; such values are past 65520 = 65504 plus
  // half a spacing, so round to infinity. (65520 up to 2^16 reach infinity by the carry.)
  if (std::fabs(x) >= 65536.0f) return std::signbit(x) ? 0xFC00 : 0x7C00;
  return reference_round(x, 10, -14, 15);
}

std::uint16_t reference_float_to_bfloat16(float x) { return reference_round(x, 7, -126, 127); }

// Floats on and next to every midpoint between adjacent 16-bit values, where rounding matters.
template <typename Decode>
std::vector<float> midpoints_and_neighbours(Decode decode) {
  std::vector<float> values;
  for (std::uint32_t bits = 0; bits < 0x7FFF; ++bits) {
    const double low = decode(static_cast<std::uint16_t>(bits));
    const double high = decode(static_cast<std::uint16_t>(bits + 1));
    if (!std::isfinite(low) || !std::isfinite(high)) continue;
    const auto middle = static_cast<float>((low + high) / 2);  // exact for these formats
    for (float v : {middle, std::nextafter(middle, 0.0f), std::nextafter(middle, INFINITY)}) {
      values.push_back(v);
      values.push_back(-v);
    }
  }
  return values;
}

std::vector<float> random_floats(std::size_t count) {
  std::mt19937 rng(std::random_device{}());
  std::vector<float> values;
  while (values.size() < count) {
    const auto value = std::bit_cast<float>(static_cast<std::uint32_t>(rng()));
    if (!std::isnan(value)) values.push_back(value);
  }
  return values;
}

TEST(HalfTest, EveryFloat16DecodesExactlyAndRoundTrips) {
  for (std::uint32_t bits = 0; bits < 65536; ++bits) {
    const auto h = static_cast<std::uint16_t>(bits);
    const double want = reference_half(h);
    const float got = half_to_float(h);
    if (std::isnan(want)) {
      ASSERT_TRUE(std::isnan(got)) << bits;
      ASSERT_TRUE(std::isnan(half_to_float(float_to_half(got)))) << bits;
      continue;
    }
    ASSERT_EQ(static_cast<double>(got), want) << bits;
    ASSERT_EQ(std::signbit(got), (h & 0x8000) != 0) << bits;
    ASSERT_EQ(float_to_half(got), h) << bits;  // -0 and +0 stay distinct
  }
}

TEST(HalfTest, EveryBfloat16DecodesExactlyAndRoundTrips) {
  for (std::uint32_t bits = 0; bits < 65536; ++bits) {
    const auto b = static_cast<std::uint16_t>(bits);
    const double want = reference_bfloat16(b);
    const float got = bfloat16_to_float(b);
    if (std::isnan(want)) {
      ASSERT_TRUE(std::isnan(got)) << bits;
      ASSERT_TRUE(std::isnan(bfloat16_to_float(float_to_bfloat16(got)))) << bits;
      continue;
    }
    ASSERT_EQ(static_cast<double>(got), want) << bits;
    ASSERT_EQ(float_to_bfloat16(got), b) << bits;
  }
}

TEST(HalfTest, FloatToHalfMatchesPlainArithmeticRounding) {
  std::vector<float> values = midpoints_and_neighbours(reference_half);
  const std::vector<float> random = random_floats(1'000'000);
  values.insert(values.end(), random.begin(), random.end());
  for (float v :
       {0.0f, -0.0f, 65504.0f, 65519.996f, 65520.0f, 1e30f, INFINITY, -INFINITY,
        std::ldexp(1.0f, -24), std::ldexp(1.0f, -25), std::ldexp(1.5f, -25), std::ldexp(1.0f, -14),
        std::numeric_limits<float>::denorm_min(), std::numeric_limits<float>::max()}) {
    values.push_back(v);
    values.push_back(-v);
  }
  for (float v : values) {
    ASSERT_EQ(float_to_half(v), reference_float_to_half(v)) << "value " << v;
  }
  const std::uint16_t nan = float_to_half(NAN);
  EXPECT_EQ(nan & 0x7C00, 0x7C00);
  EXPECT_NE(nan & 0x03FF, 0);
  // A NaN whose payload lies only in the bits float16 drops must not become infinity.
  EXPECT_TRUE(std::isnan(half_to_float(float_to_half(std::bit_cast<float>(0x7F800001u)))));
}

TEST(HalfTest, FloatToBfloat16MatchesPlainArithmeticRounding) {
  std::vector<float> values = midpoints_and_neighbours(reference_bfloat16);
  const std::vector<float> random = random_floats(1'000'000);
  values.insert(values.end(), random.begin(), random.end());
  for (float v : {0.0f, -0.0f, INFINITY, std::numeric_limits<float>::max(),
                  std::numeric_limits<float>::denorm_min(), std::numeric_limits<float>::min()}) {
    values.push_back(v);
    values.push_back(-v);
  }
  for (float v : values) {
    if (std::isinf(v)) {
      ASSERT_EQ(float_to_bfloat16(v), v > 0 ? 0x7F80 : 0xFF80);
      continue;
    }
    ASSERT_EQ(float_to_bfloat16(v), reference_float_to_bfloat16(v)) << "value " << v;
  }
  EXPECT_TRUE(std::isnan(bfloat16_to_float(float_to_bfloat16(NAN))));
  EXPECT_TRUE(std::isnan(bfloat16_to_float(float_to_bfloat16(std::bit_cast<float>(0x7F800001u)))));
}

// ---- atomic writes --------------------------------------------------------------------------

class AtomicFileTest : public IoTempDirTest {
 protected:
  std::size_t entries_in_dir() const {
    return static_cast<std::size_t>(std::distance(fs::directory_iterator(dir_), {}));
  }
  std::string error_of(const fs::path& path) {
    try {
      write_file_atomically(path, [](std::FILE* stream) { std::fputs("new", stream); });
    } catch (const Error& error) {
      return error.what();
    }
    return "no error";
  }
};

TEST_F(AtomicFileTest, WritesAndReplacesWithUmaskPermissionsAndNoLeftovers) {
  const std::string contents = std::to_string(rng_());
  write_file_atomically(file("f.txt"), [&](std::FILE* stream) {
    write_bytes(stream, contents.data(), contents.size(), file("f.txt"));
  });
  EXPECT_EQ(read_raw(file("f.txt")), contents);
  write_file_atomically(file("f.txt"), [](std::FILE* stream) { std::fputs("second", stream); });
  EXPECT_EQ(read_raw(file("f.txt")), "second");
  EXPECT_EQ(entries_in_dir(), 1u) << "a temporary file was left behind";

  const mode_t mask = ::umask(0);
  ::umask(mask);
  struct stat status {};
  ASSERT_EQ(::stat(file("f.txt").c_str(), &status), 0);
  EXPECT_EQ(static_cast<unsigned>(status.st_mode & 0777u), 0666u & ~static_cast<unsigned>(mask));
}

TEST_F(AtomicFileTest, LeavesTheOldFileIntactWhenTheWriterThrows) {
  write_raw(file("keep.txt"), "old contents");
  EXPECT_THROW(write_file_atomically(file("keep.txt"),
                                     [](std::FILE* stream) {
                                       std::fputs("partial", stream);
                                       throw Error("writer failed");
                                     }),
               Error);
  EXPECT_EQ(read_raw(file("keep.txt")), "old contents");
  EXPECT_EQ(entries_in_dir(), 1u) << "the temporary file was not removed";
  // Exceptions of other types pass through unchanged, with the same clean-up.
  EXPECT_THROW(
      write_file_atomically(file("keep.txt"), [](std::FILE*) { throw std::out_of_range("x"); }),
      std::out_of_range);
  EXPECT_EQ(read_raw(file("keep.txt")), "old contents");
  EXPECT_EQ(entries_in_dir(), 1u);
}

TEST_F(AtomicFileTest, ImpossibleTargetsGiveErrorsNamingThePathAndReason) {
  std::string message = error_of(dir_ / "no-such-dir" / "f");
  EXPECT_NE(message.find("no-such-dir"), std::string::npos) << message;
  EXPECT_NE(message.find("No such file or directory"), std::string::npos) << message;

  write_raw(file("plain"), "x");
  message = error_of(file("plain") / "f");  // the "directory" is a regular file
  EXPECT_NE(message.find("plain"), std::string::npos) << message;
  EXPECT_NE(message.find("Not a directory"), std::string::npos) << message;

  fs::create_directory(file("a-directory"));
  message = error_of(file("a-directory"));  // cannot rename a file over a directory
  EXPECT_NE(message.find("a-directory"), std::string::npos) << message;
  EXPECT_NE(message.find("cannot replace"), std::string::npos) << message;
  EXPECT_TRUE(fs::is_directory(file("a-directory")));
  EXPECT_EQ(entries_in_dir(), 2u) << "the temporary file was not removed";

  if (::geteuid() != 0) {  // root ignores directory permissions
    fs::create_directory(file("read-only"));
    fs::permissions(file("read-only"), fs::perms::owner_read | fs::perms::owner_exec);
    message = error_of(file("read-only") / "f");
    EXPECT_NE(message.find("read-only"), std::string::npos) << message;
    EXPECT_NE(message.find("Permission denied"), std::string::npos) << message;
  }
}

// ---- safetensors ----------------------------------------------------------------------------

class SafetensorsTest : public IoTempDirTest {
 protected:
  static std::string with_length(const std::string& header, const std::string& data) {
    std::string out(8, '\0');
    const std::uint64_t n = header.size();
    for (int i = 0; i < 8; ++i) out[static_cast<std::size_t>(i)] = static_cast<char>(n >> (8 * i));
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
};

// Random bytes that are valid values of `dtype`, and what read_float / read_int must return.
struct RandomTensor {
  std::string bytes;
  std::vector<float> as_float;
  std::vector<std::int64_t> as_int;
};

RandomTensor random_tensor(DType dtype, std::size_t n, std::mt19937_64& rng) {
  RandomTensor t;
  std::normal_distribution<double> normal(0.0, 100.0);
  const auto integers = [&]<typename T>(T /*type tag*/) {
    std::vector<T> values(n);
    for (T& v : values) {
      v = static_cast<T>(rng());
      if (dtype == DType::BOOL) v = static_cast<T>(v & 1);
      t.as_int.push_back(static_cast<std::int64_t>(v));
    }
    t.bytes = bytes_of(values);
  };
  switch (dtype) {
    case DType::F32: {
      std::vector<float> values(n);
      for (float& v : values) v = static_cast<float>(normal(rng));
      t.as_float = values;
      t.bytes = bytes_of(values);
      break;
    }
    case DType::F64: {
      std::vector<double> values(n);
      for (double& v : values) v = normal(rng);
      for (double v : values) t.as_float.push_back(static_cast<float>(v));
      t.bytes = bytes_of(values);
      break;
    }
    case DType::F16:
    case DType::BF16: {
      std::vector<std::uint16_t> values(n);
      for (auto& v : values) {
        const auto x = static_cast<float>(normal(rng));
        v = dtype == DType::F16 ? float_to_half(x) : float_to_bfloat16(x);
        t.as_float.push_back(dtype == DType::F16 ? half_to_float(v) : bfloat16_to_float(v));
      }
      t.bytes = bytes_of(values);
      break;
    }
    case DType::I64:
      integers(std::int64_t{});
      break;
    case DType::I32:
      integers(std::int32_t{});
      break;
    case DType::I16:
      integers(std::int16_t{});
      break;
    case DType::I8:
      integers(std::int8_t{});
      break;
    case DType::U8:
    case DType::BOOL:
      integers(std::uint8_t{});
      break;
  }
  return t;
}

constexpr DType kAllDTypes[] = {DType::F32, DType::F16, DType::BF16, DType::F64, DType::I64,
                                DType::I32, DType::I16, DType::I8,   DType::U8,  DType::BOOL};

TEST_F(SafetensorsTest, RoundTripsEveryDTypeOnRandomData) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  struct Written {
    std::string name;
    DType dtype;
    std::vector<std::int64_t> shape;
    RandomTensor tensor;
  };
  std::vector<Written> written;
  SafetensorsWriter writer;
  for (int repeat = 0; repeat < 3; ++repeat) {
    for (DType dtype : kAllDTypes) {
      std::vector<std::int64_t> shape = random_shape();
      std::size_t n = 1;
      for (auto extent : shape) n *= static_cast<std::size_t>(extent);
      Written w{std::string(to_string(dtype)) + "." + std::to_string(repeat), dtype, shape,
                random_tensor(dtype, n, rng_)};
      writer.add_raw(w.name, dtype, shape, std::as_bytes(std::span(w.tensor.bytes)));
      written.push_back(std::move(w));
    }
  }
  const std::vector<float> floats = random_tensor(DType::F32, 6, rng_).as_float;
  const std::vector<std::int64_t> ints = random_tensor(DType::I64, 5, rng_).as_int;
  writer.add_float("via add_float", {2, 3}, floats);
  writer.add_int64("via add_int64", {5}, ints);
  const std::string value = std::to_string(rng_()) + " \"quoted\" ünïcode";
  writer.set_metadata("value", value);
  writer.write(file("all.safetensors"));

  const SafetensorsFile f = SafetensorsFile::open(file("all.safetensors"));
  std::vector<std::string> names;
  for (const Written& w : written) {
    names.push_back(w.name);
    const TensorInfo& info = f.info(w.name);
    EXPECT_EQ(info.dtype, w.dtype) << w.name;
    EXPECT_EQ(info.shape, w.shape) << w.name;
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(info.data.data()), info.data.size()),
              w.tensor.bytes)
        << w.name;
    const bool floating = w.dtype == DType::F32 || w.dtype == DType::F64 || w.dtype == DType::F16 ||
                          w.dtype == DType::BF16;
    if (floating) {
      EXPECT_EQ(f.read_float(w.name, w.shape), w.tensor.as_float) << w.name;
      EXPECT_THROW(f.read_int(w.name), Error);
    } else {
      EXPECT_EQ(f.read_int(w.name), w.tensor.as_int) << w.name;
      EXPECT_THROW(f.read_float(w.name), Error);
    }
  }
  names.push_back("via add_float");
  names.push_back("via add_int64");
  EXPECT_EQ(f.names(), names);  // insertion order is data order
  EXPECT_EQ(f.read_float("via add_float", {2, 3}), floats);
  EXPECT_EQ(f.read_int("via add_int64"), ints);
  EXPECT_EQ(f.metadata().at("value"), value);
  EXPECT_TRUE(f.contains("via add_float"));
  EXPECT_FALSE(f.contains("absent"));

  // The header is padded so the data section, and so the first tensor, is 8-byte aligned.
  const std::string raw = read_raw(file("all.safetensors"));
  std::uint64_t header_length = 0;
  std::memcpy(&header_length, raw.data(), 8);
  EXPECT_EQ(header_length % 8, 0u);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(f.info(written[0].name).data.data()) % 8, 0u);
}

TEST_F(SafetensorsTest, ReadsAHandBuiltFileAndOrdersNamesByOffset) {
  // "b" is listed first but its data comes second.
  const std::string header =
      R"({"b":{"dtype":"I32","shape":[],"data_offsets":[8,12]},)"
      R"("__metadata__":{"format":"pt"},)"
      R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
      R"("z":{"dtype":"F16","shape":[0,3],"data_offsets":[12,12], "extra": [1]}}   )";
  const std::vector<float> a = {1.5f, -2.25f};
  const std::vector<std::int32_t> b = {-7};
  write_raw(file("hand.safetensors"), with_length(header, bytes_of(a) + bytes_of(b)));
  const SafetensorsFile f = SafetensorsFile::open(file("hand.safetensors"));
  EXPECT_EQ(f.names(), (std::vector<std::string>{"a", "b", "z"}));
  EXPECT_EQ(f.read_float("a", {2}), a);
  EXPECT_EQ(f.read_int("b"), std::vector<std::int64_t>{-7});
  EXPECT_EQ(f.info("b").elements(), 1);
  EXPECT_TRUE(f.read_float("z", {0, 3}).empty());
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(element_size(DType::BF16), 2u);
  EXPECT_EQ(to_string(DType::BOOL), "BOOL");

  const auto message = [&](auto read) {
    try {
      read();
    } catch (const Error& error) {
      return std::string(error.what());
    }
    return std::string("no error");
  };
  const std::string shape_error = message([&] { f.read_float("a", {1, 2}); });
  for (const char* part : {"hand.safetensors", "'a'", "[2]", "[1, 2]"})
    EXPECT_NE(shape_error.find(part), std::string::npos) << shape_error;
  const std::string missing = message([&] { f.info("missing"); });
  EXPECT_NE(missing.find("'missing'"), std::string::npos) << missing;
  EXPECT_NE(missing.find("hand.safetensors"), std::string::npos) << missing;
  EXPECT_NE(message([&] { f.read_float("b"); }).find("I32"), std::string::npos);

  // An empty file of tensors is valid, with or without a null __metadata__.
  EXPECT_EQ(error_of(with_length("{}", "")), "no error");
  EXPECT_EQ(error_of(with_length(R"({"__metadata__":null})", "")), "no error");
}

TEST_F(SafetensorsTest, MalformedFilesGiveErrorsThatNameTheProblem) {
  const std::string ok = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  const std::string eight(8, '\1');
  ASSERT_EQ(error_of(with_length(ok, eight)), "no error");
  const auto two = [](const std::string& first, const std::string& second) {
    return R"({"a":{"dtype":"F32","shape":[1],"data_offsets":)" + first +
           R"(},"b":{"dtype":"F32","shape":[1],"data_offsets":)" + second + "}}";
  };
  const auto one = [](const std::string& fields) { return R"({"a":{)" + fields + "}}"; };
  const struct {
    std::string bytes;
    std::string expected;
  } cases[] = {
      {"", "too short"},
      {"abc", "too short"},
      {with_length(ok, eight).substr(0, 20), "runs past the end of the file"},
      {std::string("\x00\x00\x00\x00\x00\x00\x00\x01", 8) + ok, "exceeds the 100000000 byte"},
      {with_length("{not json}", ""), "not valid JSON"},
      {with_length("[1, 2]", ""), "not a JSON object"},
      {with_length("", ""), "not a JSON object"},
      {with_length(" " + ok, eight), "not a JSON object"},
      {with_length("{\"\xff\":1}", ""), "not valid JSON"},  // not UTF-8
      {with_length(R"({"a":[1]})", ""), "tensor 'a': entry is not an object"},
      {with_length(one(R"("dtype":"Q8","shape":[2],"data_offsets":[0,8])"), eight),
       "unsupported dtype 'Q8'"},
      {with_length(one(R"("shape":[2],"data_offsets":[0,8])"), eight), "dtype missing"},
      {with_length(one(R"("dtype":"F32","shape":[-2],"data_offsets":[0,8])"), eight),
       "non-negative integers"},
      {with_length(one(R"("dtype":"F32","shape":[2.0],"data_offsets":[0,8])"), eight),
       "non-negative integers"},
      {with_length(one(R"("dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,8])"),
                   eight),
       "too large"},
      {with_length(one(R"("dtype":"F32","shape":[2])"), eight), "data_offsets must be"},
      {with_length(one(R"("dtype":"F32","shape":[2],"data_offsets":[0,4,8])"), eight),
       "data_offsets must be"},
      {with_length(one(R"("dtype":"F32","shape":[2],"data_offsets":[0,-8])"), eight),
       "non-negative integers"},
      {with_length(one(R"("dtype":"F32","shape":[2],"data_offsets":[8,0])"), eight), "reversed"},
      {with_length(one(R"("dtype":"F32","shape":[3],"data_offsets":[0,8])"), eight),
       "span 8 bytes but dtype F32 × shape [3] needs 12"},
      {with_length(two("[0,4]", "[8,12]"), std::string(12, '\0')), "must be contiguous"},
      {with_length(two("[0,4]", "[0,4]"), eight), "must not overlap"},
      {with_length(one(R"("dtype":"F32","shape":[2],"data_offsets":[4,12])"), eight + "xxxx"),
       "must be contiguous"},
      {with_length(one(R"("dtype":"F32","shape":[4],"data_offsets":[0,16])"), eight),
       "data section has only 8 bytes"},
      {with_length(ok, eight + "xx"), "trailing bytes"},
      {with_length(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                   R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
                   eight),
       "tensor 'a' appears twice"},
      {with_length(one(R"("dtype":"F32","dtype":"F16","shape":[2],"data_offsets":[0,8])"), eight),
       "key 'dtype' appears twice"},
      {with_length(R"({"__metadata__":{"k":1},"a":{"dtype":"F32","shape":[2],)"
                   R"("data_offsets":[0,8]}})",
                   eight),
       "value of 'k' is not a string"},
      {with_length(R"({"__metadata__":["k"]})", ""), "__metadata__ is not an object"},
  };
  for (const auto& c : cases) {
    const std::string message = error_of(c.bytes);
    EXPECT_NE(message.find(c.expected), std::string::npos)
        << "expected '" << c.expected << "' in: " << message;
    EXPECT_NE(message.find("t.safetensors"), std::string::npos) << message;
  }
  // A missing file names its path.
  try {
    SafetensorsFile::open(file("absent.safetensors"));
    FAIL();
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("absent.safetensors"), std::string::npos);
  }
}

TEST_F(SafetensorsTest, WriterRejectsBadTensors) {
  const auto message = [](auto add) {
    try {
      add();
    } catch (const Error& error) {
      return std::string(error.what());
    }
    return std::string("no error");
  };
  SafetensorsWriter writer;
  writer.add_float("a", {2}, std::vector<float>{1, 2});
  EXPECT_NE(message([&] {
              writer.add_float("a", {2}, std::vector<float>{1, 2});
            }).find("twice"),
            std::string::npos);
  EXPECT_NE(message([&] {
              writer.add_float("b", {3}, std::vector<float>{1, 2});
            }).find("'b' of dtype F32 and shape [3] needs 12 bytes, got 8"),
            std::string::npos);
  EXPECT_NE(message([&] { writer.add_float("c", {-1}, std::vector<float>{}); }).find("negative"),
            std::string::npos);
  EXPECT_NE(message([&] {
              const std::int64_t big = std::int64_t{1} << 62;
              writer.add_float("d", {big, big}, std::vector<float>{});
            }).find("needs more than 2^64 bytes"),
            std::string::npos);
  EXPECT_THROW(writer.add_float("__metadata__", {1}, std::vector<float>{1}), Error);
  EXPECT_THROW(writer.add_float("", {1}, std::vector<float>{1}), Error);

  // A name that is not UTF-8 cannot go into the JSON header: an Error, and no file.
  writer.add_float("bad\xff", {1}, std::vector<float>{1});
  const std::string bad = message([&] { writer.write(file("bad.safetensors")); });
  EXPECT_NE(bad.find("bad.safetensors"), std::string::npos) << bad;
  EXPECT_FALSE(fs::exists(file("bad.safetensors")));
}

// Mutates a valid file: overwritten, inserted and deleted bytes, truncation.
std::string mutate(std::string bytes, std::mt19937_64& rng) {
  const int edits = 1 + static_cast<int>(rng() % 4);
  for (int e = 0; e < edits && !bytes.empty(); ++e) {
    const std::size_t at = rng() % bytes.size();
    switch (rng() % 4) {
      case 0:
        bytes[at] = static_cast<char>(rng());
        break;
      case 1:
        bytes.insert(at, 1, static_cast<char>(rng()));
        break;
      case 2:
        bytes.erase(at, 1 + rng() % 4);
        break;
      default:
        bytes.resize(at);
        break;
    }
  }
  return bytes;
}

TEST_F(SafetensorsTest, RandomlyMutatedFilesParseOrThrowButNeverCrash) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  SafetensorsWriter writer;
  writer.add_float("a", {4, 3}, std::vector<float>(12, 1.5f));
  writer.add_int64("b", {2}, std::vector<std::int64_t>{1, 2});
  const std::vector<std::uint16_t> zeros(3);
  writer.add_raw("c", DType::BF16, {3}, std::as_bytes(std::span(zeros)));
  writer.set_metadata("m", "v");
  writer.write(file("base.safetensors"));
  const std::string base = read_raw(file("base.safetensors"));
  int parsed = 0, rejected = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    write_raw(file("m.safetensors"), mutate(base, rng_));
    try {
      const SafetensorsFile f = SafetensorsFile::open(file("m.safetensors"));
      for (const std::string& name : f.names()) {
        const TensorInfo& info = f.info(name);
        const auto n = static_cast<std::size_t>(info.elements());
        ASSERT_EQ(info.data.size(), n * element_size(info.dtype));
        try {
          EXPECT_EQ(f.read_float(name).size(), n);
        } catch (const Error&) {
          EXPECT_EQ(f.read_int(name).size(), n);
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

class NpyTest : public IoTempDirTest {
 protected:
  std::string error_of(const std::string& bytes) {
    write_raw(file("x.npy"), bytes);
    try {
      NpyFile::open(file("x.npy"));
    } catch (const Error& error) {
      return error.what();
    }
    return "no error";
  }
};

// A .npy file written by hand, the header padded as numpy.save pads it.
std::string npy_bytes(int major, const std::string& header, const std::string& data) {
  std::string out = std::string("\x93NUMPY", 6) + static_cast<char>(major) + '\0';
  const std::size_t length_field = major == 1 ? 2 : 4;
  std::string padded = header;
  padded.append((64 - (out.size() + length_field + padded.size() + 1) % 64) % 64, ' ');
  padded += '\n';
  const auto n = static_cast<std::uint32_t>(padded.size());
  for (std::size_t i = 0; i < length_field; ++i) out += static_cast<char>(n >> (8 * i));
  return out + padded + data;
}

std::string dict(const std::string& descr, const std::string& shape) {
  return "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + shape + ", }";
}

TEST_F(NpyTest, WriterAndReaderRoundTripRandomArrays) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  std::normal_distribution<float> normal;
  for (int trial = 0; trial < 20; ++trial) {
    const std::vector<std::int64_t> drawn = random_shape();
    const std::vector<std::size_t> shape(drawn.begin(), drawn.end());
    std::size_t n = 1;
    for (std::size_t extent : shape) n *= extent;
    std::vector<float> values(n);
    for (float& v : values) v = normal(rng_);
    write_npy(file("a.npy"), shape, values);
    const NpyFile f = NpyFile::open(file("a.npy"));
    EXPECT_EQ(f.shape(), shape);
    EXPECT_EQ(f.descr(), "<f4");
    EXPECT_EQ(f.rows() * f.row_width(), n);
    std::vector<float> back(n);
    f.read_rows_float(0, f.rows(), back.data());
    EXPECT_EQ(back, values);
    // The data starts on a 64-byte boundary, as numpy.save writes it.
    EXPECT_EQ((fs::file_size(file("a.npy")) - n * 4) % 64, 0u);

    std::vector<std::int32_t> ints(n);
    for (auto& v : ints) v = static_cast<std::int32_t>(rng_());
    write_npy(file("i.npy"), shape, ints);
    const NpyFile g = NpyFile::open(file("i.npy"));
    EXPECT_EQ(g.descr(), "<i4");
    EXPECT_EQ(g.read_int(), std::vector<std::int64_t>(ints.begin(), ints.end()));
  }
  EXPECT_THROW(write_npy(file("bad.npy"), {2, 3}, std::vector<float>(5)), Error);
  EXPECT_FALSE(fs::exists(file("bad.npy")));
}

TEST_F(NpyTest, ReadsRowRangesAndChecksBounds) {
  std::vector<float> a(17 * 9);
  for (std::size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(i) + 0.5f;
  write_npy(file("a.npy"), {17, 9}, a);
  const NpyFile f = NpyFile::open(file("a.npy"));
  EXPECT_EQ(f.rows(), 17u);
  EXPECT_EQ(f.row_width(), 9u);
  std::vector<float> two(18);
  f.read_rows_float(5, 2, two.data());
  EXPECT_EQ(std::vector<float>(a.begin() + 45, a.begin() + 63), two);
  f.read_rows_float(17, 0, two.data());  // an empty range at the end is fine
  EXPECT_THROW(f.read_rows_float(16, 2, two.data()), Error);
  EXPECT_THROW(f.read_rows_float(18, 0, two.data()), Error);
  EXPECT_THROW(f.read_rows_float(1, SIZE_MAX, two.data()), Error);
  EXPECT_THROW(f.read_int(), Error);
}

TEST_F(NpyTest, ReadsHandWrittenVersions1To3AndEveryDType) {
  std::uniform_real_distribution<float> uniform(-4.0f, 4.0f);
  std::vector<std::uint16_t> halves(6), brains(6);
  std::vector<float> want_half, want_bf16;
  for (int i = 0; i < 6; ++i) {
    const float x = uniform(rng_);
    halves[static_cast<std::size_t>(i)] = float_to_half(x);
    brains[static_cast<std::size_t>(i)] = float_to_bfloat16(x);
    want_half.push_back(half_to_float(float_to_half(x)));
    want_bf16.push_back(bfloat16_to_float(float_to_bfloat16(x)));
  }
  const std::vector<double> doubles = {0.5, -1.25, 3.0, 1e-3, 7.0, -8.5};
  const std::vector<float> floats(doubles.begin(), doubles.end());
  for (int major : {1, 2, 3}) {
    SCOPED_TRACE("version " + std::to_string(major));
    const auto read_floats = [&](const std::string& descr, const std::string& data,
                                 NpyFloatOptions options = {}) {
      write_raw(file("v.npy"), npy_bytes(major, dict(descr, "(2, 3)"), data));
      const NpyFile f = NpyFile::open(file("v.npy"));
      EXPECT_EQ(f.shape(), (std::vector<std::size_t>{2, 3}));
      std::vector<float> got(6);
      f.read_rows_float(0, 2, got.data(), options);
      return got;
    };
    EXPECT_EQ(read_floats("<f4", bytes_of(floats)), floats);
    EXPECT_EQ(read_floats("<f2", bytes_of(halves)), want_half);
    EXPECT_EQ(read_floats("<f8", bytes_of(doubles)), floats);
    EXPECT_EQ(read_floats("<u2", bytes_of(brains), {.u2_as_bfloat16 = true}), want_bf16);
    EXPECT_THROW(read_floats("<u2", bytes_of(brains)), Error);  // not unless asked

    const auto read_ints = [&](const std::string& descr, const std::string& data) {
      write_raw(file("v.npy"), npy_bytes(major, dict(descr, "(3,)"), data));
      const NpyFile f = NpyFile::open(file("v.npy"));
      EXPECT_EQ(f.rows(), 3u);
      EXPECT_EQ(f.row_width(), 1u);
      std::vector<float> unused(3);
      EXPECT_THROW(f.read_rows_float(0, 3, unused.data()), Error);
      return f.read_int();
    };
    using Ints = std::vector<std::int64_t>;
    EXPECT_EQ(read_ints("<i8", bytes_of(std::vector<std::int64_t>{-1, 1ll << 40, 3})),
              (Ints{-1, 1ll << 40, 3}));
    EXPECT_EQ(read_ints("<i4", bytes_of(std::vector<std::int32_t>{-5, 0, 70000})),
              (Ints{-5, 0, 70000}));
    EXPECT_EQ(read_ints("<i2", bytes_of(std::vector<std::int16_t>{-5, 0, 300})),
              (Ints{-5, 0, 300}));
    EXPECT_EQ(read_ints("|i1", std::string("\xff\x00\x7f", 3)), (Ints{-1, 0, 127}));
    EXPECT_EQ(read_ints("|u1", std::string("\xff\x00\x7f", 3)), (Ints{255, 0, 127}));
    EXPECT_EQ(read_ints("|b1", std::string("\x01\x00\x01", 3)), (Ints{1, 0, 1}));
    EXPECT_EQ(read_ints("<u2", bytes_of(std::vector<std::uint16_t>{65535, 0, 1})),
              (Ints{65535, 0, 1}));
  }
}

TEST_F(NpyTest, HeaderSyntaxVariantsThatPythonAccepts) {
  const std::string data = bytes_of(std::vector<float>{1, 2, 3, 4, 5, 6});
  const std::string headers[] = {
      "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }",
      "{\"shape\": (2,3), \"fortran_order\": False, \"descr\": \"<f4\"}",
      "{ 'descr' : '<f4' , 'fortran_order' : False , 'shape' : ( 2 , 3 , ) }",
      "{'descr': '=f4', 'fortran_order': False, 'shape': (2L, 3L)}",
  };
  for (const std::string& header : headers) {
    EXPECT_EQ(error_of(npy_bytes(1, header, data)), "no error") << header;
    EXPECT_EQ(NpyFile::open(file("x.npy")).shape(), (std::vector<std::size_t>{2, 3})) << header;
    EXPECT_EQ(NpyFile::open(file("x.npy")).descr(), "<f4") << header;
  }
  // A 0-d array has one row of one element; a one-byte type may carry any order mark.
  EXPECT_EQ(error_of(npy_bytes(1, dict("<f4", "()"), data.substr(0, 4))), "no error");
  const NpyFile scalar = NpyFile::open(file("x.npy"));
  EXPECT_TRUE(scalar.shape().empty());
  EXPECT_EQ(scalar.rows() * scalar.row_width(), 1u);
  float one = 0;
  scalar.read_rows_float(0, 1, &one);
  EXPECT_EQ(one, 1.0f);
  EXPECT_EQ(error_of(npy_bytes(1, dict("<u1", "(3,)"), "abc")), "no error");
  EXPECT_EQ(NpyFile::open(file("x.npy")).descr(), "|u1");
}

TEST_F(NpyTest, UnsupportedOrBrokenFilesNameTheFileAndField) {
  const std::string floats(16, '\0');
  const struct {
    std::string bytes;
    std::string expected;
  } cases[] = {
      {"", "magic"},
      {"not numpy at all", "magic"},
      {std::string("\x93NUMPY\x01", 7), "truncated"},
      {std::string("\x93NUMPY\x02\x00\x10", 9), "truncated"},
      {npy_bytes(4, "{}", ""), "version 4.0"},
      {npy_bytes(1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }", floats),
       "field 'fortran_order' is True"},
      {npy_bytes(1, dict(">f4", "(2, 2)"), floats), "field 'descr': big-endian dtype '>f4'"},
      {npy_bytes(1, dict("<c8", "(2, 2)"), floats), "unsupported dtype '<c8'"},
      {npy_bytes(1, dict("|f4", "(2, 2)"), floats), "lacks a byte order"},
      {npy_bytes(1, dict("<f4", "(3, 2)"), floats), "need 24 data bytes but the file has 16"},
      {npy_bytes(1, dict("<f4", "(2, -2)"), floats), "(field 'shape')"},
      {npy_bytes(1, dict("<f4", "(2 2)"), floats), "(field 'shape')"},
      {npy_bytes(1, dict("<f4", "(99999999999999999999999, 2)"), floats), "overflows"},
      {npy_bytes(1, dict("<f4", "(4294967296, 4294967296, 4294967296)"), floats), "too large"},
      {npy_bytes(1, "{'descr': '<f4', 'shape': (2, 2), }", floats),
       "lacks the field 'fortran_order'"},
      {npy_bytes(1, "{'descr': '<f4', 'fortran_order': False}", floats), "lacks the field 'shape'"},
      {npy_bytes(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (4,), 'x': 1}", floats),
       "(field 'x')"},
      {npy_bytes(1, "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (4,)}",
                 floats),
       "appears twice"},
      {npy_bytes(1, "{'descr': '<f4' 'fortran_order': False, 'shape': (4,)}", floats),
       "expected ',' or '}'"},
      {npy_bytes(1, "{'descr': '<f4', 'fortran_order': Falsey, 'shape': (4,)}", floats),
       "expected True or False"},
      {npy_bytes(1, "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (4,)}", floats),
       "structured dtypes are not supported"},
      {npy_bytes(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (4,)} junk", floats),
       "unexpected text after the header"},
      {npy_bytes(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (4,", ""), "unexpected end"},
      {npy_bytes(1, "{'descr: '<f4'}", ""), "(field"},
  };
  for (const auto& c : cases) {
    const std::string message = error_of(c.bytes);
    EXPECT_NE(message.find(c.expected), std::string::npos)
        << "expected '" << c.expected << "' in: " << message;
    EXPECT_NE(message.find("x.npy"), std::string::npos) << message;
  }
  // A header length that runs past the end of the file.
  std::string cut = npy_bytes(1, dict("<f4", "(2, 2)"), floats);
  cut.resize(40);
  EXPECT_NE(error_of(cut).find("runs past the end"), std::string::npos) << error_of(cut);
}

TEST_F(NpyTest, HugeHeadersUseVersion2) {
  // 22000 dimensions of extent 1 need a header longer than version 1.0's 65535 bytes.
  const std::vector<std::size_t> shape(22000, 1);
  write_npy(file("wide.npy"), shape, std::vector<float>{42.0f});
  const std::string raw = read_raw(file("wide.npy"));
  ASSERT_GT(raw.size(), 12u);
  EXPECT_EQ(raw[6], 2);
  EXPECT_EQ((raw.size() - 4) % 64, 0u);
  const NpyFile f = NpyFile::open(file("wide.npy"));
  EXPECT_EQ(f.shape(), shape);
  float value = 0;
  f.read_rows_float(0, 1, &value);
  EXPECT_EQ(value, 42.0f);
  // A header that just fits stays version 1.0.
  write_npy(file("narrow.npy"), std::vector<std::size_t>(21000, 1), std::vector<float>{1.0f});
  EXPECT_EQ(read_raw(file("narrow.npy"))[6], 1);
}

TEST_F(NpyTest, RandomlyMutatedFilesParseOrThrowButNeverCrash) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const std::string base = npy_bytes(1, dict("<f4", "(4, 3)"), std::string(48, '\1'));
  int parsed = 0, rejected = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    write_raw(file("m.npy"), mutate(base, rng_));
    try {
      const NpyFile f = NpyFile::open(file("m.npy"));
      std::vector<float> out(f.rows() * f.row_width());
      try {
        f.read_rows_float(0, f.rows(), out.data(), {.u2_as_bfloat16 = true});
      } catch (const Error&) {
        EXPECT_EQ(f.read_int().size(), out.size());
      }
      ++parsed;
    } catch (const Error&) {
      ++rejected;
    }
  }
  EXPECT_GT(rejected, 0);
  EXPECT_GT(parsed, 0);
}

class SpecialFileTest : public IoTempDirTest {};

TEST_F(SpecialFileTest, AFifoOrADirectoryIsRefusedWithoutWaiting) {
  // Opening a FIFO for reading blocks until a writer comes, unless asked not to: the parsers
  // must refuse it at once instead of hanging.
  const fs::path fifo = file("activations.npy");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  for (const fs::path& path : {fifo, dir_}) {
    try {
      (void)NpyFile::open(path);
      ADD_FAILURE() << path << " was accepted";
    } catch (const Error& error) {
      EXPECT_NE(std::string(error.what()).find(path.string()), std::string::npos) << error.what();
    }
    EXPECT_THROW((void)SafetensorsFile::open(path), Error);
  }
}

}  // namespace
}  // namespace crosscoder::io
