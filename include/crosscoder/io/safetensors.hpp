#pragma once
/// @file safetensors.hpp
/// Reading and writing safetensors files (the format of Hugging Face's `safetensors`).
///
/// Layout: an 8-byte little-endian header length N, N bytes of JSON mapping each tensor name
/// to {dtype, shape, data_offsets: [begin, end)} (offsets relative to the data section) plus an
/// optional "__metadata__" object of strings, then the data section.

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "crosscoder/io/mapped_file.hpp"

namespace crosscoder::io {

enum class DType { F32, F16, BF16, F64, I64, I32, I16, I8, U8, BOOL };

/// Bytes per element.
std::size_t element_size(DType dtype) noexcept;
/// "F32", "BF16", ...
std::string_view to_string(DType dtype) noexcept;

/// One tensor of an open file; `data` points into the file's mapping.
struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<std::int64_t> shape;
  std::span<const std::byte> data;
  std::int64_t elements() const noexcept;
};

/// A memory-mapped safetensors file, validated as the reference implementation does: header
/// length within the file and at most 100 MB; the header a JSON object; every tensor with a
/// known dtype, a non-negative shape and offsets whose size matches dtype × shape; offsets
/// contiguous from 0 and covering the data section exactly; no duplicate names;
/// `__metadata__` a string → string object.
class SafetensorsFile {
 public:
  /// @throws Error naming the file and what is wrong with it.
  static SafetensorsFile open(const std::filesystem::path& path);

  const std::filesystem::path& path() const noexcept { return file_.path(); }
  const std::map<std::string, std::string>& metadata() const noexcept { return metadata_; }
  /// Tensor names in data order.
  std::vector<std::string> names() const;
  bool contains(std::string_view name) const;
  /// @throws Error naming the file and tensor when there is no such tensor.
  const TensorInfo& info(std::string_view name) const;

  /// The tensor converted to float32 (from F32, F16, BF16 or F64).
  /// @throws Error naming file and tensor for other dtypes.
  std::vector<float> read_float(std::string_view name) const;
  /// read_float that also checks the shape, naming expected and actual shapes on mismatch.
  std::vector<float> read_float(std::string_view name,
                                const std::vector<std::int64_t>& expected_shape) const;
  /// The tensor converted to int64 (from I64, I32, I16, I8, U8 or BOOL).
  std::vector<std::int64_t> read_int(std::string_view name) const;

 private:
  MappedFile file_;
  std::vector<TensorInfo> tensors_;  // in data order
  std::map<std::string, std::string> metadata_;
};

/// Collects tensors and metadata, then writes them atomically in insertion order.
class SafetensorsWriter {
 public:
  /// @throws Error on a duplicate name or when the data size does not match the shape.
  void add_raw(std::string name, DType dtype, std::vector<std::int64_t> shape,
               std::span<const std::byte> data);
  void add_float(std::string name, std::vector<std::int64_t> shape, std::span<const float> data);
  void add_int64(std::string name, std::vector<std::int64_t> shape,
                 std::span<const std::int64_t> data);
  void set_metadata(std::string key, std::string value);
  /// Writes the file atomically (see write_file_atomically). @throws Error naming the path.
  void write(const std::filesystem::path& path) const;

 private:
  struct Entry {
    std::string name;
    DType dtype;
    std::vector<std::int64_t> shape;
    std::vector<std::byte> data;
  };
  std::vector<Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace crosscoder::io
