#include "crosscoder/io/npy.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cctype>
#include <cstdint>
#include <cstring>
#include <optional>
#include <set>
#include <string_view>
#include <tuple>
#include <utility>

#include "crosscoder/error.hpp"
#include "crosscoder/io/half.hpp"
#include "io/atomic_file.hpp"

namespace crosscoder::io {

// Data is copied to and from memory as it is; only little-endian dtypes are accepted.
static_assert(std::endian::native == std::endian::little, ".npy I/O assumes little-endian");

namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr std::size_t kMagicLength = 6;
constexpr std::size_t kAlignment = 64;  // numpy.save starts the data at a multiple of this

struct NpyHeader {
  std::optional<std::string> descr;
  std::optional<bool> fortran_order;
  std::optional<std::vector<std::size_t>> shape;
};

// Reads the Python dict literal of a .npy header, e.g.
//   {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }
// accepting what NumPy writes and Python would parse: either quote style, trailing commas,
// tuples such as (3,) and (), keys in any order, and Python 2 long integers (3L).
class HeaderParser {
 public:
  HeaderParser(std::string_view text, const std::string& file) : text_(text), file_(file) {}

  NpyHeader parse() {
    NpyHeader header;
    std::set<std::string> seen;
    expect('{', "the header dict");
    while (peek() != '}') {
      const std::string key = string_literal("a key");
      field_ = key;
      if (!seen.insert(key).second) throw error("the key appears twice");
      expect(':', "a ':'");
      if (key == "descr") {
        header.descr = string_literal("a dtype string (structured dtypes are not supported)");
      } else if (key == "fortran_order") {
        header.fortran_order = boolean();
      } else if (key == "shape") {
        header.shape = tuple();
      } else {
        throw error("unknown key");
      }
      if (peek() != ',') break;
      ++position_;
    }
    field_.clear();
    expect('}', "',' or '}'");
    skip_space();
    if (position_ != text_.size()) throw error("unexpected text after the header dict");
    return header;
  }

 private:
  Error error(const std::string& what) const {
    return Error(fmt::format("{}: bad .npy header{} at character {}: {}", file_,
                             field_.empty() ? "" : fmt::format(" (field '{}')", field_), position_,
                             what));
  }
  void skip_space() {
    while (position_ < text_.size() && std::isspace(static_cast<unsigned char>(text_[position_])))
      ++position_;
  }
  char peek() {
    skip_space();
    if (position_ >= text_.size()) throw error("unexpected end of the header");
    return text_[position_];
  }
  void expect(char c, std::string_view what) {
    if (peek() != c) throw error(fmt::format("expected {}", what));
    ++position_;
  }
  bool identifier_char(std::size_t at) const {
    return at < text_.size() &&
           (std::isalnum(static_cast<unsigned char>(text_[at])) || text_[at] == '_');
  }
  std::string string_literal(std::string_view what) {
    const char quote = peek();
    if (quote != '\'' && quote != '"') throw error(fmt::format("expected {}", what));
    const std::size_t end = text_.find(quote, position_ + 1);
    if (end == std::string_view::npos) throw error("unterminated string");
    std::string value(text_.substr(position_ + 1, end - position_ - 1));
    position_ = end + 1;
    return value;
  }
  bool boolean() {
    skip_space();
    for (const auto& [word, value] :
         {std::pair{std::string_view("True"), true}, std::pair{std::string_view("False"), false}}) {
      if (text_.substr(position_, word.size()) == word &&
          !identifier_char(position_ + word.size())) {
        position_ += word.size();
        return value;
      }
    }
    throw error("expected True or False");
  }
  std::vector<std::size_t> tuple() {
    expect('(', "a tuple of non-negative integers");
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
      if (position_ < text_.size() && (text_[position_] == 'L' || text_[position_] == 'l'))
        ++position_;  // Python 2 long
      values.push_back(value);
      if (peek() != ',') break;
      ++position_;
    }
    expect(')', "',' or ')' in the shape tuple");
    return values;
  }

  std::string_view text_;
  const std::string& file_;
  std::string field_;  // the key whose value is being read, for error messages
  std::size_t position_ = 0;
};

// The element types we know, by descr without its byte-order mark.
struct KnownType {
  std::string_view type;
  std::size_t size;
};
constexpr KnownType kTypes[] = {{"f4", 4}, {"f2", 2}, {"f8", 8}, {"i8", 8}, {"i4", 4},
                                {"i2", 2}, {"i1", 1}, {"u1", 1}, {"u2", 2}, {"b1", 1}};

// Validates `descr` and returns it normalised ('<' for multi-byte types, '|' for single bytes)
// with its item size.
std::pair<std::string, std::size_t> normalise_descr(const std::string& descr,
                                                    const std::string& file) {
  const auto known = std::find_if(std::begin(kTypes), std::end(kTypes), [&](const KnownType& k) {
    return descr.size() == 3 && descr.substr(1) == k.type;
  });
  if (known == std::end(kTypes) || std::string_view("<>=|").find(descr[0]) == std::string::npos) {
    throw Error(fmt::format(
        "{}: .npy field 'descr': unsupported dtype '{}' (supported: little-endian f4, f2, f8, "
        "i8, i4, i2, i1, u1, u2, b1)",
        file, descr));
  }
  if (known->size == 1) return {fmt::format("|{}", known->type), 1};
  if (descr[0] == '>') {
    throw Error(
        fmt::format("{}: .npy field 'descr': big-endian dtype '{}' is not supported; convert with "
                    "arr.astype('<{}')",
                    file, descr, known->type));
  }
  if (descr[0] == '|') {
    throw Error(fmt::format("{}: .npy field 'descr': dtype '{}' lacks a byte order", file, descr));
  }
  return {fmt::format("<{}", known->type), known->size};  // '=' is native: little-endian here
}

template <typename T>
T load(const std::byte* p) {
  T value;
  std::memcpy(&value, p, sizeof(T));
  return value;
}

std::string header_text(const std::string& descr, const std::vector<std::size_t>& shape) {
  std::string dims;
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) dims += ", ";
    dims += std::to_string(shape[i]);
  }
  if (shape.size() == 1) dims += ',';  // (3,) is a tuple, (3) would not be
  return fmt::format("{{'descr': '{}', 'fortran_order': False, 'shape': ({}), }}", descr, dims);
}

void write_array(const std::filesystem::path& path, const std::vector<std::size_t>& shape,
                 const std::string& descr, std::span<const std::byte> data, std::size_t item_size) {
  std::size_t elements = 1;
  for (std::size_t extent : shape) {
    if (__builtin_mul_overflow(elements, extent, &elements)) {
      throw Error(fmt::format("{}: shape is too large", path.string()));
    }
  }
  if (elements != data.size() / item_size) {
    throw Error(fmt::format("{}: shape needs {} elements but {} were given", path.string(),
                            elements, data.size() / item_size));
  }
  // The header is padded with spaces and ends in '\n' so that magic + version + length field +
  // header is a multiple of 64 bytes; version 1.0's length field is 16 bits, 2.0's 32 bits.
  const std::string text = header_text(descr, shape);
  const auto padded_length = [&](std::size_t length_field) {
    const std::size_t unpadded = kMagicLength + 2 + length_field + text.size() + 1;
    return text.size() + 1 + (kAlignment - unpadded % kAlignment) % kAlignment;
  };
  const bool version2 = padded_length(2) > 0xFFFF;
  const std::size_t length_field = version2 ? 4 : 2;
  std::string header = text;
  header.append(padded_length(length_field) - text.size() - 1, ' ');
  header.push_back('\n');
  write_file_atomically(path, [&](std::FILE* stream) {
    write_bytes(stream, kMagic, kMagicLength, path);
    const unsigned char version[2] = {static_cast<unsigned char>(version2 ? 2 : 1), 0};
    write_bytes(stream, version, 2, path);
    std::uint64_t length = header.size();
    unsigned char bytes[4];
    for (std::size_t i = 0; i < length_field; ++i) {
      bytes[i] = static_cast<unsigned char>(length & 0xFF);
      length >>= 8;
    }
    write_bytes(stream, bytes, length_field, path);
    write_bytes(stream, header.data(), header.size(), path);
    write_bytes(stream, data.data(), data.size(), path);
  });
}

}  // namespace

NpyFile NpyFile::open(const std::filesystem::path& path) {
  NpyFile result;
  result.file_ = detail::MappedFile::open(path);
  const std::span<const std::byte> bytes = result.file_.bytes();
  const std::string file = path.string();
  if (bytes.size() < kMagicLength || std::memcmp(bytes.data(), kMagic, kMagicLength) != 0) {
    throw Error(fmt::format("{}: not a .npy file (missing the \\x93NUMPY magic string)", file));
  }
  if (bytes.size() < kMagicLength + 2) throw Error(fmt::format("{}: truncated .npy file", file));
  const auto major = std::to_integer<unsigned>(bytes[6]);
  const auto minor = std::to_integer<unsigned>(bytes[7]);
  if (major < 1 || major > 3 || minor != 0) {
    throw Error(fmt::format("{}: unsupported .npy format version {}.{} (1.0, 2.0 and 3.0 are)",
                            file, major, minor));
  }
  // Version 1.0 stores the header length in 2 bytes, 2.0 and 3.0 (UTF-8 header) in 4.
  const std::size_t header_start = major == 1 ? 10 : 12;
  if (bytes.size() < header_start) {
    throw Error(fmt::format("{}: truncated .npy file ({} bytes)", file, bytes.size()));
  }
  std::size_t header_length = 0;
  for (std::size_t i = header_start; i-- > 8;) {
    header_length = (header_length << 8) | std::to_integer<std::size_t>(bytes[i]);
  }
  if (header_length > bytes.size() - header_start) {
    throw Error(fmt::format("{}: .npy header length {} runs past the end of the file ({} bytes)",
                            file, header_length, bytes.size()));
  }
  const std::string_view text(reinterpret_cast<const char*>(bytes.data() + header_start),
                              header_length);
  const NpyHeader header = HeaderParser(text, file).parse();
  for (const auto& [present, field] : {std::pair{header.descr.has_value(), "descr"},
                                       std::pair{header.fortran_order.has_value(), "fortran_order"},
                                       std::pair{header.shape.has_value(), "shape"}}) {
    if (!present) throw Error(fmt::format("{}: .npy header lacks the field '{}'", file, field));
  }
  if (*header.fortran_order) {
    throw Error(fmt::format(
        "{}: .npy field 'fortran_order' is True; Fortran-order arrays are not supported (save "
        "with np.ascontiguousarray)",
        file));
  }
  std::tie(result.descr_, result.item_size_) = normalise_descr(*header.descr, file);
  result.shape_ = *header.shape;

  // As NumPy does, the non-zero extents times the item size must fit in a signed size even
  // when another extent is 0, so that rows(), row_width() and any product of extents fit too.
  std::size_t needed = result.item_size_;
  bool empty = false;
  for (std::size_t extent : result.shape_) {
    if (extent == 0) {
      empty = true;
    } else if (__builtin_mul_overflow(needed, extent, &needed) || needed > PTRDIFF_MAX) {
      throw Error(fmt::format("{}: .npy field 'shape' is too large", file));
    }
  }
  if (empty) needed = 0;
  const std::size_t available = bytes.size() - header_start - header_length;
  if (needed > available) {
    throw Error(fmt::format(
        "{}: .npy data is truncated: shape and dtype '{}' need {} data bytes but the file has {}",
        file, result.descr_, needed, available));
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

void NpyFile::read_rows_float(std::size_t first_row, std::size_t count, float* out,
                              NpyFloatOptions options) const {
  if (first_row > rows() || count > rows() - first_row) {
    throw Error(fmt::format("{}: rows [{}, {}) are out of range (the array has {} rows)",
                            path().string(), first_row, first_row + count, rows()));
  }
  const std::size_t n = count * row_width();
  const std::byte* p = data_.data() + first_row * row_width() * item_size_;
  if (descr_ == "<f4") {
    if (n > 0) std::memcpy(out, p, n * sizeof(float));
  } else if (descr_ == "<f2") {
    for (std::size_t i = 0; i < n; ++i) out[i] = half_to_float(load<std::uint16_t>(p + 2 * i));
  } else if (descr_ == "<f8") {
    for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<float>(load<double>(p + 8 * i));
  } else if (descr_ == "<u2" && options.u2_as_bfloat16) {
    for (std::size_t i = 0; i < n; ++i) {
      out[i] = bfloat16_to_float(load<std::uint16_t>(p + 2 * i));
    }
  } else {
    throw Error(fmt::format(
        "{}: dtype '{}' is not floating point (f4, f2, f8, or u2 read as bfloat16 on request)",
        path().string(), descr_));
  }
}

std::vector<std::int64_t> NpyFile::read_int() const {
  const std::size_t n = data_.size() / item_size_;
  const std::byte* p = data_.data();
  std::vector<std::int64_t> out(n);
  const auto convert = [&]<typename T>(T /*type tag*/) {
    for (std::size_t i = 0; i < n; ++i) out[i] = load<T>(p + sizeof(T) * i);
  };
  if (descr_ == "<i8") {
    convert(std::int64_t{});
  } else if (descr_ == "<i4") {
    convert(std::int32_t{});
  } else if (descr_ == "<i2") {
    convert(std::int16_t{});
  } else if (descr_ == "|i1") {
    convert(std::int8_t{});
  } else if (descr_ == "|u1" || descr_ == "|b1") {
    convert(std::uint8_t{});
  } else if (descr_ == "<u2") {
    convert(std::uint16_t{});
  } else {
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

void write_npy_raw(const std::filesystem::path& path, const std::vector<std::size_t>& shape,
                   const std::string& descr, std::span<const std::byte> data) {
  std::size_t item_size = 0;
  if (descr == "<f4" || descr == "<i4") {
    item_size = 4;
  } else if (descr == "<f2" || descr == "<u2" || descr == "<i2") {
    item_size = 2;
  } else if (descr == "|i1" || descr == "|u1") {
    item_size = 1;
  } else {
    throw Error(fmt::format("{}: write_npy_raw does not write dtype '{}'", path.string(), descr));
  }
  if (data.size() % item_size != 0) {
    throw Error(fmt::format("{}: {} bytes is not a whole number of '{}' elements", path.string(),
                            data.size(), descr));
  }
  write_array(path, shape, descr, data, item_size);
}

}  // namespace crosscoder::io
