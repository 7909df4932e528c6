#include "crosscoder/io/npy.hpp"

#include <fmt/format.h>

#include <cctype>
#include <cstring>
#include <optional>
#include <string_view>

#include "crosscoder/error.hpp"
#include "crosscoder/io/atomic_file.hpp"
#include "crosscoder/io/half.hpp"

namespace crosscoder::io {
namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr std::size_t kMagicLength = 6;

// A reader for the Python dict literal in a .npy header, e.g.
// {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }
class HeaderParser {
 public:
  HeaderParser(std::string_view text, std::string file) : text_(text), file_(std::move(file)) {}

  struct Header {
    std::optional<std::string> descr;
    std::optional<bool> fortran_order;
    std::optional<std::vector<std::size_t>> shape;
  };

  Header parse() {
    Header header;
    expect('{');
    while (true) {
      skip_space();
      if (peek() == '}') {
        ++position_;
        break;
      }
      const std::string key = string_literal();
      expect(':');
      if (key == "descr") {
        header.descr = string_literal();
      } else if (key == "fortran_order") {
        header.fortran_order = boolean();
      } else if (key == "shape") {
        header.shape = tuple();
      } else {
        throw error(fmt::format("unknown header key '{}'", key));
      }
      skip_space();
      if (peek() == ',') ++position_;
    }
    return header;
  }

 private:
  Error error(const std::string& what) const {
    return Error(fmt::format("{}: bad .npy header at character {}: {}", file_, position_, what));
  }
  void skip_space() {
    while (position_ < text_.size() && std::isspace(static_cast<unsigned char>(text_[position_])))
      ++position_;
  }
  char peek() {
    skip_space();
    if (position_ >= text_.size()) throw error("unexpected end");
    return text_[position_];
  }
  void expect(char c) {
    if (peek() != c) throw error(fmt::format("expected '{}'", c));
    ++position_;
  }
  std::string string_literal() {
    const char quote = peek();
    if (quote != '\'' && quote != '"') throw error("expected a quoted string");
    const std::size_t end = text_.find(quote, position_ + 1);
    if (end == std::string_view::npos) throw error("unterminated string");
    std::string value(text_.substr(position_ + 1, end - position_ - 1));
    position_ = end + 1;
    return value;
  }
  bool boolean() {
    skip_space();
    if (text_.substr(position_, 4) == "True") {
      position_ += 4;
      return true;
    }
    if (text_.substr(position_, 5) == "False") {
      position_ += 5;
      return false;
    }
    throw error("expected True or False");
  }
  std::vector<std::size_t> tuple() {
    expect('(');
    std::vector<std::size_t> values;
    while (peek() != ')') {
      if (!std::isdigit(static_cast<unsigned char>(peek())))
        throw error("shape entries must be non-negative integers");
      std::size_t value = 0;
      while (position_ < text_.size() &&
             std::isdigit(static_cast<unsigned char>(text_[position_]))) {
        const auto digit = static_cast<std::size_t>(text_[position_] - '0');
        if (value > (SIZE_MAX - digit) / 10) throw error("shape entry overflows");
        value = value * 10 + digit;
        ++position_;
      }
      values.push_back(value);
      if (peek() == ',') ++position_;
    }
    ++position_;
    return values;
  }

  std::string_view text_;
  std::string file_;
  std::size_t position_ = 0;
};

struct KnownDescr {
  std::string_view descr;
  std::size_t size;
};
constexpr KnownDescr kDescrs[] = {{"<f4", 4}, {"<f2", 2}, {"<f8", 8}, {"<i4", 4}, {"<i8", 8},
                                  {"|i1", 1}, {"|u1", 1}, {"<u2", 2}, {"|b1", 1}};

template <typename T>
T load(const std::byte* p) {
  T value;
  std::memcpy(&value, p, sizeof(T));
  return value;
}

std::string header_text(const std::string& descr, const std::vector<std::size_t>& shape) {
  std::string dims;
  for (std::size_t extent : shape) dims += fmt::format("{}, ", extent);
  if (shape.size() > 1) dims.resize(dims.size() - 2);  // (3, 4) but (3,) and ()
  if (shape.size() == 1) dims.resize(dims.size() - 1);
  return fmt::format("{{'descr': '{}', 'fortran_order': False, 'shape': ({}), }}", descr, dims);
}

void write_array(const std::filesystem::path& path, const std::vector<std::size_t>& shape,
                 const std::string& descr, std::span<const std::byte> data, std::size_t item_size) {
  std::size_t elements = 1;
  for (std::size_t extent : shape) elements *= extent;
  if (elements * item_size != data.size()) {
    throw Error(fmt::format("{}: shape needs {} elements but {} were given", path.string(),
                            elements, data.size() / item_size));
  }
  std::string header = header_text(descr, shape);
  // Version 1.0 has a 2-byte header length; pad magic + version + length + header + '\n' to 64.
  const bool version2 = header.size() + 1 + 10 > 65535;
  const std::size_t prefix = kMagicLength + 2 + (version2 ? 4 : 2);
  header.append((64 - (prefix + header.size() + 1) % 64) % 64, ' ');
  header.push_back('\n');
  write_file_atomically(path, [&](std::FILE* stream) {
    write_bytes(stream, kMagic, kMagicLength, path);
    const unsigned char version[2] = {static_cast<unsigned char>(version2 ? 2 : 1), 0};
    write_bytes(stream, version, 2, path);
    std::uint64_t length = header.size();
    unsigned char bytes[4];
    for (std::size_t i = 0; i < (version2 ? 4u : 2u); ++i) {
      bytes[i] = static_cast<unsigned char>(length & 0xFF);
      length >>= 8;
    }
    write_bytes(stream, bytes, version2 ? 4 : 2, path);
    write_bytes(stream, header.data(), header.size(), path);
    write_bytes(stream, data.data(), data.size(), path);
  });
}

}  // namespace

NpyFile NpyFile::open(const std::filesystem::path& path) {
  NpyFile result;
  result.file_ = MappedFile::open(path);
  const std::span<const std::byte> bytes = result.file_.bytes();
  const std::string file = path.string();
  if (bytes.size() < kMagicLength + 4 || std::memcmp(bytes.data(), kMagic, kMagicLength) != 0) {
    throw Error(fmt::format("{}: not a .npy file (missing the \\x93NUMPY magic)", file));
  }
  const auto major = std::to_integer<unsigned>(bytes[6]);
  std::size_t header_length = 0, header_start = 0;
  if (major == 1) {
    header_length =
        std::to_integer<std::size_t>(bytes[8]) | (std::to_integer<std::size_t>(bytes[9]) << 8);
    header_start = 10;
  } else if (major == 2 || major == 3) {
    if (bytes.size() < 12) throw Error(fmt::format("{}: truncated .npy header", file));
    for (int i = 3; i >= 0; --i)
      header_length = (header_length << 8) | std::to_integer<std::size_t>(bytes[8 + i]);
    header_start = 12;
  } else {
    throw Error(fmt::format("{}: unsupported .npy format version {}.{}", file, major,
                            std::to_integer<unsigned>(bytes[7])));
  }
  if (header_length > bytes.size() - header_start) {
    throw Error(fmt::format("{}: .npy header length {} runs past the end of the file", file,
                            header_length));
  }
  const std::string_view text(reinterpret_cast<const char*>(bytes.data() + header_start),
                              header_length);
  const HeaderParser::Header header = HeaderParser(text, file).parse();
  if (!header.descr || !header.fortran_order || !header.shape) {
    throw Error(fmt::format("{}: .npy header lacks {}", file,
                            !header.descr           ? "descr"
                            : !header.fortran_order ? "fortran_order"
                                                    : "shape"));
  }
  if (*header.fortran_order) {
    throw Error(fmt::format(
        "{}: Fortran-order arrays are not supported; save with np.ascontiguousarray", file));
  }
  std::string descr = *header.descr;
  if (!descr.empty() && descr[0] == '=') descr[0] = '<';  // native order on a little-endian host
  if (!descr.empty() && descr[0] == '>') {
    throw Error(fmt::format(
        "{}: big-endian dtype '{}' is not supported; convert with arr.astype('<f4')", file, descr));
  }
  const auto known = std::find_if(std::begin(kDescrs), std::end(kDescrs),
                                  [&](const KnownDescr& k) { return k.descr == descr; });
  if (known == std::end(kDescrs))
    throw Error(fmt::format("{}: unsupported dtype descr '{}'", file, *header.descr));
  result.descr_ = descr;
  result.item_size_ = known->size;
  result.shape_ = *header.shape;
  std::size_t needed = result.item_size_;
  for (std::size_t extent : result.shape_) {
    if (__builtin_mul_overflow(needed, extent, &needed))
      throw Error(fmt::format("{}: shape is too large", file));
  }
  const std::size_t available = bytes.size() - header_start - header_length;
  if (needed > available) {
    throw Error(
        fmt::format("{}: shape needs {} data bytes but the file has {}", file, needed, available));
  }
  result.data_ = bytes.subspan(header_start + header_length, needed);
  return result;
}

std::size_t NpyFile::rows() const noexcept { return shape_.empty() ? 1 : shape_[0]; }

std::size_t NpyFile::row_width() const noexcept {
  std::size_t width = 1;
  for (std::size_t i = 1; i < shape_.size(); ++i) width *= shape_[i];
  return width;
}

void NpyFile::read_rows_float(std::size_t first_row, std::size_t count, float* out) const {
  if (first_row > rows() || count > rows() - first_row) {
    throw Error(fmt::format("{}: rows [{}, {}) are out of range (the array has {} rows)",
                            path().string(), first_row, first_row + count, rows()));
  }
  const std::size_t n = count * row_width();
  if (n == 0) return;
  const std::byte* p = data_.data() + first_row * row_width() * item_size_;
  if (descr_ == "<f4") {
    std::memcpy(out, p, n * sizeof(float));
  } else if (descr_ == "<f2") {
    for (std::size_t i = 0; i < n; ++i) out[i] = half_to_float(load<std::uint16_t>(p + 2 * i));
  } else if (descr_ == "<f8") {
    for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<float>(load<double>(p + 8 * i));
  } else {
    throw Error(
        fmt::format("{}: dtype '{}' is not a floating-point type", path().string(), descr_));
  }
}

std::vector<std::int64_t> NpyFile::read_int() const {
  const std::size_t n = data_.size() / item_size_;
  std::vector<std::int64_t> out(n);
  const std::byte* p = data_.data();
  for (std::size_t i = 0; i < n; ++i) {
    if (descr_ == "<i4")
      out[i] = load<std::int32_t>(p + 4 * i);
    else if (descr_ == "<i8")
      out[i] = load<std::int64_t>(p + 8 * i);
    else if (descr_ == "|i1")
      out[i] = load<std::int8_t>(p + i);
    else if (descr_ == "|u1" || descr_ == "|b1")
      out[i] = load<std::uint8_t>(p + i);
    else if (descr_ == "<u2")
      out[i] = load<std::uint16_t>(p + 2 * i);
    else
      throw Error(fmt::format("{}: dtype '{}' is not an integer type", path().string(), descr_));
  }
  return out;
}

void write_npy(const std::filesystem::path& path, const std::vector<std::size_t>& shape,
               std::span<const float> data) {
  write_array(path, shape, "<f4", std::as_bytes(data), sizeof(float));
}

void write_npy(const std::filesystem::path& path, const std::vector<std::size_t>& shape,
               std::span<const std::int32_t> data) {
  write_array(path, shape, "<i4", std::as_bytes(data), sizeof(std::int32_t));
}

}  // namespace crosscoder::io
