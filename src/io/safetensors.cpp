#include "crosscoder/io/safetensors.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

#include "crosscoder/error.hpp"
#include "crosscoder/io/atomic_file.hpp"
#include "crosscoder/io/half.hpp"

namespace crosscoder::io {
namespace {

constexpr std::uint64_t kMaxHeaderBytes = 100'000'000;  // the reference implementation's cap

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

template <typename T>
T load(const std::byte* p) {
  T value;
  std::memcpy(&value, p, sizeof(T));
  return value;
}

std::string shape_text(const std::vector<std::int64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
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
  result.file_ = MappedFile::open(path);
  const std::span<const std::byte> bytes = result.file_.bytes();
  const std::string file = path.string();
  const auto fail = [&](const std::string& what) {
    return Error(fmt::format("{}: not a valid safetensors file: {}", file, what));
  };
  if (bytes.size() < 8)
    throw fail(fmt::format("{} bytes is too short for the 8-byte header length", bytes.size()));
  std::uint64_t header_length = 0;
  for (int i = 7; i >= 0; --i)
    header_length = (header_length << 8) | std::to_integer<std::uint64_t>(bytes[i]);
  if (header_length > kMaxHeaderBytes)
    throw fail(
        fmt::format("header length {} exceeds the {} byte limit", header_length, kMaxHeaderBytes));
  if (header_length > bytes.size() - 8) {
    throw fail(fmt::format("header length {} runs past the end of the file ({} bytes)",
                           header_length, bytes.size()));
  }
  const std::string_view header(reinterpret_cast<const char*>(bytes.data() + 8), header_length);
  const std::span<const std::byte> data = bytes.subspan(8 + header_length);

  // nlohmann keeps the last of duplicate keys silently; the callback sees every key.
  std::set<std::string> seen;
  std::string duplicate;
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(
        header, [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
          if (depth == 1 && event == nlohmann::json::parse_event_t::key &&
              !seen.insert(parsed.get<std::string>()).second) {
            duplicate = parsed.get<std::string>();
          }
          return true;
        });
  } catch (const nlohmann::json::exception& error) {
    throw fail(fmt::format("header is not valid JSON ({})", error.what()));
  }
  if (!duplicate.empty())
    throw fail(fmt::format("tensor '{}' appears twice in the header", duplicate));
  if (!json.is_object()) throw fail("header JSON is not an object");

  for (const auto& [name, entry] : json.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) throw fail("__metadata__ is not an object");
      for (const auto& [key, value] : entry.items()) {
        if (!value.is_string())
          throw fail(fmt::format("__metadata__ value of '{}' is not a string", key));
        result.metadata_[key] = value.get<std::string>();
      }
      continue;
    }
    const auto bad = [&](const std::string& what) {
      return fail(fmt::format("tensor '{}': {}", name, what));
    };
    if (!entry.is_object()) throw bad("entry is not an object");
    if (!entry.contains("dtype") || !entry["dtype"].is_string()) throw bad("missing dtype");
    if (!entry.contains("shape") || !entry["shape"].is_array()) throw bad("missing shape");
    if (!entry.contains("data_offsets") || !entry["data_offsets"].is_array() ||
        entry["data_offsets"].size() != 2) {
      throw bad("data_offsets must be [begin, end]");
    }
    TensorInfo info;
    info.name = name;
    const std::string dtype = entry["dtype"].get<std::string>();
    const auto known = std::find_if(std::begin(kDTypes), std::end(kDTypes),
                                    [&](const DTypeName& d) { return d.name == dtype; });
    if (known == std::end(kDTypes)) throw bad(fmt::format("unsupported dtype '{}'", dtype));
    info.dtype = known->dtype;
    std::uint64_t bytes_needed = known->size;
    for (const auto& extent : entry["shape"]) {
      if (!extent.is_number_unsigned()) throw bad("shape entries must be non-negative integers");
      const auto value = extent.get<std::uint64_t>();
      if (__builtin_mul_overflow(bytes_needed, value, &bytes_needed) ||
          value > static_cast<std::uint64_t>(INT64_MAX)) {
        throw bad("shape is too large");
      }
      info.shape.push_back(static_cast<std::int64_t>(value));
    }
    const auto& offsets = entry["data_offsets"];
    if (!offsets[0].is_number_unsigned() || !offsets[1].is_number_unsigned())
      throw bad("data_offsets must be non-negative integers");
    const auto begin = offsets[0].get<std::uint64_t>(), end = offsets[1].get<std::uint64_t>();
    if (begin > end) throw bad(fmt::format("data_offsets [{}, {}) are reversed", begin, end));
    if (end - begin != bytes_needed) {
      throw bad(fmt::format("data_offsets span {} bytes but dtype {} × shape {} needs {}",
                            end - begin, dtype, shape_text(info.shape), bytes_needed));
    }
    if (end > data.size())
      throw bad(fmt::format("data_offsets end {} lies beyond the data section ({} bytes)", end,
                            data.size()));
    info.data = data.subspan(begin, end - begin);
    result.tensors_.push_back(std::move(info));
  }
  std::sort(result.tensors_.begin(), result.tensors_.end(),
            [&](const TensorInfo& a, const TensorInfo& b) {
              return a.data.data() < b.data.data() ||
                     (a.data.data() == b.data.data() && a.data.size() < b.data.size());
            });
  std::size_t expected = 0;
  for (const TensorInfo& info : result.tensors_) {
    const auto begin = static_cast<std::size_t>(info.data.data() - data.data());
    if (begin != expected) {
      throw fail(
          fmt::format("tensor '{}' starts at byte {} of the data section, expected {} (offsets "
                      "must be contiguous and not overlap)",
                      info.name, begin, expected));
    }
    expected = begin + info.data.size();
  }
  if (expected != data.size()) {
    throw fail(
        fmt::format("tensors cover {} bytes but the data section has {}", expected, data.size()));
  }
  return result;
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> names;
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
  std::vector<float> out(n);
  const std::byte* p = tensor.data.data();
  switch (tensor.dtype) {
    case DType::F32:
      if (n > 0) std::memcpy(out.data(), p, n * sizeof(float));
      break;
    case DType::F16:
      for (std::size_t i = 0; i < n; ++i) out[i] = half_to_float(load<std::uint16_t>(p + 2 * i));
      break;
    case DType::BF16:
      for (std::size_t i = 0; i < n; ++i)
        out[i] = bfloat16_to_float(load<std::uint16_t>(p + 2 * i));
      break;
    case DType::F64:
      for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<float>(load<double>(p + 8 * i));
      break;
    default:
      throw Error(fmt::format("{}: tensor '{}' has dtype {}, expected a floating-point tensor",
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
  std::vector<std::int64_t> out(n);
  const std::byte* p = tensor.data.data();
  for (std::size_t i = 0; i < n; ++i) {
    switch (tensor.dtype) {
      case DType::I64:
        out[i] = load<std::int64_t>(p + 8 * i);
        break;
      case DType::I32:
        out[i] = load<std::int32_t>(p + 4 * i);
        break;
      case DType::I16:
        out[i] = load<std::int16_t>(p + 2 * i);
        break;
      case DType::I8:
        out[i] = load<std::int8_t>(p + i);
        break;
      case DType::U8:
      case DType::BOOL:
        out[i] = load<std::uint8_t>(p + i);
        break;
      default:
        throw Error(fmt::format("{}: tensor '{}' has dtype {}, expected an integer tensor",
                                path().string(), name, to_string(tensor.dtype)));
    }
  }
  return out;
}

void SafetensorsWriter::add_raw(std::string name, DType dtype, std::vector<std::int64_t> shape,
                                std::span<const std::byte> data) {
  if (name.empty() || name == "__metadata__")
    throw Error(fmt::format("safetensors: invalid tensor name '{}'", name));
  for (const Entry& entry : entries_)
    if (entry.name == name) throw Error(fmt::format("safetensors: tensor '{}' added twice", name));
  std::uint64_t bytes = element_size(dtype);
  for (std::int64_t extent : shape) {
    if (extent < 0)
      throw Error(fmt::format("safetensors: tensor '{}' has a negative extent in shape {}", name,
                              shape_text(shape)));
    bytes *= static_cast<std::uint64_t>(extent);
  }
  if (bytes != data.size()) {
    throw Error(
        fmt::format("safetensors: tensor '{}' of dtype {} and shape {} needs {} bytes, got {}",
                    name, to_string(dtype), shape_text(shape), bytes, data.size()));
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
  // nlohmann's ordered_json keeps insertion order, so the header lists tensors in data order.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata_.empty()) header["__metadata__"] = metadata_;
  std::uint64_t offset = 0;
  for (const Entry& entry : entries_) {
    header[entry.name] = {{"dtype", std::string(to_string(entry.dtype))},
                          {"shape", entry.shape},
                          {"data_offsets", {offset, offset + entry.data.size()}}};
    offset += entry.data.size();
  }
  std::string text = header.dump();
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
    for (const Entry& entry : entries_)
      write_bytes(stream, entry.data.data(), entry.data.size(), path);
  });
}

}  // namespace crosscoder::io
