// Adapters on disk in Hugging Face PEFT's layout (model/peft.h): the file names, the
// adapter_config.json keys and the tensor keys as PEFT's checkpoint-format guide documents them
// (adapter_config.json and adapter_model.safetensors; keys "base_model.model." + module +
// ".lora_A.weight" / ".lora_B.weight"; modules_to_save saved under the module's own name), a
// round trip that keeps every value and FFA's seed, a config written by PEFT itself, and the
// refusals of what fedmoe cannot apply.
#include "model/peft.h"

#include <nlohmann/json.hpp>
#include <random>
#include <string>

#include "gtest/gtest.h"
#include "model/adapted_model.h"
#include "model/init.h"
#include "model/safetensors.h"
#include "storage/read_file.h"
#include "tests/testing_temp_dir.h"
#include "tests/testing_tiny_model.h"

namespace fedmoe::model {
namespace {

using Json = nlohmann::json;

LoraAdapters TrainedLookingAdapters(const FrozenBase& base, bool train_a) {
  LoraConfig lora;
  lora.rank = 4;
  lora.alpha = 8;
  lora.targets = *ParseLoraTargets("q_proj,v_proj,w1,w2,w3");
  lora.train_a = train_a;
  lora.seed = 123456789;
  LoraAdapters adapters = *NewAdapters(base, lora);
  std::mt19937 generator(1);
  std::normal_distribution<float> normal(0.0F, 0.1F);
  for (float& value : adapters.values()) value += normal(generator);
  return adapters;
}

TEST(PeftTest, FilesAndKeysAreWherePeftLooksForThem) {
  testing::TempDir dir;
  const FrozenBase base = FrozenBase::FromParameters(
      InitializeModel(testing::GradientCheckConfig(true, false, 2), 1), WeightFormat::kFloat32);
  const LoraAdapters adapters = TrainedLookingAdapters(base, false);
  ASSERT_TRUE(SaveAdapters(adapters, dir.path(), "acme/mixtral-tiny").ok());
  EXPECT_TRUE(std::filesystem::exists(dir.path() / "adapter_config.json"));
  EXPECT_TRUE(std::filesystem::exists(dir.path() / "adapter_model.safetensors"));

  const Json config = Json::parse(*storage::ReadSmallFile(dir.path() / "adapter_config.json"));
  EXPECT_EQ(config.at("peft_type"), "LORA");
  EXPECT_EQ(config.at("task_type"), "CAUSAL_LM");
  EXPECT_EQ(config.at("r"), 4);
  EXPECT_EQ(config.at("lora_alpha"), 8.0);
  EXPECT_EQ(config.at("target_modules"), Json({"q_proj", "v_proj", "w1", "w2", "w3"}));
  EXPECT_EQ(config.at("modules_to_save"), Json({"gate"}));
  EXPECT_EQ(config.at("base_model_name_or_path"), "acme/mixtral-tiny");
  EXPECT_EQ(config.at("bias"), "none");
  EXPECT_EQ(config.at("fan_in_fan_out"), false);
  EXPECT_EQ(config.at("use_dora"), false);

  absl::StatusOr<SafetensorsFile> file =
      SafetensorsFile::Open(dir.path() / "adapter_model.safetensors");
  ASSERT_TRUE(file.ok());
  // Every key is PEFT's: the wrapped module path, then lora_A / lora_B, or a saved module.
  for (const SafetensorsEntry& entry : file->entries()) {
    EXPECT_TRUE(entry.name.starts_with("base_model.model.model.layers.")) << entry.name;
    const bool lora =
        entry.name.ends_with(".lora_A.weight") || entry.name.ends_with(".lora_B.weight");
    EXPECT_TRUE(lora || entry.name.ends_with(".block_sparse_moe.gate.weight")) << entry.name;
    EXPECT_EQ(entry.dtype_name, "F32");
  }
  const SafetensorsEntry* a =
      file->Find("base_model.model.model.layers.1.block_sparse_moe.experts.2.w3.lora_A.weight");
  const SafetensorsEntry* b =
      file->Find("base_model.model.model.layers.1.block_sparse_moe.experts.2.w3.lora_B.weight");
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(a->shape, (std::vector<int64_t>{4, 16}));  // [r, in_features]
  EXPECT_EQ(b->shape, (std::vector<int64_t>{12, 4}));  // [out_features, r]
  EXPECT_NE(file->Find("base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"), nullptr);
  EXPECT_EQ(file->Find("base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight"), nullptr);
  EXPECT_EQ(file->metadata().at("fedmoe_lora_seed"), "123456789");
  EXPECT_EQ(file->metadata().at("fedmoe_lora_train_a"), "false");
}

TEST(PeftTest, SavedAdaptersLoadBackValueForValue) {
  testing::TempDir dir;
  const FrozenBase base = FrozenBase::FromParameters(
      InitializeModel(testing::GradientCheckConfig(true, false, 2), 2), WeightFormat::kFloat32);
  const auto routers = [&base](int64_t layer) {
    return std::span<const float>(
        base.vector(base.layout().layer(layer).router),
        static_cast<size_t>(base.config().num_local_experts * base.config().hidden_size));
  };
  for (const bool train_a : {false, true}) {
    const LoraAdapters saved = TrainedLookingAdapters(base, train_a);
    ASSERT_TRUE(SaveAdapters(saved, dir.path(), "base").ok());
    absl::StatusOr<LoraAdapters> loaded = LoadAdapters(dir.path(), base.config(), routers);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    EXPECT_EQ(loaded->config().rank, 4);
    EXPECT_EQ(loaded->config().alpha, 8.0);
    EXPECT_EQ(loaded->config().seed, 123456789U);
    EXPECT_EQ(loaded->config().train_a, train_a);
    EXPECT_EQ(loaded->config().targets, saved.config().targets);
    ASSERT_EQ(loaded->values().size(), saved.values().size());
    for (size_t i = 0; i < saved.values().size(); ++i) {
      ASSERT_EQ(loaded->values()[i], saved.values()[i]) << i;
    }
  }
}

// An adapter_config.json as PEFT 0.13's save_pretrained writes it for a Mixtral LoRA, and one
// without modules_to_save, whose routers then come from the base.
TEST(PeftTest, PeftsOwnConfigLoadsAndMissingRoutersComeFromTheBase) {
  const char kPeftConfig[] = R"({
    "alpha_pattern": {}, "auto_mapping": null, "base_model_name_or_path": "mistralai/Mixtral-8x7B-v0.1",
    "bias": "none", "fan_in_fan_out": false, "inference_mode": true, "init_lora_weights": true,
    "layer_replication": null, "layers_pattern": null, "layers_to_transform": null,
    "loftq_config": {}, "lora_alpha": 32, "lora_dropout": 0.05, "megatron_config": null,
    "megatron_core": "megatron.core", "modules_to_save": null, "peft_type": "LORA", "r": 16,
    "rank_pattern": {}, "revision": null, "target_modules": ["w2", "q_proj", "w1", "w3"],
    "task_type": "CAUSAL_LM", "use_dora": false, "use_rslora": false})";
  absl::StatusOr<LoraConfig> lora = ParseAdapterConfig(kPeftConfig);
  ASSERT_TRUE(lora.ok()) << lora.status();
  EXPECT_EQ(lora->rank, 16);
  EXPECT_FLOAT_EQ(lora->scaling(), 2.0F);
  EXPECT_EQ(lora->targets.size(), 4U);
  EXPECT_TRUE(lora->train_a);

  testing::TempDir dir;
  const FrozenBase base = FrozenBase::FromParameters(
      InitializeModel(testing::GradientCheckConfig(false, false, 2), 3), WeightFormat::kFloat32);
  LoraAdapters adapters = TrainedLookingAdapters(base, true);
  ASSERT_TRUE(SaveAdapters(adapters, dir.path(), "base").ok());
  // Rewrite the weights without the routers, as PEFT does without modules_to_save.
  std::vector<TensorToWrite> tensors;
  for (const AdapterTensor& spec : adapters.layout().tensors()) {
    if (spec.role != AdapterRole::kRouter)
      tensors.push_back({spec.name, spec.shape, adapters.tensor(spec)});
  }
  ASSERT_TRUE(
      WriteSafetensors(dir.path() / "adapter_model.safetensors", tensors, DType::kF32).ok());
  std::vector<float> router(64 * 16, 0.5F);
  absl::StatusOr<LoraAdapters> loaded = LoadAdapters(
      dir.path(), base.config(), [&](int64_t) { return std::span<const float>(router); });
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->at(loaded->layout().layer(1).router)[5], 0.5F);
  EXPECT_TRUE(loaded->config().train_a) << "an adapter from elsewhere trained its A";
}

TEST(PeftTest, WhatFedmoeCannotApplyIsRefusedByName) {
  const auto error = [](const std::string& json) {
    absl::StatusOr<LoraConfig> lora = ParseAdapterConfig(json);
    return lora.ok() ? std::string("ok") : std::string(lora.status().message());
  };
  const std::string base =
      R"("peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["w1"])";
  EXPECT_EQ(error("{" + base + "}"), "ok");
  EXPECT_EQ(error("[1]"), "not a JSON object");
  EXPECT_NE(error(R"({"peft_type": "IA3", "r": 8})").find("peft_type is \"IA3\""),
            std::string::npos);
  EXPECT_NE(error("{" + base + R"(, "use_dora": true})").find("use_dora is true"),
            std::string::npos);
  EXPECT_NE(error("{" + base + R"(, "use_rslora": true})").find("use_rslora"), std::string::npos);
  EXPECT_NE(error("{" + base + R"(, "bias": "all"})").find("bias"), std::string::npos);
  EXPECT_NE(error("{" + base + R"(, "rank_pattern": {"w1": 4}})").find("rank_pattern"),
            std::string::npos);
  EXPECT_NE(error("{" + base + R"(, "layers_to_transform": [0]})").find("layers_to_transform"),
            std::string::npos);
  EXPECT_NE(
      error(R"({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["gate_proj"]})")
          .find("unknown lora target \"gate_proj\""),
      std::string::npos);
  EXPECT_NE(error(R"({"peft_type": "LORA", "r": 0, "lora_alpha": 16, "target_modules": "w1"})")
                .find("rank 0"),
            std::string::npos);

  // A file over another model's shapes names the tensor.
  testing::TempDir dir;
  const FrozenBase small = FrozenBase::FromParameters(
      InitializeModel(testing::GradientCheckConfig(false, false, 2), 4), WeightFormat::kFloat32);
  ASSERT_TRUE(SaveAdapters(TrainedLookingAdapters(small, false), dir.path(), "base").ok());
  MoeConfig wider = small.config();
  wider.intermediate_size = 20;
  absl::StatusOr<LoraAdapters> loaded =
      LoadAdapters(dir.path(), wider, [](int64_t) { return std::span<const float>(); });
  ASSERT_FALSE(loaded.ok());
  EXPECT_NE(loaded.status().message().find("w1.lora_B.weight\" has shape [12, 4] but r = 4 and "
                                           "the model need [20, 4]"),
            std::string::npos)
      << loaded.status();
}

}  // namespace
}  // namespace fedmoe::model
