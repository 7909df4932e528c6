#pragma once
// One way to name and parse the library's enums: a table of (value, name) per enum, the first
// entry of a value being its name and later ones accepted aliases. to_string of a value outside
// the table (an integer cast to the enum) gives "unknown"; parsing unknown text throws Error
// listing the names. Internal.

#include <fmt/format.h>

#include <cstddef>
#include <string>
#include <string_view>

#include "crosscoder/error.hpp"

namespace crosscoder::detail {

template <typename Enum>
struct EnumName {
  Enum value;
  std::string_view name;
};

template <typename Enum, std::size_t N>
constexpr std::string_view enum_name(const EnumName<Enum> (&table)[N], Enum value) noexcept {
  for (const EnumName<Enum>& entry : table) {
    if (entry.value == value) return entry.name;
  }
  return "unknown";
}

/// "a, b or c": the names of the table, aliases left out.
template <typename Enum, std::size_t N>
std::string enum_choices(const EnumName<Enum> (&table)[N]) {
  std::string text;
  std::size_t listed = 0, names = 0;
  for (std::size_t i = 0; i < N; ++i) names += enum_name(table, table[i].value) == table[i].name;
  for (std::size_t i = 0; i < N; ++i) {
    if (enum_name(table, table[i].value) != table[i].name) continue;  // an alias
    if (listed > 0) text += listed + 1 == names ? " or " : ", ";
    text += table[i].name;
    ++listed;
  }
  return text;
}

/// @throws Error `unknown <what> "<text>" (expected a, b or c)`.
template <typename Enum, std::size_t N>
Enum parse_enum(const EnumName<Enum> (&table)[N], std::string_view text, std::string_view what) {
  for (const EnumName<Enum>& entry : table) {
    if (entry.name == text) return entry.value;
  }
  throw Error(fmt::format("unknown {} \"{}\" (expected {})", what, text, enum_choices(table)));
}

}  // namespace crosscoder::detail
