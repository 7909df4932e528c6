#pragma once
// Arrays across the Python boundary. Inputs are read in place: a float32 C-contiguous array on
// the CPU (NumPy, or anything with __dlpack__ such as a torch tensor) is passed to the library as
// a pointer, never converted. Anything else is refused with a crosscoder::Error that names the
// argument, its dtype, device and shape, so nothing is silently copied to another dtype.
// Outputs are std::vectors handed to NumPy, which owns them from then on (no copy).

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace crosscoder::python {

namespace nb = nanobind;

/// A non-negative count as a size (shapes of the arrays handed to NumPy).
inline std::size_t size(std::int64_t n) { return static_cast<std::size_t>(n); }

/// "float32", "int64", ... for messages.
std::string dtype_name(nb::dlpack::dtype dtype);
/// "(4, 2, 16)" for messages.
std::string shape_text(const nb::ndarray<nb::ro>& array);

/// A checked view of a row-major array: `rows` rows of `columns` elements each.
template <typename T>
struct RowsView {
  T* data = nullptr;
  std::int64_t rows = 0;
  std::int64_t columns = 0;
  std::span<T> span() const { return {data, static_cast<std::size_t>(rows * columns)}; }
};

/// Checks that `array` holds element type `Element` on the CPU, C-contiguous, and has either
/// the shape [rows, columns] or [rows, sources, width] with sources·width = columns (columns ≤ 0:
/// any trailing shape). `what` names the argument in the error.
template <typename Element>
RowsView<const Element> rows_of(const nb::ndarray<nb::ro>& array, const char* what,
                                std::int64_t columns, int sources = 0, int width = 0);

/// The same for an array the call writes into (e.g. Steerer.apply's rows).
RowsView<float> writable_rows(const nb::ndarray<>& array, const char* what, std::int64_t columns);

/// A one-dimensional array of `Element` with `count` entries (count < 0: any).
template <typename Element>
std::span<const Element> vector_of(const nb::ndarray<nb::ro>& array, const char* what,
                                   std::int64_t count = -1);

/// Hands `values` to NumPy as an array of the given shape, without copying.
template <typename T>
nb::ndarray<nb::numpy, T> to_numpy(std::vector<T>&& values, const std::vector<std::size_t>& shape) {
  auto* owned = new std::vector<T>(std::move(values));
  nb::capsule owner(owned, [](void* p) noexcept { delete static_cast<std::vector<T>*>(p); });
  return nb::ndarray<nb::numpy, T>(owned->data(), shape.size(), shape.data(), owner);
}

/// A copy of `values` as a NumPy array (for vectors the library keeps).
template <typename T>
nb::ndarray<nb::numpy, T> copy_to_numpy(const std::vector<T>& values,
                                        const std::vector<std::size_t>& shape) {
  return to_numpy(std::vector<T>(values), shape);
}

/// A copy of a per-row table the library keeps flat ([rows, columns] row-major), shaped [rows]
/// when it has one column, else [rows, columns].
template <typename T>
nb::ndarray<nb::numpy, T> table(const std::vector<T>& values, std::int64_t rows) {
  const std::size_t n = size(rows);
  const std::size_t columns = n == 0 ? 0 : values.size() / n;
  return copy_to_numpy(
      values, columns == 1 ? std::vector<std::size_t>{n} : std::vector<std::size_t>{n, columns});
}

}  // namespace crosscoder::python
