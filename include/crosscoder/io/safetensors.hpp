#pragma once
/// @file safetensors.hpp
/// Reading and writing safetensors files (the format of Hugging Face's `safetensors`).
///
/// Layout: an 8-byte little-endian header length N, N bytes of UTF-8 JSON mapping each tensor
/// name to {"dtype", "shape", "data_offsets": [begin, end]} (byte offsets relative to the data
/// section) plus an optional "__metadata__" object of strings, then the data section: the
/// tensors' little-endian, C-order bytes, back to back.

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

/// Element types this library reads and writes (a subset of the format's).
enum class DType { F32, F16, BF16, F64, I64, I32, I16, I8, U8, BOOL };

/// Bytes per element: 4 for F32, 2 for F16 and BF16, 1 for BOOL, ...
std::size_t element_size(DType dtype) noexcept;
/// The name the format uses: "F32", "F16", "BF16", "F64", "I64", ..., "BOOL".
std::string_view to_string(DType dtype) noexcept;

/// One tensor of an open file; `data` (element_size × elements() bytes) points into the file's
/// mapping and is valid while the SafetensorsFile lives.
struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<std::int64_t> shape;
  std::span<const std::byte> data;
  std::int64_t elements() const noexcept;
};

/// A memory-mapped safetensors file, validated as the reference implementation does: header
/// length at most 100 MB and within the file; the header a JSON object (starting with '{');
/// every tensor with a known dtype, a shape of non-negative integers and data_offsets
/// [begin, end] whose size equals product(shape) × element size (overflow-checked); offsets,
/// sorted, contiguous from 0 and ending exactly at the end of the file; no key twice in any
/// JSON object (so no duplicate tensor names); `__metadata__` a string → string object (or
/// null). Extra keys in a tensor entry are ignored, as the reference does.
class SafetensorsFile {
 public:
  /// @throws Error naming the file and what is wrong with it.
  static SafetensorsFile open(const std::filesystem::path& path);

  const std::filesystem::path& path() const noexcept { return file_.path(); }
  const std::map<std::string, std::string>& metadata() const noexcept { return metadata_; }
  /// Tensor names in the order of their data offsets.
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
  /// @throws Error naming file and tensor for other dtypes.
  std::vector<std::int64_t> read_int(std::string_view name) const;

 private:
  detail::MappedFile file_;
  std::vector<TensorInfo> tensors_;  // in data order
  std::map<std::string, std::string> metadata_;
};

/// Collects tensors (copying their bytes) and metadata, then writes them atomically, tensors in
/// insertion order, the header padded with spaces so the data section starts 8-byte aligned.
class SafetensorsWriter {
 public:
  /// Adds a tensor from its raw little-endian bytes (element_size(dtype) × product(shape)).
  /// @throws Error naming the tensor on an empty, reserved ("__metadata__") or duplicate name,
  ///         a negative extent, or a data size that does not match dtype × shape.
  void add_raw(std::string name, DType dtype, std::vector<std::int64_t> shape,
               std::span<const std::byte> data);
  /// add_raw as F32. @throws as add_raw.
  void add_float(std::string name, std::vector<std::int64_t> shape, std::span<const float> data);
  /// add_raw as I64. @throws as add_raw.
  void add_int64(std::string name, std::vector<std::int64_t> shape,
                 std::span<const std::int64_t> data);
  /// Sets (or replaces) one `__metadata__` entry.
  void set_metadata(std::string key, std::string value);
  /// Writes the file atomically (see write_file_atomically).
  /// @throws Error naming the path on an I/O failure or a name or metadata string that is not
  ///         valid UTF-8.
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
