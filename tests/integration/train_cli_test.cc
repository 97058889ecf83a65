// `fedmoe-client train` as a real process: progress, the final JSON line, the checkpoint, and
// bad data and bad flags.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/device.h"
#include "model/checkpoint.h"
#include "model/forward.h"
#include "tests/integration/process_harness.h"
#include "tests/testing_temp_dir.h"

namespace fedmoe::testing {
namespace {

using ::testing::HasSubstr;
using Json = nlohmann::json;

constexpr char kTinyConfig[] = R"({"vocab_size": 258, "hidden_size": 64,
  "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
  "num_key_value_heads": 2, "num_local_experts": 8, "num_experts_per_tok": 2,
  "max_position_embeddings": 256, "eos_token_id": 256})";

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

class TrainCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    WriteFile(dir_.path() / "config.json", kTinyConfig);
    ASSERT_EQ(RunCommand({BinaryPath("fedmoe-client"), "model", "init", "--config",
                          (dir_.path() / "config.json").string(), "--out", base(), "--seed", "1"})
                  .exit_code,
              0);
    std::filesystem::create_directories(data());
    const std::string corpus =
        ReadFile(std::string(FEDMOE_SOURCE_DIR) + "/deploy/corpora/it_support/documents.txt");
    WriteFile(data() + "/tickets.txt", corpus.substr(0, 20000));
    WriteFile(data() + "/qa.jsonl",
              "{\"prompt\": \"Printer?\", \"response\": \"Restart the spooler.\"}\n"
              "{oops\n");
    WriteFile(data() + "/image.md", std::string("\x89PNG\r\n\x1a\n\0\0\0\rIHDR", 16));
  }

  CommandResult Train(std::vector<std::string> extra) {
    std::vector<std::string> args = {
        BinaryPath("fedmoe-client"), "train", "--model", base(), "--data", data(), "--out", out()};
    args.insert(args.end(), extra.begin(), extra.end());
    return RunCommand(args, absl::Seconds(120));
  }

  std::string base() const { return (dir_.path() / "base").string(); }
  std::string data() const { return (dir_.path() / "data").string(); }
  std::string out() const { return (dir_.path() / "trained").string(); }

  TempDir dir_;
};

TEST_F(TrainCliTest, TrainsReportsAndWritesACheckpoint) {
  const CommandResult result = Train({"--steps", "100", "--batch-size", "4", "--seq-len", "64",
                                      "--lr", "0.005", "--log-every", "25"});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  const std::vector<std::string> lines = Lines(result.out);
  ASSERT_GE(lines.size(), 4u);
  EXPECT_THAT(result.out, HasSubstr("step 25/100  loss "));
  EXPECT_THAT(result.out, HasSubstr("tok/s"));
  EXPECT_THAT(result.out, HasSubstr("eta"));
  EXPECT_THAT(result.out, HasSubstr("validation at step 100: loss"));

  const Json summary = Json::parse(lines.back());
  EXPECT_EQ(summary.at("steps").get<int>(), 100);
  for (const char* key : {"train_loss", "val_loss", "tokens_per_second"}) {
    ASSERT_TRUE(summary.at(key).is_number()) << key << " in " << lines.back();
    EXPECT_TRUE(std::isfinite(summary.at(key).get<double>())) << key;
  }
  EXPECT_LT(summary.at("val_loss").get<double>(), std::log(258.0)) << "it learned something";
  // No config file: the products' precision is auto, as this CPU resolves it, and said so.
  const std::string_view precision =
      model::MatMulPrecisionName(*model::ResolveMatMulPrecision("auto"));
  EXPECT_EQ(summary.at("matmul_precision").get<std::string>(), precision);
  EXPECT_THAT(result.out, HasSubstr(absl::StrCat("weight products in ", std::string(precision))));
  EXPECT_EQ(summary.at("skipped_files").get<int>(), 1);
  EXPECT_EQ(summary.at("skipped_lines").get<int>(), 1);
  EXPECT_THAT(result.err, HasSubstr("warning: qa.jsonl:2: not valid JSON, line skipped"));
  EXPECT_THAT(result.err, HasSubstr("warning: image.md: binary file, skipped"));

  // 100 × 4 × 64 tokens is more than the data holds: the first epoch, and its counts, are
  // complete.
  // The checkpoint loads; the default trainable set moved the experts and left attention.
  absl::StatusOr<model::ModelParameters> before = model::LoadModel(base());
  absl::StatusOr<model::ModelParameters> after = model::LoadModel(out());
  ASSERT_TRUE(before.ok() && after.ok()) << after.status();
  for (const model::TensorSpec& spec : before->layout().tensors()) {
    const bool changed = !std::equal(before->tensor(spec).begin(), before->tensor(spec).end(),
                                     after->tensor(spec).begin());
    const bool trainable =
        spec.role == model::TensorRole::kRoutedExpert || spec.role == model::TensorRole::kRouter;
    if (!trainable) {
      EXPECT_FALSE(changed) << spec.name << " is frozen";
    }
    if (spec.role == model::TensorRole::kRouter) {
      EXPECT_TRUE(changed) << spec.name;
    }
  }
}

TEST_F(TrainCliTest, BadFlagsAndConfigsAreOneClearLine) {
  WriteFile(dir_.path() / "typo.yaml", "steps: 5\nlearning_rat: 0.1\n");
  struct Case {
    std::vector<std::string> args;
    std::string message;
  };
  for (const Case& c : {
           Case{{"--steps", "0"}, "--steps must be between 1 and"},
           Case{{"--steps", "5", "--lr", "-1"}, "--lr must be positive"},
           Case{{"--steps", "5", "--seq-len", "1000"}, "--seq-len must be in [2, 256]"},
           Case{{"--config", (dir_.path() / "typo.yaml").string()}, "typo.yaml:2: learning_rat"},
           Case{{"--steps", "5", "--device", "tpu"},
                "--device tpu: unknown device 'tpu': expected cpu, cuda or auto"},
       }) {
    const CommandResult result = Train(c.args);
    EXPECT_NE(result.exit_code, 0) << c.message;
    EXPECT_THAT(result.err, HasSubstr(c.message));
  }
  // Asking for the GPU where there is none (or in a build without CUDA) says why, and trains
  // nothing on the CPU instead.
  if (!kernels::ResolveDevice("cuda").ok()) {
    const CommandResult no_gpu = Train({"--steps", "5", "--device", "cuda"});
    EXPECT_NE(no_gpu.exit_code, 0);
    EXPECT_THAT(no_gpu.err, HasSubstr("--device cuda: "));
    EXPECT_EQ(std::count(no_gpu.err.begin(), no_gpu.err.end(), '\n'), 1) << no_gpu.err;
    EXPECT_FALSE(std::filesystem::exists(out()));
  }
  const CommandResult no_data =
      RunCommand({BinaryPath("fedmoe-client"), "train", "--model", base(), "--data", "/nonexistent",
                  "--out", out(), "--steps", "3"});
  EXPECT_EQ(no_data.exit_code, 2);
  EXPECT_THAT(no_data.err, HasSubstr("/nonexistent is not a directory"));
  EXPECT_FALSE(std::filesystem::exists(out())) << "a failed run writes no checkpoint";
}

}  // namespace
}  // namespace fedmoe::testing
