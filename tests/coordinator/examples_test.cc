// The documented example configurations load, and document every option the programs write.
#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include <set>

#include "absl/strings/str_cat.h"
#include "client/client_config.h"
#include "client/train_options.h"
#include "config/yaml_config.h"
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

TEST(ExampleConfigTest, TrainExampleLoadsAndStatesTheDefaults) {
  absl::StatusOr<config::YamlConfigReader> reader =
      config::YamlConfigReader::FromFile(kExamples + "train.yaml");
  ASSERT_TRUE(reader.ok()) << reader.status();
  model::TrainOptions options;
  int64_t threads = 7;
  client::ReadTrainOptions(*reader, "", &options, &threads);
  ASSERT_TRUE(reader->Finish().ok()) << reader->Finish();
  const model::TrainOptions defaults;
  EXPECT_EQ(options.steps, defaults.steps);
  EXPECT_EQ(options.batch_size, defaults.batch_size);
  EXPECT_EQ(options.seq_len, defaults.seq_len);
  EXPECT_EQ(options.learning_rate, defaults.learning_rate);
  EXPECT_EQ(options.warmup_steps, defaults.warmup_steps);
  EXPECT_EQ(options.adamw.beta2, defaults.adamw.beta2);
  EXPECT_EQ(options.adamw.weight_decay, defaults.adamw.weight_decay);
  EXPECT_EQ(options.balance_coefficient, defaults.balance_coefficient);
  EXPECT_EQ(options.validation_fraction, defaults.validation_fraction);
  EXPECT_EQ(options.trainable.routed_experts, defaults.trainable.routed_experts);
  EXPECT_EQ(options.trainable.attention, defaults.trainable.attention);
  EXPECT_EQ(threads, 0);
  // device: auto and matmul_precision: auto, as this machine resolves them.
  const absl::StatusOr<kernels::Device> device = kernels::ResolveDevice("auto");
  ASSERT_TRUE(device.ok());
  EXPECT_EQ(options.device, *device);
  EXPECT_EQ(options.matmul_precision, *model::ResolveMatMulPrecision("auto", *device));

  // A bad value is reported against its line.
  absl::StatusOr<config::YamlConfigReader> bad = config::YamlConfigReader::FromString(
      "steps: 10\nschedule: linear\ntrainable: [experts, brains]\nmatmul_precision: fp8\n"
      "device: tpu\n",
      "bad.yaml");
  ASSERT_TRUE(bad.ok());
  client::ReadTrainOptions(*bad, "", &options, &threads);
  const absl::Status status = bad->Finish();
  EXPECT_NE(status.message().find("bad.yaml:2: schedule: must be cosine or constant"),
            std::string::npos)
      << status;
  EXPECT_NE(status.message().find("bad.yaml:3: trainable: unknown trainable part 'brains'"),
            std::string::npos)
      << status;
  EXPECT_NE(status.message().find(
                "bad.yaml:4: matmul_precision: unknown matmul precision 'fp8' (auto, fp32, bf16)"),
            std::string::npos)
      << status;
  EXPECT_NE(
      status.message().find("bad.yaml:5: device: unknown device 'tpu': expected cpu, cuda or auto"),
      std::string::npos)
      << status;
}

}  // namespace
}  // namespace fedmoe
