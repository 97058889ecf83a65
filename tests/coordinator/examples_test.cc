// The documented example configurations load, and document every option the programs write.
#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include <set>

#include "absl/strings/str_cat.h"
#include "client/client_config.h"
#include "coordinator/config.h"

namespace fedmoe {
namespace {

// Every key path of a YAML mapping, nested ones as "a.b".
std::set<std::string> KeyPaths(const YAML::Node& node, const std::string& prefix = "") {
  std::set<std::string> keys;
  if (!node.IsMap()) return keys;
  for (const auto& entry : node) {
    const std::string key = absl::StrCat(prefix, entry.first.Scalar());
    keys.insert(key);
    for (const std::string& nested : KeyPaths(entry.second, absl::StrCat(key, "."))) {
      keys.insert(nested);
    }
  }
  return keys;
}

const std::string kExamples = FEDMOE_SOURCE_DIR "/deploy/examples/";

TEST(ExampleConfigTest, CoordinatorExampleLoadsAndCoversEveryOption) {
  auto example = coordinator::CoordinatorConfig::Load(kExamples + "coordinator.yaml");
  ASSERT_TRUE(example.ok()) << example.status();
  EXPECT_EQ(example->advertised_endpoint(), "coordinator.example.org:7443");
  coordinator::CoordinatorConfig defaults;
  defaults.federation = std::string("acme");
  defaults.state_dir.root = "/x";
  EXPECT_EQ(KeyPaths(YAML::Load(defaults.ToYaml())),
            KeyPaths(YAML::LoadFile(kExamples + "coordinator.yaml")));
}

TEST(ExampleConfigTest, ClientExampleLoadsAndCoversEveryOption) {
  auto example = client::ClientConfig::Load(kExamples + "client.yaml");
  ASSERT_TRUE(example.ok()) << example.status();
  EXPECT_EQ(example->backoff_max, absl::Minutes(1));
  client::ClientConfig defaults;
  defaults.client_id = std::string("bank");
  defaults.federation = std::string("acme");
  defaults.coordinator = std::string("h:1");
  defaults.state_dir.root = "/x";
  EXPECT_EQ(KeyPaths(YAML::Load(defaults.ToYaml())),
            KeyPaths(YAML::LoadFile(kExamples + "client.yaml")));
}

}  // namespace
}  // namespace fedmoe
