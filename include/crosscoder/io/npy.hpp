#pragma once
/// @file npy.hpp
/// NumPy .npy files: memory-mapped reading (format versions 1.0, 2.0, 3.0) and writing.

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "crosscoder/io/mapped_file.hpp"

namespace crosscoder::io {

/// A memory-mapped .npy array in C order. Little-endian float32 ('<f4'), float16 ('<f2') and
/// float64 ('<f8') convert to float32; integer types ('<i4', '<i8', '|i1', '|u1') are readable
/// as integers.
class NpyFile {
 public:
  /// @throws Error naming the file and the field when the magic, version, header, dtype, byte
  ///         order or Fortran order is unsupported, or the file is shorter than the shape needs.
  static NpyFile open(const std::filesystem::path& path);

  const std::filesystem::path& path() const noexcept { return file_.path(); }
  const std::vector<std::size_t>& shape() const noexcept { return shape_; }
  /// The dtype descriptor as written, e.g. "<f4".
  const std::string& descr() const noexcept { return descr_; }
  std::size_t item_size() const noexcept { return item_size_; }
  /// shape[0] (1 for a 0-d array).
  std::size_t rows() const noexcept;
  /// Product of the remaining dimensions.
  std::size_t row_width() const noexcept;

  /// Converts rows [first_row, first_row + count) to float32 into out[count · row_width()].
  /// @throws Error when the rows are out of range or the dtype is not floating point.
  void read_rows_float(std::size_t first_row, std::size_t count, float* out) const;
  /// Reads every element as int64 (integer dtypes only).
  std::vector<std::int64_t> read_int() const;

 private:
  MappedFile file_;
  std::vector<std::size_t> shape_;
  std::string descr_;
  std::size_t item_size_ = 0;
  std::span<const std::byte> data_;
};

/// Writes a C-order little-endian float32 array (format 1.0, data aligned to 64 bytes; 2.0 when
/// the header would not fit 1.0), atomically. @throws Error when shape and data disagree.
void write_npy(const std::filesystem::path& path, const std::vector<std::size_t>& shape,
               std::span<const float> data);
/// The same for int32 ('<i4').
void write_npy(const std::filesystem::path& path, const std::vector<std::size_t>& shape,
               std::span<const std::int32_t> data);

}  // namespace crosscoder::io
