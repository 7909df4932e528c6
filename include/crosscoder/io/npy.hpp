#pragma once
/// @file npy.hpp
/// NumPy .npy files: memory-mapped reading (format versions 1.0, 2.0 and 3.0) and writing.

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "crosscoder/io/mapped_file.hpp"

namespace crosscoder::io {

/// How NpyFile::read_rows_float treats dtypes that are not floating point in NumPy's eyes.
struct NpyFloatOptions {
  /// Read '<u2' as bfloat16 bit patterns (NumPy has no bfloat16; such arrays are often saved
  /// as uint16). Off by default: a '<u2' array is then refused.
  bool u2_as_bfloat16 = false;
};

/// A memory-mapped .npy array in C order. Little-endian '<f4', '<f2' and '<f8' convert to
/// float32 (and '<u2' as bfloat16 on request); '<i8', '<i4', '<i2', '|i1', '|u1', '<u2' and
/// '|b1' read as integers.
class NpyFile {
 public:
  /// Parses the header (a Python dict literal with 'descr', 'fortran_order' and 'shape').
  /// @throws Error naming the file and the field at fault for a bad magic string, an
  ///         unsupported version, a malformed header, an unsupported or big-endian dtype,
  ///         Fortran order, or data shorter than product(shape) × item size (naming the
  ///         expected and actual byte counts).
  static NpyFile open(const std::filesystem::path& path);

  const std::filesystem::path& path() const noexcept { return file_.path(); }
  const std::vector<std::size_t>& shape() const noexcept { return shape_; }
  /// The dtype descriptor, e.g. "<f4" ("=" and, for one-byte types, any order mark are
  /// normalised to "<" and "|" as NumPy writes them).
  const std::string& descr() const noexcept { return descr_; }
  /// Bytes per element.
  std::size_t item_size() const noexcept { return item_size_; }
  /// shape[0] (1 for a 0-d array).
  std::size_t rows() const noexcept;
  /// Product of the remaining dimensions (elements per row).
  std::size_t row_width() const noexcept;

  /// Converts rows [first_row, first_row + count) to float32 into out[0, count · row_width()).
  /// @throws Error naming the file when the rows are out of range or the dtype is not
  ///         floating point (see NpyFloatOptions).
  void read_rows_float(std::size_t first_row, std::size_t count, float* out,
                       NpyFloatOptions options = {}) const;
  /// The raw little-endian element bytes (product(shape) × item_size()), valid while this
  /// object lives.
  std::span<const std::byte> data() const noexcept { return data_; }
  /// Every element as int64. @throws Error naming the file unless the dtype is an integer one.
  std::vector<std::int64_t> read_int() const;

 private:
  detail::MappedFile file_;
  std::vector<std::size_t> shape_;
  std::string descr_;
  std::size_t item_size_ = 0;
  std::span<const std::byte> data_;
};

/// Writes a C-order little-endian float32 ('<f4') array atomically, as numpy.save does: format
/// 1.0 with the data starting at a multiple of 64 bytes, or 2.0 when the header would not fit
/// 1.0's 16-bit length. @throws Error naming the path when product(shape) ≠ data.size() or on
/// an I/O failure.
void write_npy(const std::filesystem::path& path, const std::vector<std::size_t>& shape,
               std::span<const float> data);
/// The same for int32 ('<i4').
void write_npy(const std::filesystem::path& path, const std::vector<std::size_t>& shape,
               std::span<const std::int32_t> data);

/// Writes raw little-endian elements of dtype `descr` ('<f4', '<f2', '<u2', '<i2', '<i4',
/// '|i1' or '|u1') atomically, as write_npy does; '<u2' is how bfloat16 bits are stored.
/// @throws Error naming the path for another dtype, a size mismatch or an I/O failure.
void write_npy_raw(const std::filesystem::path& path, const std::vector<std::size_t>& shape,
                   const std::string& descr, std::span<const std::byte> data);

}  // namespace crosscoder::io
