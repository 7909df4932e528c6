#include "crosscoder/io/safetensors.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <utility>

#include "crosscoder/error.hpp"
#include "crosscoder/io/half.hpp"
#include "io/atomic_file.hpp"

namespace crosscoder::io {

// The format is little-endian; tensors are copied to and from memory as they are.
static_assert(std::endian::native == std::endian::little, "safetensors I/O assumes little-endian");

namespace {

constexpr std::uint64_t kMaxHeaderBytes = 100'000'000;  // the reference implementation's cap

// Keeps keys in header order, so that tensors with equal offsets (empty ones) are listed in the
// order they were written.
using Json = nlohmann::ordered_json;

struct DTypeName {
  DType dtype;
  std::string_view name;
  std::size_t size;
};
constexpr DTypeName kDTypes[] = {{DType::F32, "F32", 4},   {DType::F16, "F16", 2},
                                 {DType::BF16, "BF16", 2}, {DType::F64, "F64", 8},
                                 {DType::I64, "I64", 8},   {DType::I32, "I32", 4},
                                 {DType::I16, "I16", 2},   {DType::I8, "I8", 1},
                                 {DType::U8, "U8", 1},     {DType::BOOL, "BOOL", 1}};

std::optional<DType> parse_dtype(std::string_view name) {
  for (const auto& entry : kDTypes)
    if (entry.name == name) return entry.dtype;
  return std::nullopt;
}

template <typename T>
T load(const std::byte* p) {
  T value;
  std::memcpy(&value, p, sizeof(T));
  return value;
}

std::string shape_text(const std::vector<std::int64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

// A header value for an error message: its JSON text when it is a scalar or a short flat array
// or object, else a description. (dump() recurses once per level of nesting: a deeply nested
// value, a few hundred kilobytes of '[', would overflow the stack instead of being refused.)
std::string describe(const Json& value) {
  if (value.is_structured()) {
    for (const Json& element : value) {
      if (element.is_structured()) return fmt::format("(a nested {})", value.type_name());
    }
    if (value.size() > 16)
      return fmt::format("(an {} of {} values)", value.type_name(), value.size());
  }
  return value.dump();
}

// product(shape) × element_size, or nullopt when the non-zero extents times the element size
// exceed int64 (even when another extent is 0, as NumPy refuses such shapes), so that
// TensorInfo::elements() and every partial product of the shape fit in int64.
std::optional<std::uint64_t> byte_size(DType dtype, const std::vector<std::int64_t>& shape) {
  std::uint64_t bytes = element_size(dtype);
  bool empty = false;
  for (std::int64_t extent : shape) {
    if (extent == 0) {
      empty = true;
    } else if (__builtin_mul_overflow(bytes, static_cast<std::uint64_t>(extent), &bytes) ||
               bytes > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
      return std::nullopt;
    }
  }
  return empty ? 0 : bytes;
}

// Deeper than any safetensors header (an object of objects of arrays): a value nested deeper is
// refused while parsing, because nlohmann's ordered objects copy their values recursively
// when they grow, and tens of thousands of nested '[' would overflow the stack.
constexpr int kMaxHeaderDepth = 64;

// Parses the header JSON, rejecting a key that appears twice in any object (nlohmann keeps the
// last of duplicate keys silently, so the parser callback watches every key) and values nested
// deeper than kMaxHeaderDepth (not stored, so never copied).
Json parse_header(std::string_view text, const std::function<Error(const std::string&)>& fail) {
  std::vector<std::set<std::string>> open_objects;  // the keys seen in each enclosing object
  std::optional<std::string> duplicate;
  bool too_deep = false;
  const auto watch = [&](int depth, Json::parse_event_t event, Json& parsed) {
    using Event = Json::parse_event_t;
    if ((event == Event::object_start || event == Event::array_start) && depth >= kMaxHeaderDepth) {
      too_deep = true;
      return false;  // discarded: its contents are parsed but not kept
    }
    if (event == Event::object_start) {
      open_objects.emplace_back();
    } else if (event == Event::object_end) {
      if (!open_objects.empty()) open_objects.pop_back();
    } else if (event == Event::key && !open_objects.empty() && !duplicate) {
      std::string key = parsed.get<std::string>();
      if (!open_objects.back().insert(key).second) {
        duplicate = open_objects.size() == 1
                        ? fmt::format("tensor '{}' appears twice in the header", key)
                        : fmt::format("key '{}' appears twice in one object", key);
      }
    }
    return true;
  };
  Json json;
  try {
    json = Json::parse(text, watch);
  } catch (const nlohmann::json::exception& error) {
    throw fail(fmt::format("header is not valid JSON ({})", error.what()));
  }
  if (too_deep) {
    throw fail(fmt::format("header nests values more than {} levels deep", kMaxHeaderDepth));
  }
  if (duplicate) throw fail(*duplicate);
  return json;
}

// One header entry, checked on its own; `begin` is its offset in the data section.
struct ParsedTensor {
  TensorInfo info;
  std::uint64_t begin = 0, end = 0;
};

ParsedTensor parse_tensor(const std::string& name, const Json& entry,
                          const std::function<Error(const std::string&)>& fail) {
  const auto bad = [&](const std::string& what) {
    return fail(fmt::format("tensor '{}': {}", name, what));
  };
  if (!entry.is_object()) throw bad("entry is not an object");
  const auto dtype_field = entry.find("dtype");
  const auto shape_field = entry.find("shape");
  const auto offsets_field = entry.find("data_offsets");
  if (dtype_field == entry.end() || !dtype_field->is_string()) throw bad("dtype missing");
  if (shape_field == entry.end() || !shape_field->is_array()) throw bad("shape missing");
  if (offsets_field == entry.end() || !offsets_field->is_array() || offsets_field->size() != 2) {
    throw bad("data_offsets must be [begin, end]");
  }

  ParsedTensor tensor;
  tensor.info.name = name;
  const auto& dtype_name = dtype_field->get_ref<const std::string&>();
  const std::optional<DType> dtype = parse_dtype(dtype_name);
  if (!dtype) throw bad(fmt::format("unsupported dtype '{}'", dtype_name));
  tensor.info.dtype = *dtype;
  for (const auto& extent : *shape_field) {
    if (!extent.is_number_unsigned()) {
      throw bad(fmt::format("shape {} must hold non-negative integers", describe(*shape_field)));
    }
    const auto value = extent.get<std::uint64_t>();
    if (value > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
      throw bad(fmt::format("shape {} is too large", describe(*shape_field)));
    }
    tensor.info.shape.push_back(static_cast<std::int64_t>(value));
  }
  const std::optional<std::uint64_t> needed = byte_size(*dtype, tensor.info.shape);
  if (!needed) throw bad(fmt::format("shape {} is too large", describe(*shape_field)));

  const auto& offsets = *offsets_field;
  if (!offsets[0].is_number_unsigned() || !offsets[1].is_number_unsigned()) {
    throw bad(fmt::format("data_offsets {} must be non-negative integers", describe(offsets)));
  }
  tensor.begin = offsets[0].get<std::uint64_t>();
  tensor.end = offsets[1].get<std::uint64_t>();
  if (tensor.begin > tensor.end) {
    throw bad(fmt::format("data_offsets [{}, {}] are reversed", tensor.begin, tensor.end));
  }
  if (tensor.end - tensor.begin != *needed) {
    throw bad(fmt::format("data_offsets [{}, {}] span {} bytes but dtype {} × shape {} needs {}",
                          tensor.begin, tensor.end, tensor.end - tensor.begin, dtype_name,
                          shape_text(tensor.info.shape), *needed));
  }
  return tensor;
}

}  // namespace

std::size_t element_size(DType dtype) noexcept {
  for (const auto& entry : kDTypes)
    if (entry.dtype == dtype) return entry.size;
  return 0;
}

std::string_view to_string(DType dtype) noexcept {
  for (const auto& entry : kDTypes)
    if (entry.dtype == dtype) return entry.name;
  return "?";
}

std::int64_t TensorInfo::elements() const noexcept {
  std::int64_t count = 1;
  for (std::int64_t extent : shape) count *= extent;
  return count;
}

SafetensorsFile SafetensorsFile::open(const std::filesystem::path& path) {
  SafetensorsFile result;
  result.file_ = detail::MappedFile::open(path);
  const std::span<const std::byte> bytes = result.file_.bytes();
  const std::string file = path.string();
  const std::function<Error(const std::string&)> fail = [&](const std::string& what) {
    return Error(fmt::format("{}: not a valid safetensors file: {}", file, what));
  };

  if (bytes.size() < 8) {
    throw fail(fmt::format("{} bytes is too short for the 8-byte header length", bytes.size()));
  }
  std::uint64_t header_length = 0;
  for (int i = 7; i >= 0; --i) {
    header_length = (header_length << 8) | std::to_integer<std::uint64_t>(bytes[i]);
  }
  if (header_length > kMaxHeaderBytes) {
    throw fail(
        fmt::format("header length {} exceeds the {} byte limit", header_length, kMaxHeaderBytes));
  }
  if (header_length > bytes.size() - 8) {
    throw fail(fmt::format("header length {} runs past the end of the file ({} bytes)",
                           header_length, bytes.size()));
  }
  const std::string_view header(reinterpret_cast<const char*>(bytes.data() + 8), header_length);
  const std::span<const std::byte> data = bytes.subspan(8 + header_length);

  // The reference rejects a header that does not start with '{' before parsing it.
  if (header.empty() || header.front() != '{') {
    throw fail("header is not a JSON object (it does not start with '{')");
  }
  const Json json = parse_header(header, fail);
  if (!json.is_object()) throw fail("header is not a JSON object");

  std::vector<ParsedTensor> tensors;
  for (const auto& [name, entry] : json.items()) {
    if (name != "__metadata__") {
      tensors.push_back(parse_tensor(name, entry, fail));
      continue;
    }
    if (entry.is_null()) continue;  // the reference reads "__metadata__" as an optional map
    if (!entry.is_object()) throw fail("__metadata__ is not an object");
    for (const auto& [key, value] : entry.items()) {
      if (!value.is_string()) {
        throw fail(
            fmt::format("__metadata__ value of '{}' is not a string: {}", key, describe(value)));
      }
      result.metadata_[key] = value.get<std::string>();
    }
  }

  // As the reference does: sort by offsets, then every tensor must start where the previous
  // one ended, and the last must end exactly at the end of the file.
  std::stable_sort(tensors.begin(), tensors.end(), [](const auto& a, const auto& b) {
    return std::pair(a.begin, a.end) < std::pair(b.begin, b.end);
  });
  std::uint64_t expected = 0;
  for (const ParsedTensor& tensor : tensors) {
    if (tensor.begin != expected) {
      throw fail(fmt::format(
          "tensor '{}' has data_offsets [{}, {}] but the previous tensor ends at {} (offsets "
          "must be contiguous and must not overlap)",
          tensor.info.name, tensor.begin, tensor.end, expected));
    }
    expected = tensor.end;
  }
  if (expected > data.size()) {
    throw fail(fmt::format(
        "tensor data ends at offset {} but the data section has only {} bytes (file truncated?)",
        expected, data.size()));
  }
  if (expected < data.size()) {
    throw fail(fmt::format("tensors cover {} bytes but the data section has {} (trailing bytes)",
                           expected, data.size()));
  }
  result.tensors_.reserve(tensors.size());
  for (ParsedTensor& tensor : tensors) {
    tensor.info.data = data.subspan(tensor.begin, tensor.end - tensor.begin);
    result.tensors_.push_back(std::move(tensor.info));
  }
  return result;
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> names;
  names.reserve(tensors_.size());
  for (const TensorInfo& info : tensors_) names.push_back(info.name);
  return names;
}

bool SafetensorsFile::contains(std::string_view name) const {
  return std::any_of(tensors_.begin(), tensors_.end(),
                     [&](const TensorInfo& info) { return info.name == name; });
}

const TensorInfo& SafetensorsFile::info(std::string_view name) const {
  for (const TensorInfo& info : tensors_)
    if (info.name == name) return info;
  throw Error(fmt::format("{}: no tensor named '{}'", path().string(), name));
}

std::vector<float> SafetensorsFile::read_float(std::string_view name) const {
  const TensorInfo& tensor = info(name);
  const auto n = static_cast<std::size_t>(tensor.elements());
  const std::byte* p = tensor.data.data();
  std::vector<float> out;
  switch (tensor.dtype) {
    case DType::F32:
      out.resize(n);
      if (n > 0) std::memcpy(out.data(), p, n * sizeof(float));
      break;
    case DType::F16:
      out.resize(n);
      for (std::size_t i = 0; i < n; ++i) out[i] = half_to_float(load<std::uint16_t>(p + 2 * i));
      break;
    case DType::BF16:
      out.resize(n);
      for (std::size_t i = 0; i < n; ++i) {
        out[i] = bfloat16_to_float(load<std::uint16_t>(p + 2 * i));
      }
      break;
    case DType::F64:
      out.resize(n);
      for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<float>(load<double>(p + 8 * i));
      break;
    default:
      throw Error(fmt::format("{}: tensor '{}' has dtype {}, expected F32, F16, BF16 or F64",
                              path().string(), name, to_string(tensor.dtype)));
  }
  return out;
}

std::vector<float> SafetensorsFile::read_float(
    std::string_view name, const std::vector<std::int64_t>& expected_shape) const {
  const TensorInfo& tensor = info(name);
  if (tensor.shape != expected_shape) {
    throw Error(fmt::format("{}: tensor '{}' has shape {}, expected {}", path().string(), name,
                            shape_text(tensor.shape), shape_text(expected_shape)));
  }
  return read_float(name);
}

std::vector<std::int64_t> SafetensorsFile::read_int(std::string_view name) const {
  const TensorInfo& tensor = info(name);
  const auto n = static_cast<std::size_t>(tensor.elements());
  const std::byte* p = tensor.data.data();
  std::vector<std::int64_t> out(n);
  const auto convert = [&]<typename T>(T /*type tag*/) {
    for (std::size_t i = 0; i < n; ++i) out[i] = load<T>(p + sizeof(T) * i);
  };
  switch (tensor.dtype) {
    case DType::I64:
      convert(std::int64_t{});
      break;
    case DType::I32:
      convert(std::int32_t{});
      break;
    case DType::I16:
      convert(std::int16_t{});
      break;
    case DType::I8:
      convert(std::int8_t{});
      break;
    case DType::U8:
    case DType::BOOL:
      convert(std::uint8_t{});
      break;
    default:
      throw Error(fmt::format("{}: tensor '{}' has dtype {}, expected an integer dtype",
                              path().string(), name, to_string(tensor.dtype)));
  }
  return out;
}

void SafetensorsWriter::add_raw(std::string name, DType dtype, std::vector<std::int64_t> shape,
                                std::span<const std::byte> data) {
  if (name.empty() || name == "__metadata__") {
    throw Error(fmt::format("safetensors: invalid tensor name '{}'", name));
  }
  for (const Entry& entry : entries_) {
    if (entry.name == name) throw Error(fmt::format("safetensors: tensor '{}' added twice", name));
  }
  if (std::any_of(shape.begin(), shape.end(), [](std::int64_t extent) { return extent < 0; })) {
    throw Error(fmt::format("safetensors: tensor '{}' has a negative extent in shape {}", name,
                            shape_text(shape)));
  }
  const std::optional<std::uint64_t> bytes = byte_size(dtype, shape);
  if (!bytes || *bytes != data.size()) {
    throw Error(
        fmt::format("safetensors: tensor '{}' of dtype {} and shape {} needs {} bytes, got {}",
                    name, to_string(dtype), shape_text(shape),
                    bytes ? std::to_string(*bytes) : std::string("more than 2^64"), data.size()));
  }
  entries_.push_back(
      {std::move(name), dtype, std::move(shape), std::vector<std::byte>(data.begin(), data.end())});
}

void SafetensorsWriter::add_float(std::string name, std::vector<std::int64_t> shape,
                                  std::span<const float> data) {
  add_raw(std::move(name), DType::F32, std::move(shape), std::as_bytes(data));
}

void SafetensorsWriter::add_int64(std::string name, std::vector<std::int64_t> shape,
                                  std::span<const std::int64_t> data) {
  add_raw(std::move(name), DType::I64, std::move(shape), std::as_bytes(data));
}

void SafetensorsWriter::set_metadata(std::string key, std::string value) {
  metadata_[std::move(key)] = std::move(value);
}

void SafetensorsWriter::write(const std::filesystem::path& path) const {
  // ordered_json keeps insertion order, so the header lists tensors in data order.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata_.empty()) header["__metadata__"] = metadata_;
  std::uint64_t offset = 0;
  for (const Entry& entry : entries_) {
    header[entry.name] = {{"dtype", std::string(to_string(entry.dtype))},
                          {"shape", entry.shape},
                          {"data_offsets", {offset, offset + entry.data.size()}}};
    offset += entry.data.size();
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& error) {  // a name or value that is not UTF-8
    throw Error(
        fmt::format("{}: cannot write the safetensors header: {}", path.string(), error.what()));
  }
  text.append((8 - text.size() % 8) % 8, ' ');  // pad so the data section is 8-byte aligned
  write_file_atomically(path, [&](std::FILE* stream) {
    std::byte length[8];
    std::uint64_t value = text.size();
    for (auto& byte : length) {
      byte = static_cast<std::byte>(value & 0xFF);
      value >>= 8;
    }
    write_bytes(stream, length, sizeof length, path);
    write_bytes(stream, text.data(), text.size(), path);
    for (const Entry& entry : entries_) {
      write_bytes(stream, entry.data.data(), entry.data.size(), path);
    }
  });
}

}  // namespace crosscoder::io
