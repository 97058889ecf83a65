// The site's personal model store (client/personal_model.h): what it keeps, how a crash in the
// middle of a save resolves, what a corrupt description says, and client.yaml's block.
#include "client/personal_model.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "model/checkpoint.h"
#include "model/init.h"
#include "model/personal.h"
#include "tests/testing_temp_dir.h"
#include "tests/testing_tiny_model.h"

namespace fedmoe::client {
namespace {

namespace fs = std::filesystem;

class PersonalStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    global_directory_ = temp_.path() / "models" / "v3";
    ASSERT_TRUE(model::SaveModel(global_, global_directory_).ok());
    std::ofstream(global_directory_ / "tokenizer.json") << "{\"marker\": 1}";
  }

  PersonalModelInfo Info(uint64_t version) const {
    PersonalModelInfo info;
    info.mode = PersonalMode::kPrivateExperts;
    info.global_experts = 3;
    info.private_experts = 2;
    info.global_version = version;
    info.rounds_trained = 4;
    info.local_steps = 160;
    return info;
  }

  fedmoe::testing::TempDir temp_;
  model::ModelParameters global_ = model::InitializeModel(fedmoe::testing::TinyMoeConfig(), 1);
  model::ModelParameters personal_ = *model::ComposePersonal(global_, 2, nullptr, 9);
  fs::path global_directory_;
};

TEST_F(PersonalStoreTest, SavesAWholeLoadableModelWithItsTokenizerAndDescription) {
  const PersonalModelStore store(temp_.path() / "personal");
  EXPECT_FALSE(store.Exists());
  ASSERT_EQ(store.Save(personal_, Info(3), global_directory_), absl::OkStatus());
  ASSERT_TRUE(store.Exists());
  absl::StatusOr<model::ModelParameters> loaded = store.Load();
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->config().num_local_experts, 5);
  EXPECT_TRUE(
      std::equal(loaded->values().begin(), loaded->values().end(), personal_.values().begin()));
  EXPECT_TRUE(fs::exists(store.directory() / "tokenizer.json"));
  absl::StatusOr<PersonalModelInfo> info = store.Info();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->global_version, 3u);
  EXPECT_EQ(info->private_experts, 2);
  EXPECT_EQ(info->rounds_trained, 4);
  EXPECT_EQ(info->local_steps, 160);
  // A second save replaces the first whole and leaves no staging or retired copy behind.
  ASSERT_EQ(store.Save(personal_, Info(4), global_directory_), absl::OkStatus());
  EXPECT_EQ(store.Info()->global_version, 4u);
  EXPECT_FALSE(fs::exists(temp_.path() / "personal.new"));
  EXPECT_FALSE(fs::exists(temp_.path() / "personal.old"));

  ASSERT_TRUE(store.Reset().ok());
  EXPECT_FALSE(store.Exists());
  EXPECT_FALSE(fs::exists(store.directory()));
}

// A crash between Save's two renames leaves the old model put aside and the new one staged;
// the next reader finishes the swap. A crash while staging leaves the old model in place.
TEST_F(PersonalStoreTest, ACrashInTheMiddleOfASaveLosesNeitherModel) {
  const fs::path root = temp_.path();
  const PersonalModelStore old_model(root / "old-model");
  const PersonalModelStore new_model(root / "new-model");
  ASSERT_EQ(old_model.Save(personal_, Info(3), global_directory_), absl::OkStatus());
  ASSERT_EQ(new_model.Save(personal_, Info(4), global_directory_), absl::OkStatus());

  fs::rename(old_model.directory(), root / "personal.old");
  fs::rename(new_model.directory(), root / "personal.new");
  const PersonalModelStore store(root / "personal");
  ASSERT_TRUE(store.Exists());
  EXPECT_EQ(store.Info()->global_version, 4u);
  EXPECT_FALSE(fs::exists(root / "personal.old"));

  // Staging had not finished (no personal.json yet): the old model comes back.
  fs::rename(store.directory(), root / "personal.old");
  fs::create_directories(root / "personal.new");
  std::ofstream(root / "personal.new" / "config.json") << "{";
  ASSERT_TRUE(store.Exists());
  EXPECT_EQ(store.Info()->global_version, 4u);
}

TEST_F(PersonalStoreTest, ACorruptDescriptionIsDataLossNamingTheFileAndTheWayOut) {
  const PersonalModelStore store(temp_.path() / "personal");
  ASSERT_EQ(store.Save(personal_, Info(3), global_directory_), absl::OkStatus());
  std::ofstream(store.directory() / "personal.json") << "{\"format\": \"fedmoe-personal-model/1\"";
  absl::StatusOr<PersonalModelInfo> info = store.Info();
  ASSERT_EQ(info.status().code(), absl::StatusCode::kDataLoss) << info.status();
  EXPECT_NE(info.status().message().find("personal.json"), std::string::npos);
  EXPECT_NE(info.status().message().find("personal reset"), std::string::npos);
  std::ofstream(store.directory() / "personal.json")
      << R"({"format": "fedmoe-personal-model/1", "mode": "private_experts", "global_experts": 3,
            "private_experts": -2, "global_version": 1, "rounds_trained": 1, "local_steps": 1})";
  info = store.Info();
  ASSERT_EQ(info.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(info.status().message().find("private_experts"), std::string::npos);
}

// Private experts are kept across rounds, and a held model of another P is refused rather than
// overwritten.
TEST_F(PersonalStoreTest, ARoundStartsFromTheHeldPrivateExperts) {
  const PersonalModelStore store(temp_.path() / "personal");
  PersonalizationSettings settings;
  settings.mode = PersonalMode::kPrivateExperts;
  settings.private_experts = 2;
  std::optional<PersonalModelInfo> held;
  absl::StatusOr<model::ModelParameters> fresh =
      PrivateExpertsStart(settings, store, global_, 4, &held);
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  EXPECT_FALSE(held.has_value());
  ASSERT_EQ(store.Save(personal_, Info(3), global_directory_), absl::OkStatus());
  const model::ModelParameters next_global =
      model::InitializeModel(fedmoe::testing::TinyMoeConfig(), 2);
  absl::StatusOr<model::ModelParameters> kept =
      PrivateExpertsStart(settings, store, next_global, 4, &held);
  ASSERT_TRUE(kept.ok()) << kept.status();
  ASSERT_TRUE(held.has_value());
  EXPECT_EQ(held->rounds_trained, 4);
  const model::TensorSpec& spec =
      *kept->layout().Find("model.layers.1.block_sparse_moe.experts.4.w2.weight");
  EXPECT_TRUE(std::equal(kept->tensor(spec).begin(), kept->tensor(spec).end(),
                         personal_.tensor(spec).begin()));
  settings.private_experts = 3;
  absl::StatusOr<model::ModelParameters> refused =
      PrivateExpertsStart(settings, store, next_global, 4, &held);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("reset"), std::string::npos);
}

TEST(PersonalizationSettingsTest, ReadsTheBlockAndRefusesBadValuesByKey) {
  absl::StatusOr<config::YamlConfigReader> reader = config::YamlConfigReader::FromString(
      "personalization:\n  mode: ditto\n  steps: 7\n  ditto_lambda: 0.5\n"
      "  train_private_experts: with_round\n",
      "client.yaml");
  ASSERT_TRUE(reader.ok());
  PersonalizationSettings settings;
  PersonalizationSettings::Read(*reader, &settings);
  ASSERT_TRUE(reader->Finish().ok());
  EXPECT_EQ(settings.mode, PersonalMode::kDitto);
  EXPECT_EQ(settings.steps, 7);
  EXPECT_EQ(settings.private_training, PrivateExpertsTraining::kWithRound);
  EXPECT_EQ(settings.ditto_lambda, 0.5);

  reader = config::YamlConfigReader::FromString(
      "personalization:\n  mode: federated_magic\n  private_experts: 0\n  ditto_lambda: -1\n"
      "  train_private_experts: sometimes\n  steps: -4\n",
      "client.yaml");
  ASSERT_TRUE(reader.ok());
  PersonalizationSettings::Read(*reader, &settings);
  const absl::Status status = reader->Finish();
  ASSERT_FALSE(status.ok());
  for (const char* key :
       {"personalization.mode", "personalization.private_experts", "personalization.ditto_lambda",
        "personalization.train_private_experts", "personalization.steps"}) {
    EXPECT_NE(status.message().find(key), std::string::npos) << key << ": " << status;
  }
  // The block client.yaml is written with reads back as written.
  PersonalizationSettings written;
  written.mode = PersonalMode::kPrivateExperts;
  written.private_experts = 4;
  reader = config::YamlConfigReader::FromString(written.ToYaml(), "client.yaml");
  ASSERT_TRUE(reader.ok());
  PersonalizationSettings read;
  PersonalizationSettings::Read(*reader, &read);
  ASSERT_TRUE(reader->Finish().ok());
  EXPECT_EQ(read.mode, PersonalMode::kPrivateExperts);
  EXPECT_EQ(read.private_experts, 4);
}

}  // namespace
}  // namespace fedmoe::client
