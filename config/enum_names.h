// The names of an enum's values as configs, flags, logs and files spell them: one table per enum,
// read both ways, so that what a program prints is what it parses. Header-only, for every
// library, the kernels and the logger included.
#ifndef FEDMOE_CONFIG_ENUM_NAMES_H_
#define FEDMOE_CONFIG_ENUM_NAMES_H_

#include <cstddef>
#include <optional>
#include <string_view>

namespace fedmoe::config {

template <typename Enum>
struct EnumName {
  Enum value;
  std::string_view name;
};

// `value`'s name in `table`, or `missing` when the table has no entry for it.
template <typename Enum, size_t N>
constexpr std::string_view NameOf(const EnumName<Enum> (&table)[N], Enum value,
                                  std::string_view missing) {
  for (const EnumName<Enum>& entry : table) {
    if (entry.value == value) return entry.name;
  }
  return missing;
}

// The value named `name` in `table`, exactly as spelled there; nullopt for any other name.
template <typename Enum, size_t N>
constexpr std::optional<Enum> ValueOf(const EnumName<Enum> (&table)[N], std::string_view name) {
  for (const EnumName<Enum>& entry : table) {
    if (entry.name == name) return entry.value;
  }
  return std::nullopt;
}

}  // namespace fedmoe::config

#endif  // FEDMOE_CONFIG_ENUM_NAMES_H_
