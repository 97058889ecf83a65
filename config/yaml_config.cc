#include "config/yaml_config.h"

#include <yaml-cpp/yaml.h>

#include <fstream>
#include <sstream>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "logging/log.h"

namespace fedmoe::config {

YamlConfigReader::YamlConfigReader(std::unique_ptr<YAML::Node> root, std::string source)
    : root_(std::move(root)), source_(std::move(source)) {}
YamlConfigReader::YamlConfigReader(YamlConfigReader&&) noexcept = default;
YamlConfigReader& YamlConfigReader::operator=(YamlConfigReader&&) noexcept = default;
YamlConfigReader::~YamlConfigReader() = default;

absl::StatusOr<YamlConfigReader> YamlConfigReader::FromFile(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read config ", path.string()));
  std::ostringstream text;
  text << in.rdbuf();
  return FromString(text.str(), path.string());
}

absl::StatusOr<YamlConfigReader> YamlConfigReader::FromString(const std::string& text,
                                                              std::string source_name) {
  // yaml-cpp reports errors by exception; none may leave this library.
  try {
    auto root = std::make_unique<YAML::Node>(YAML::Load(text));
    if (!root->IsMap() && !root->IsNull()) {
      return absl::InvalidArgumentError(
          absl::StrCat(source_name, ": the configuration must be a mapping of keys to values"));
    }
    return YamlConfigReader(std::move(root), std::move(source_name));
  } catch (const YAML::Exception& error) {
    return absl::InvalidArgumentError(
        absl::StrCat(source_name, ":", error.mark.line + 1, ": not valid YAML: ", error.msg));
  }
}

const YAML::Node* YamlConfigReader::Find(std::string_view key) {
  known_keys_.insert(std::string(key));
  // Parents of a dotted key are known too.
  for (size_t dot = key.find('.'); dot != std::string_view::npos; dot = key.find('.', dot + 1)) {
    known_keys_.insert(std::string(key.substr(0, dot)));
  }
  // yaml-cpp's assignment writes through to the referenced node and its non-const operator[]
  // inserts keys: walk with reset() and const lookups so reading never changes the document.
  YAML::Node node;
  node.reset(*root_);
  const std::vector<std::string> parts = absl::StrSplit(std::string(key), '.');
  for (const std::string& part : parts) {
    if (!node.IsMap()) return nullptr;
    const YAML::Node& parent = node;
    YAML::Node child = parent[part];
    if (!child.IsDefined() || child.IsNull()) return nullptr;
    node.reset(child);
  }
  found_.push_back(std::make_unique<YAML::Node>(node));
  return found_.back().get();
}

void YamlConfigReader::Error(const YAML::Node* node, std::string_view key, std::string_view why) {
  const int line = node != nullptr ? node->Mark().line + 1 : 0;
  errors_.push_back(
      line > 0 ? absl::StrCat(source_, ":", line, ": ", std::string(key), ": ", std::string(why))
               : absl::StrCat(source_, ": ", std::string(key), ": ", std::string(why)));
}

namespace {

// What an error says it got: a scalar quoted, cut to a line's worth (a 10 MB value is not
// echoed whole) and made printable; "a list" or "a mapping" otherwise.
std::string Shown(const YAML::Node& node) {
  if (node.IsSequence()) return "a list";
  if (node.IsMap()) return "a mapping";
  if (!node.IsScalar()) return "nothing";
  constexpr size_t kShownBytes = 64;
  const std::string& value = node.Scalar();
  std::string shown = absl::StrCat("'", PrintableLine(value, kShownBytes), "'");
  if (value.size() > kShownBytes) absl::StrAppend(&shown, "... (", value.size(), " bytes)");
  return shown;
}

}  // namespace

void YamlConfigReader::Read(std::string_view key, std::string* out) {
  const YAML::Node* node = Find(key);
  if (node == nullptr) return;
  if (!node->IsScalar())
    return Error(node, key, absl::StrCat("expected a string, got ", Shown(*node)));
  *out = node->Scalar();
}

void YamlConfigReader::Read(std::string_view key, int64_t* out) {
  const YAML::Node* node = Find(key);
  if (node == nullptr) return;
  int64_t value = 0;
  if (!node->IsScalar() || !YAML::convert<int64_t>::decode(*node, value)) {
    return Error(node, key, absl::StrCat("expected an integer, got ", Shown(*node)));
  }
  *out = value;
}

void YamlConfigReader::Read(std::string_view key, bool* out) {
  const YAML::Node* node = Find(key);
  if (node == nullptr) return;
  bool value = false;
  if (!node->IsScalar() || !YAML::convert<bool>::decode(*node, value)) {
    return Error(node, key, absl::StrCat("expected true or false, got ", Shown(*node)));
  }
  *out = value;
}

void YamlConfigReader::Read(std::string_view key, double* out) {
  const YAML::Node* node = Find(key);
  if (node == nullptr) return;
  double value = 0;
  if (!node->IsScalar() || !YAML::convert<double>::decode(*node, value)) {
    return Error(node, key, absl::StrCat("expected a number, got ", Shown(*node)));
  }
  *out = value;
}

void YamlConfigReader::Read(std::string_view key, absl::Duration* out) {
  const YAML::Node* node = Find(key);
  if (node == nullptr) return;
  absl::Duration value;
  if (!node->IsScalar() || !absl::ParseDuration(node->Scalar(), &value)) {
    return Error(node, key,
                 absl::StrCat("expected a duration such as 30s, 5m or 720h, got ", Shown(*node)));
  }
  *out = value;
}

void YamlConfigReader::Read(std::string_view key, std::vector<std::string>* out) {
  const YAML::Node* node = Find(key);
  if (node == nullptr) return;
  if (!node->IsSequence()) return Error(node, key, "expected a list");
  std::vector<std::string> values;
  for (const YAML::Node& item : *node) {
    if (!item.IsScalar()) return Error(&item, key, "expected a list of strings");
    values.push_back(item.Scalar());
  }
  *out = std::move(values);
}

void YamlConfigReader::Require(std::string_view key) {
  const YAML::Node* node = Find(key);
  if (node == nullptr) return Error(nullptr, key, "is required");
  // `client_id: ""`, or a tag with nothing after it, is present but says nothing.
  if (node->IsScalar() && node->Scalar().empty()) Error(node, key, "is required and is empty");
}

void YamlConfigReader::Invalid(std::string_view key, std::string_view why) {
  Error(Find(key), key, why);
}

void YamlConfigReader::CollectUnknown(const YAML::Node& node, const std::string& prefix) {
  if (!node.IsMap()) return;
  // yaml-cpp keeps every pair of a map, but a lookup finds only the first: a key set twice
  // would silently lose its second value.
  absl::flat_hash_map<std::string, int> first_line;
  for (const auto& entry : node) {
    const std::string key =
        prefix.empty() ? entry.first.Scalar() : absl::StrCat(prefix, ".", entry.first.Scalar());
    if (const auto [earlier, inserted] = first_line.emplace(key, entry.first.Mark().line + 1);
        !inserted) {
      Error(&entry.first, key,
            absl::StrCat("set twice (first at line ", earlier->second,
                         "); only the first would count, so remove one"));
      continue;
    }
    if (!known_keys_.contains(key)) {
      Error(&entry.first, key, "unknown key (misspelt, or not an option of this version)");
      continue;
    }
    CollectUnknown(entry.second, key);
  }
}

std::string YamlConfigReader::Renamed(std::string_view key, std::string_view former,
                                      std::string_view how) {
  const std::string name(key);
  const std::string former_name(former);
  const YAML::Node* current = Find(key);
  const YAML::Node* old = Find(former);
  if (old == nullptr) return name;
  if (current != nullptr) {
    Error(old, former,
          absl::StrCat("is the former name of ", name, ", which is set too; remove it"));
    return name;
  }
  warnings_.push_back(
      absl::StrCat(source_, ":", old->Mark().line + 1, ": ", former_name, ": renamed ", name,
                   how.empty() ? std::string() : absl::StrCat(" (", std::string(how), ")"),
                   "; the former name still works, but write the new one"));
  return former_name;
}

absl::Status YamlConfigReader::Finish() {
  for (const std::string& warning : warnings_) {
    LogEvent(LogLevel::kWarning, "config_key_renamed").Field("detail", warning);
  }
  CollectUnknown(*root_, "");
  if (errors_.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrJoin(errors_, "\n"));
}

}  // namespace fedmoe::config
