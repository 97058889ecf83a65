// The documented example configurations load, and document every option the programs write.
#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <fstream>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/client_config.h"
#include "client/train_options.h"
#include "config/yaml_config.h"
#include "coordinator/config.h"
#include "coordinator/round/round_policy.h"
#include "model/trainer.h"
#include "tests/testing_temp_dir.h"

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

// Found by tests/fuzz/config_fuzz.cc: std::filesystem::is_directory threw for a path longer
// than PATH_MAX, and the uncaught exception took the daemon down.
TEST(ExampleConfigTest, AClientDataPathTheSystemCannotLookAtIsAnErrorNotACrash) {
  testing::TempDir dir;
  const std::filesystem::path path = dir.path() / "client.yaml";
  std::ofstream(path) << "client_id: bank\nfederation: acme\ncoordinator: h:1\nstate_dir: /x\n"
                      << "training:\n  data: /" << std::string(5000, 'd') << "\n";
  absl::StatusOr<client::ClientConfig> config = client::ClientConfig::Load(path);
  ASSERT_FALSE(config.ok());
  EXPECT_NE(config.status().message().find("training.data"), std::string::npos) << config.status();
}

// Found by tests/fuzz/config_fuzz.cc: a required key whose value is empty (a bare YAML tag)
// passed Require, and the client loaded with no client id.
TEST(ExampleConfigTest, ARequiredKeyWithAnEmptyValueIsAnError) {
  testing::TempDir dir;
  const std::filesystem::path client = dir.path() / "client.yaml";
  std::ofstream(client) << "client_id: !bank\nfederation: acme\ncoordinator: h:1\nstate_dir: /x\n";
  absl::StatusOr<client::ClientConfig> loaded = client::ClientConfig::Load(client);
  ASSERT_FALSE(loaded.ok());
  EXPECT_NE(loaded.status().message().find("client_id: is required and is empty"),
            std::string::npos)
      << loaded.status();
  const std::filesystem::path coordinator = dir.path() / "coordinator.yaml";
  std::ofstream(coordinator) << "federation: \"\"\nstate_dir: /x\n";
  absl::StatusOr<coordinator::CoordinatorConfig> config =
      coordinator::CoordinatorConfig::Load(coordinator);
  ASSERT_FALSE(config.ok());
  EXPECT_NE(config.status().message().find("federation: is required and is empty"),
            std::string::npos)
      << config.status();
}

TEST(ExampleConfigTest, TrainExampleLoadsAndStatesTheDefaults) {
  absl::StatusOr<config::YamlConfigReader> reader =
      config::YamlConfigReader::FromFile(kExamples + "train.yaml");
  ASSERT_TRUE(reader.ok()) << reader.status();
  model::TrainOptions options;
  int64_t threads = 7;
  client::ReadTrainOptions(*reader, "", &options, &threads);
  client::ReadAdapterTrainingOptions(*reader, "", &options);
  ASSERT_TRUE(reader->Finish().ok()) << reader->Finish();
  const model::TrainOptions defaults;
  EXPECT_FALSE(options.adapters.enabled);
  EXPECT_EQ(options.adapters.lora.rank, defaults.adapters.lora.rank);
  EXPECT_EQ(options.adapters.lora.alpha, defaults.adapters.lora.alpha);
  EXPECT_EQ(options.adapters.lora.targets, defaults.adapters.lora.targets);
  EXPECT_EQ(options.adapters.lora.train_a, defaults.adapters.lora.train_a);
  EXPECT_FALSE(options.adapters.base_format.has_value());
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

// train.yaml and a round policy's `rounds.training:` block: one set of keys, one set of
// defaults, and the former names still accepted, with a warning that points at the line.
model::TrainOptions ReadTrainYaml(const std::string& text) {
  absl::StatusOr<config::YamlConfigReader> reader =
      config::YamlConfigReader::FromString(text, "train.yaml");
  EXPECT_TRUE(reader.ok());
  model::TrainOptions options;
  int64_t threads = 0;
  client::ReadTrainOptions(*reader, "", &options, &threads);
  EXPECT_TRUE(reader->Finish().ok()) << reader->Finish();
  return options;
}

v1::LocalTrainingConfig ReadRoundTraining(const std::string& keys,
                                          std::vector<std::string>* warnings = nullptr) {
  std::string text = "rounds:\n  training:\n";
  for (absl::string_view line : absl::StrSplit(keys, '\n', absl::SkipEmpty())) {
    absl::StrAppend(&text, "    ", line, "\n");
  }
  absl::StatusOr<config::YamlConfigReader> reader =
      config::YamlConfigReader::FromString(text, "coordinator.yaml");
  EXPECT_TRUE(reader.ok());
  coordinator::RoundPolicy policy;
  coordinator::ReadRoundPolicy(*reader, &policy);
  EXPECT_TRUE(reader->Finish().ok()) << reader->Finish();
  if (warnings != nullptr) *warnings = reader->warnings();
  return policy.training;
}

void ExpectSameTraining(const model::TrainOptions& options,
                        const v1::LocalTrainingConfig& training) {
  EXPECT_EQ(training.steps(), options.steps);
  EXPECT_EQ(training.batch_size(), options.batch_size);
  EXPECT_EQ(training.seq_len(), options.seq_len);
  EXPECT_EQ(training.gradient_accumulation(), options.gradient_accumulation);
  EXPECT_EQ(training.learning_rate(), options.learning_rate);
  EXPECT_EQ(training.warmup_steps(), model::WarmupSteps(options));
  EXPECT_EQ(training.schedule() == v1::LocalTrainingConfig::LEARNING_RATE_SCHEDULE_CONSTANT,
            options.schedule == model::Schedule::kConstant);
  EXPECT_DOUBLE_EQ(training.min_learning_rate(),
                   options.min_learning_rate_ratio * options.learning_rate);
  EXPECT_EQ(training.weight_decay(), options.adamw.weight_decay);
  EXPECT_EQ(training.adam_beta1(), options.adamw.beta1);
  EXPECT_EQ(training.adam_beta2(), options.adamw.beta2);
  EXPECT_EQ(training.adam_epsilon(), options.adamw.epsilon);
  EXPECT_EQ(training.gradient_clip_norm(), options.max_gradient_norm);
  EXPECT_EQ(training.load_balance_coefficient(), options.balance_coefficient);
  EXPECT_EQ(training.seed(), options.seed);
}

TEST(TrainingVocabularyTest, TrainYamlAndTheRoundPolicyShareKeysAndDefaults) {
  ExpectSameTraining(model::TrainOptions{}, coordinator::DefaultLocalTraining());
  ExpectSameTraining(ReadTrainYaml("steps: 30\n"), ReadRoundTraining("steps: 30\n"));
  const std::string every_key =
      "steps: 7\nbatch_size: 3\nseq_len: 32\ngradient_accumulation: 2\nlearning_rate: 0.01\n"
      "warmup_steps: 2\nschedule: constant\nmin_learning_rate_ratio: 0.2\nweight_decay: 0.1\n"
      "beta1: 0.8\nbeta2: 0.99\nepsilon: 1.0e-6\nmax_gradient_norm: 0.5\n"
      "load_balance_coefficient: 0.02\nseed: 9\n";
  const model::TrainOptions options = ReadTrainYaml(every_key);
  EXPECT_EQ(options.adamw.epsilon, 1.0e-6);
  EXPECT_EQ(options.balance_coefficient, 0.02);
  ExpectSameTraining(options, ReadRoundTraining(every_key));
}

TEST(TrainingVocabularyTest, FormerNamesStillWorkAndWarnWithTheirLine) {
  std::vector<std::string> warnings;
  const v1::LocalTrainingConfig training = ReadRoundTraining(
      "learning_rate: 0.01\nmin_learning_rate: 0.002\ngradient_clip_norm: 0.5\n", &warnings);
  EXPECT_DOUBLE_EQ(training.min_learning_rate(), 0.002);
  EXPECT_EQ(training.gradient_clip_norm(), 0.5);
  ASSERT_EQ(warnings.size(), 2u);
  EXPECT_EQ(warnings[0],
            "coordinator.yaml:4: rounds.training.min_learning_rate: renamed "
            "rounds.training.min_learning_rate_ratio (as a share of learning_rate); the former "
            "name still works, but write the new one");

  absl::StatusOr<config::YamlConfigReader> reader = config::YamlConfigReader::FromString(
      "learning_rate: 0.002\nmin_learning_rate: 0.001\nbalance_coefficient: 0.03\n", "t.yaml");
  ASSERT_TRUE(reader.ok());
  model::TrainOptions options;
  int64_t threads = 0;
  client::ReadTrainOptions(*reader, "", &options, &threads);
  ASSERT_TRUE(reader->Finish().ok()) << reader->Finish();
  EXPECT_DOUBLE_EQ(options.min_learning_rate_ratio, 0.5);
  EXPECT_EQ(options.balance_coefficient, 0.03);
  ASSERT_EQ(reader->warnings().size(), 2u);
  EXPECT_NE(reader->warnings()[1].find("t.yaml:3: balance_coefficient: renamed "
                                       "load_balance_coefficient"),
            std::string::npos);

  // Both names at once is a mistake, not a choice.
  absl::StatusOr<config::YamlConfigReader> both = config::YamlConfigReader::FromString(
      "max_gradient_norm: 1\ngradient_clip_norm: 2\n", "both.yaml");
  ASSERT_TRUE(both.ok());
  client::ReadTrainOptions(*both, "", &options, &threads);
  EXPECT_NE(both->Finish().message().find("both.yaml:2: gradient_clip_norm: is the former name "
                                          "of max_gradient_norm, which is set too"),
            std::string::npos)
      << both->Finish();
}

}  // namespace
}  // namespace fedmoe
