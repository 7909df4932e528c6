#include "arrays.hpp"

#include <fmt/format.h>

#include "crosscoder/error.hpp"

namespace crosscoder::python {

std::string dtype_name(nb::dlpack::dtype dtype) {
  const char* kind = "unknown";
  switch (static_cast<nb::dlpack::dtype_code>(dtype.code)) {
    case nb::dlpack::dtype_code::Int:
      kind = "int";
      break;
    case nb::dlpack::dtype_code::UInt:
      kind = "uint";
      break;
    case nb::dlpack::dtype_code::Float:
      kind = "float";
      break;
    case nb::dlpack::dtype_code::Bfloat:
      kind = "bfloat";
      break;
    case nb::dlpack::dtype_code::Bool:
      return "bool";
    default:
      break;
  }
  return fmt::format("{}{}", kind, dtype.bits);
}

std::string shape_text(const nb::ndarray<nb::ro>& array) {
  std::string text = "(";
  for (std::size_t i = 0; i < array.ndim(); ++i)
    text += fmt::format("{}{}", i ? ", " : "", array.shape(i));
  if (array.ndim() == 1) text += ",";
  return text + ")";
}

namespace {

// C-contiguous: strides (in elements) are the suffix products of the shape; axes of length 1
// may carry any stride (torch reports such strides freely).
bool c_contiguous(const nb::ndarray<nb::ro>& array) {
  std::int64_t expected = 1;
  for (std::size_t i = array.ndim(); i-- > 0;) {
    if (array.shape(i) != 1 && array.stride(i) != expected) return false;
    expected *= static_cast<std::int64_t>(array.shape(i));
  }
  return true;
}

void require_cpu_contiguous(const nb::ndarray<nb::ro>& array, const char* what,
                            nb::dlpack::dtype expected) {
  if (!array.is_valid()) throw Error(fmt::format("{}: expected an array, got None", what));
  if (array.device_type() != nb::device::cpu::value) {
    throw Error(fmt::format(
        "{}: the array is on a device (DLPack device type {}); pass a CPU array (torch: "
        ".cpu()), the library copies to its backend itself",
        what, array.device_type()));
  }
  if (array.dtype() != expected) {
    throw Error(
        fmt::format("{}: expected {} elements, got {} (shape {}); convert it explicitly, "
                    "e.g. numpy's .astype(np.{}) or torch's .to(torch.{})",
                    what, dtype_name(expected), dtype_name(array.dtype()), shape_text(array),
                    dtype_name(expected), dtype_name(expected)));
  }
  if (!c_contiguous(array)) {
    throw Error(
        fmt::format("{}: the array of shape {} is not C-contiguous; pass "
                    "numpy.ascontiguousarray(x) or x.contiguous()",
                    what, shape_text(array)));
  }
}

}  // namespace

template <typename Element>
RowsView<const Element> rows_of(const nb::ndarray<nb::ro>& array, const char* what,
                                std::int64_t columns, int sources, int width) {
  require_cpu_contiguous(array, what, nb::dtype<Element>());
  RowsView<const Element> view;
  view.data = static_cast<const Element*>(array.data());
  const std::size_t ndim = array.ndim();
  if (ndim == 0) throw Error(fmt::format("{}: expected rows, got a scalar", what));
  view.rows = static_cast<std::int64_t>(array.shape(0));
  std::int64_t trailing = 1;
  for (std::size_t i = 1; i < ndim; ++i) trailing *= static_cast<std::int64_t>(array.shape(i));
  view.columns = ndim == 1 ? 1 : trailing;
  if (columns <= 0) return view;
  const bool flat = ndim == 2 && view.columns == columns;
  const bool split = ndim == 3 && (sources <= 0 || (static_cast<int>(array.shape(1)) == sources &&
                                                    static_cast<int>(array.shape(2)) == width));
  if (!(flat || (split && view.columns == columns))) {
    const std::string expected =
        sources > 0 ? fmt::format("(rows, {}, {}) or (rows, {})", sources, width, columns)
                    : fmt::format("(rows, {})", columns);
    throw Error(fmt::format("{}: expected shape {}, got {}", what, expected, shape_text(array)));
  }
  return view;
}

template RowsView<const float> rows_of<float>(const nb::ndarray<nb::ro>&, const char*, std::int64_t,
                                              int, int);

RowsView<float> writable_rows(const nb::ndarray<>& array, const char* what, std::int64_t columns) {
  const nb::ndarray<nb::ro> read_only(array);
  const RowsView<const float> view = rows_of<float>(read_only, what, columns);
  return {const_cast<float*>(view.data), view.rows, view.columns};
}

template <typename Element>
std::span<const Element> vector_of(const nb::ndarray<nb::ro>& array, const char* what,
                                   std::int64_t count) {
  require_cpu_contiguous(array, what, nb::dtype<Element>());
  if (array.ndim() != 1) {
    throw Error(
        fmt::format("{}: expected a one-dimensional array, got shape {}", what, shape_text(array)));
  }
  const auto size = static_cast<std::int64_t>(array.shape(0));
  if (count >= 0 && size != count) {
    throw Error(fmt::format("{}: expected {} entries, got {}", what, count, size));
  }
  return {static_cast<const Element*>(array.data()), static_cast<std::size_t>(size)};
}

template std::span<const std::int8_t> vector_of<std::int8_t>(const nb::ndarray<nb::ro>&,
                                                             const char*, std::int64_t);
template std::span<const std::int32_t> vector_of<std::int32_t>(const nb::ndarray<nb::ro>&,
                                                               const char*, std::int64_t);
template std::span<const std::int64_t> vector_of<std::int64_t>(const nb::ndarray<nb::ro>&,
                                                               const char*, std::int64_t);
template std::span<const bool> vector_of<bool>(const nb::ndarray<nb::ro>&, const char*,
                                               std::int64_t);
template std::span<const float> vector_of<float>(const nb::ndarray<nb::ro>&, const char*,
                                                 std::int64_t);
template std::span<const double> vector_of<double>(const nb::ndarray<nb::ro>&, const char*,
                                                   std::int64_t);

}  // namespace crosscoder::python
