// Strict reading of the YAML configuration files of both programs. A reader is asked for the
// keys it knows, by dotted path ("limits.poll_max_wait"); at the end, Finish() reports every
// problem at once, each on its own line as "FILE:LINE: KEY: what is wrong", including keys
// nobody asked for (typos are errors, not silently ignored settings). Finish() logs a warning
// (config_key_renamed) for each renamed key still written under its former name.
#ifndef FEDMOE_CONFIG_YAML_CONFIG_H_
#define FEDMOE_CONFIG_YAML_CONFIG_H_

#include <cstdint>
#include <filesystem>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace YAML {
class Node;
}

namespace fedmoe::config {

class YamlConfigReader {
 public:
  static absl::StatusOr<YamlConfigReader> FromFile(const std::filesystem::path& path);
  static absl::StatusOr<YamlConfigReader> FromString(const std::string& text,
                                                     std::string source_name);

  YamlConfigReader(YamlConfigReader&&) noexcept;
  YamlConfigReader& operator=(YamlConfigReader&&) noexcept;
  ~YamlConfigReader();

  // Each Read leaves *out unchanged when the key is absent, so defaults are set beforehand.
  // A present key of the wrong type records an error.
  void Read(std::string_view key, std::string* out);
  void Read(std::string_view key, int64_t* out);
  void Read(std::string_view key, bool* out);
  void Read(std::string_view key, double* out);
  // Durations are written as absl does: "30s", "5m", "720h", "1h30m".
  void Read(std::string_view key, absl::Duration* out);
  void Read(std::string_view key, std::vector<std::string>* out);
  // Records an error when the key is absent, or its value is an empty scalar.
  void Require(std::string_view key);
  // Records an error against a key that was read but whose value is unacceptable.
  void Invalid(std::string_view key, std::string_view why);

  // The key to read for a setting named `key` that used to be called `former`: `former` when
  // only it is present, which records a warning that names the new key (warnings()); `key`
  // otherwise. Both present is an error. `how` tells the reader how to convert, if the
  // meaning changed too.
  std::string Renamed(std::string_view key, std::string_view former, std::string_view how = "");
  // Each "FILE:LINE: KEY: ..." warning so far: a former name in use.
  const std::vector<std::string>& warnings() const { return warnings_; }

  // OK, or InvalidArgument listing every problem, one per line.
  absl::Status Finish();

 private:
  YamlConfigReader(std::unique_ptr<YAML::Node> root, std::string source);
  // The node at `key`, or a null pointer when absent; marks the key as known.
  const YAML::Node* Find(std::string_view key);
  void Error(const YAML::Node* node, std::string_view key, std::string_view why);
  void CollectUnknown(const YAML::Node& node, const std::string& prefix);

  std::unique_ptr<YAML::Node> root_;
  std::vector<std::unique_ptr<YAML::Node>> found_;
  std::string source_;
  std::set<std::string> known_keys_;
  std::vector<std::string> errors_;
  std::vector<std::string> warnings_;
};

}  // namespace fedmoe::config

#endif  // FEDMOE_CONFIG_YAML_CONFIG_H_
