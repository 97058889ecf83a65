// `fedmoe-client model eval|generate|init|inspect|merge-adapter|quantize|trace` as real processes
// (DESIGN §8).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "kernels/device.h"
#include "model/adapted_model.h"
#include "model/checkpoint.h"
#include "model/evaluation.h"
#include "model/frozen_base.h"
#include "model/generation.h"
#include "model/peft.h"
#include "model/tokenizer.h"
#include "tests/integration/process_harness.h"
#include "tests/testing_temp_dir.h"

namespace fedmoe::testing {
namespace {

using ::testing::HasSubstr;
using Json = nlohmann::json;

constexpr char kTinyConfig[] = R"({"vocab_size": 258, "hidden_size": 64,
  "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
  "num_key_value_heads": 2, "num_local_experts": 8, "num_experts_per_tok": 2,
  "n_shared_experts": 1, "max_position_embeddings": 256, "eos_token_id": 256,
  "initializer_range": 0.1})";

CommandResult Model(std::vector<std::string> args) {
  args.insert(args.begin(), {BinaryPath("fedmoe-client"), "model"});
  return RunCommand(args);
}

int Lines(const std::string& text) {
  return static_cast<int>(std::count(text.begin(), text.end(), '\n'));
}

class ModelCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    WriteFile(dir_.path() / "config.json", kTinyConfig);
    const CommandResult init = Model({"init", "--config", (dir_.path() / "config.json").string(),
                                      "--out", model_dir(), "--seed", "5"});
    ASSERT_EQ(init.exit_code, 0) << init.err;
    EXPECT_THAT(init.out, HasSubstr("initialised"));
    std::string text;
    for (int i = 0; i < 30; ++i) text += "Invoice " + std::to_string(1000 + i) + " is due.\n";
    WriteFile(data(), text.substr(0, 300));
  }

  std::string model_dir() const { return (dir_.path() / "model").string(); }
  std::string data() const { return (dir_.path() / "data.txt").string(); }

  TempDir dir_;
};

TEST_F(ModelCliTest, EvalPrintsTheLossOfTheContractsWindows) {
  const CommandResult eval =
      Model({"eval", "--model", model_dir(), "--data", data(), "--seq-len", "64"});
  ASSERT_EQ(eval.exit_code, 0) << eval.err;
  ASSERT_EQ(Lines(eval.out), 1);
  const Json json = Json::parse(eval.out);
  // 300 bytes: four windows of 64 (63 predictions each) and a tail of 44 (43).
  EXPECT_EQ(json.at("tokens").get<int64_t>(), 4 * 63 + 43);

  absl::StatusOr<model::ModelParameters> parameters = model::LoadModel(model_dir());
  ASSERT_TRUE(parameters.ok()) << parameters.status();
  const std::string text = ReadFile(data());
  std::vector<int32_t> tokens(text.begin(), text.end());
  absl::StatusOr<model::Evaluation> expected = model::Evaluate(*parameters, tokens, 64);
  ASSERT_TRUE(expected.ok());
  EXPECT_NEAR(json.at("loss").get<double>(), expected->loss, 1e-9 * expected->loss);
  // An untrained model is close to uniform over the 258 ids.
  EXPECT_NEAR(json.at("loss").get<double>(), std::log(258.0), 0.5);

  const CommandResult default_window = Model({"eval", "--model", model_dir(), "--data", data()});
  ASSERT_EQ(default_window.exit_code, 0) << default_window.err;
  EXPECT_EQ(Json::parse(default_window.out).at("tokens").get<int64_t>(), 2 * 127 + 43);
}

TEST_F(ModelCliTest, InspectCountsWhatInitWrote) {
  const CommandResult inspect = Model({"inspect", model_dir(), "--json"});
  ASSERT_EQ(inspect.exit_code, 0) << inspect.err;
  const Json json = Json::parse(inspect.out);
  absl::StatusOr<model::ModelParameters> parameters = model::LoadModel(model_dir());
  ASSERT_TRUE(parameters.ok());
  EXPECT_EQ(json.at("parameters").get<int64_t>(), parameters->layout().total_size());
  EXPECT_EQ(json.at("parameters_per_routed_expert").get<int64_t>(), 3 * 64 * 96);
  EXPECT_EQ(json.at("parameters_by_role").at("routed_experts").get<int64_t>(), 2 * 8 * 3 * 64 * 96);
  EXPECT_EQ(json.at("parameters_by_role").at("shared_experts").get<int64_t>(), 2 * 3 * 64 * 96);
  EXPECT_GT(json.at("checkpoint_bytes").get<int64_t>(), 4 * parameters->layout().total_size());

  const CommandResult human = Model({"inspect", model_dir()});
  ASSERT_EQ(human.exit_code, 0) << human.err;
  EXPECT_THAT(human.out, HasSubstr("8 routed per layer, top-2, 1 shared"));
}

TEST_F(ModelCliTest, TraceShowsEachTokensExpertsAndWeights) {
  const CommandResult trace =
      Model({"trace", "--model", model_dir(), "--text", "Pay invoice 12", "--json"});
  ASSERT_EQ(trace.exit_code, 0) << trace.err;
  const Json tokens = Json::parse(trace.out).at("tokens");
  ASSERT_EQ(tokens.size(), 14u);
  EXPECT_EQ(tokens[0].at("text"), "P");
  for (const Json& token : tokens) {
    ASSERT_EQ(token.at("layers").size(), 2u);
    for (const Json& layer : token.at("layers")) {
      ASSERT_EQ(layer.at("experts").size(), 2u);
      EXPECT_NE(layer.at("experts")[0], layer.at("experts")[1]);
      const double sum =
          layer.at("weights")[0].get<double>() + layer.at("weights")[1].get<double>();
      EXPECT_NEAR(sum, 1.0, 1e-6);
      EXPECT_GE(layer.at("weights")[0].get<double>(), layer.at("weights")[1].get<double>());
    }
  }
  const CommandResult table = Model({"trace", "--model", model_dir(), "--text", "Pay"});
  ASSERT_EQ(table.exit_code, 0) << table.err;
  EXPECT_THAT(table.out, HasSubstr("expert load"));
  EXPECT_THAT(table.out, HasSubstr("'P'"));
}

TEST_F(ModelCliTest, Bf16CheckpointsEvaluateLikeTheirF32Source) {
  const std::string bf16_dir = (dir_.path() / "bf16").string();
  ASSERT_EQ(Model({"init", "--config", (dir_.path() / "config.json").string(), "--out", bf16_dir,
                   "--seed", "5", "--dtype", "bf16"})
                .exit_code,
            0);
  const CommandResult f32 = Model({"eval", "--model", model_dir(), "--data", data()});
  const CommandResult bf16 = Model({"eval", "--model", bf16_dir, "--data", data()});
  ASSERT_EQ(bf16.exit_code, 0) << bf16.err;
  EXPECT_NEAR(Json::parse(bf16.out).at("loss").get<double>(),
              Json::parse(f32.out).at("loss").get<double>(), 1e-2);
}

// init --dtype int8 writes, without an fp32 copy, the base that quantizing the fp32 model of the
// same seed holds: the same content hash.
TEST_F(ModelCliTest, InitStraightToInt8IsTheQuantizedModelOfTheSameSeed) {
  const std::string int8_dir = (dir_.path() / "init-int8").string();
  const CommandResult init = Model({"init", "--config", (dir_.path() / "config.json").string(),
                                    "--out", int8_dir, "--seed", "5", "--dtype", "int8"});
  ASSERT_EQ(init.exit_code, 0) << init.err;
  EXPECT_THAT(init.out, HasSubstr("as INT8"));
  const CommandResult direct = Model({"hash", "--model", int8_dir});
  const CommandResult quantized = Model({"hash", "--model", model_dir(), "--int8"});
  ASSERT_EQ(direct.exit_code, 0) << direct.err;
  EXPECT_EQ(Json::parse(direct.out).at("format"), "int8");
  EXPECT_EQ(Json::parse(direct.out).at("sha256"), Json::parse(quantized.out).at("sha256"));
  EXPECT_THAT(Model({"init", "--config", (dir_.path() / "config.json").string(), "--out", int8_dir,
                     "--group-size", "64"})
                  .err,
              HasSubstr("--group-size applies to --dtype int8 only"));
}

// quantize writes a base that opens as what it says: INT8 in fedmoe's format, bf16 as a plain
// checkpoint, each the size the format promises, with the tokenizer beside it.
TEST_F(ModelCliTest, QuantizeWritesCompactBasesThatOpenAsTheirFormat) {
  WriteFile(dir_.path() / "model" / "tokenizer.json", "{}");
  const std::string int8_dir = (dir_.path() / "int8").string();
  const CommandResult int8 =
      Model({"quantize", "--model", model_dir(), "--int8", "--out", int8_dir});
  ASSERT_EQ(int8.exit_code, 0) << int8.err;
  ASSERT_EQ(Lines(int8.out), 1);
  const Json summary = Json::parse(int8.out);
  EXPECT_EQ(summary.at("format"), "int8");
  EXPECT_EQ(summary.at("group_size"), 128);
  absl::StatusOr<model::FrozenBase> base = model::FrozenBase::Open(int8_dir);
  ASSERT_TRUE(base.ok()) << base.status();
  EXPECT_EQ(base->format(), model::WeightFormat::kInt8);
  EXPECT_EQ(base->bytes(), summary.at("weight_bytes").get<int64_t>());
  // About a quarter of the fp32 checkpoint: a byte per weight and a float per 128 of them.
  EXPECT_LT(base->bytes(), summary.at("source_bytes").get<int64_t>() * 3 / 10);
  EXPECT_EQ(ReadFile(std::filesystem::path(int8_dir) / "tokenizer.json"), "{}");
  // That stand-in is no tokenizer eval could use; the model's bytes are its tokens without one.
  std::filesystem::remove(dir_.path() / "model" / "tokenizer.json");

  const std::string bf16_dir = (dir_.path() / "bf16").string();
  ASSERT_EQ(Model({"quantize", "--model", model_dir(), "--bf16", "--out", bf16_dir}).exit_code, 0);
  const CommandResult f32 = Model({"eval", "--model", model_dir(), "--data", data()});
  const CommandResult bf16 = Model({"eval", "--model", bf16_dir, "--data", data()});
  ASSERT_EQ(bf16.exit_code, 0) << bf16.err;
  EXPECT_NEAR(Json::parse(bf16.out).at("loss").get<double>(),
              Json::parse(f32.out).at("loss").get<double>(), 1e-2);
  // The INT8 base with int8 activations: the same model, its inputs quantized as it runs (on
  // the model's bytes, without the stand-in tokenizer quantize copied).
  std::filesystem::remove(std::filesystem::path(int8_dir) / "tokenizer.json");
  const CommandResult activations =
      Model({"eval", "--model", int8_dir, "--int8-activations", "--data", data()});
  ASSERT_EQ(activations.exit_code, 0) << activations.err;
  EXPECT_NEAR(Json::parse(activations.out).at("loss").get<double>(),
              Json::parse(f32.out).at("loss").get<double>(), 2e-2);
  const CommandResult weight_only = Model({"eval", "--model", int8_dir, "--data", data()});
  ASSERT_EQ(weight_only.exit_code, 0) << weight_only.err;
  EXPECT_NE(Json::parse(activations.out).at("loss").get<double>(),
            Json::parse(weight_only.out).at("loss").get<double>())
      << "--int8-activations reached no product";
  const CommandResult not_int8 =
      Model({"eval", "--model", bf16_dir, "--int8-activations", "--data", data()});
  EXPECT_NE(not_int8.exit_code, 0);
  EXPECT_EQ(Lines(not_int8.err), 1) << not_int8.err;
  EXPECT_THAT(not_int8.err, HasSubstr("int8 activations need the base held in INT8 (--int8), "
                                      "not bf16"));

  for (const auto& [arguments, message] :
       std::vector<std::pair<std::vector<std::string>, std::string>>{
           {{"--model", model_dir(), "--out", int8_dir}, "exactly one of --int8 and --bf16"},
           {{"--model", model_dir(), "--bf16", "--group-size", "64", "--out", int8_dir},
            "--group-size applies to --int8 only"},
           {{"--model", model_dir(), "--int8", "--out", model_dir()}, "must not be the --model"},
           {{"--model", int8_dir + "-missing", "--int8", "--out", int8_dir}, "cannot stat"}}) {
    std::vector<std::string> command = {"quantize"};
    command.insert(command.end(), arguments.begin(), arguments.end());
    const CommandResult bad = Model(command);
    EXPECT_NE(bad.exit_code, 0) << message;
    EXPECT_EQ(Lines(bad.err), 1) << bad.err;
    EXPECT_THAT(bad.err, HasSubstr(message));
  }
  // The refusals left the written base as it was.
  EXPECT_TRUE(model::FrozenBase::Open(int8_dir).ok());

  // hash: the quantized base is the model held as INT8, and --expect refuses any other.
  const CommandResult quantized_hash = Model({"hash", "--model", int8_dir});
  const CommandResult converted_hash = Model({"hash", "--model", model_dir(), "--int8"});
  ASSERT_EQ(quantized_hash.exit_code, 0) << quantized_hash.err;
  const std::string sha256 = Json::parse(quantized_hash.out).at("sha256").get<std::string>();
  EXPECT_EQ(Json::parse(converted_hash.out).at("sha256"), sha256);
  EXPECT_EQ(Model({"hash", "--model", int8_dir, "--expect", sha256}).exit_code, 0);
  const CommandResult mismatch = Model({"hash", "--model", model_dir(), "--expect", sha256});
  EXPECT_NE(mismatch.exit_code, 0);
  EXPECT_EQ(Lines(mismatch.err), 1) << mismatch.err;
  EXPECT_THAT(mismatch.err, HasSubstr("not the federation's " + sha256));
}

// A PEFT adapter directory over the model: eval and trace run the adapted model, and
// merge-adapter writes the plain checkpoint that computes the same; a compact base evaluates
// within rounding of the fp32 one.
TEST_F(ModelCliTest, AdaptersEvaluateTraceAndMergeIntoAPlainCheckpoint) {
  absl::StatusOr<model::FrozenBase> base = model::FrozenBase::Open(model_dir());
  ASSERT_TRUE(base.ok()) << base.status();
  model::LoraConfig lora;
  lora.rank = 4;
  lora.alpha = 8;
  lora.targets = *model::ParseLoraTargets("all");
  absl::StatusOr<model::LoraAdapters> adapters = model::NewAdapters(*base, lora);
  ASSERT_TRUE(adapters.ok());
  std::mt19937 generator(7);
  std::normal_distribution<float> normal(0.0F, 0.05F);
  for (const model::AdapterTensor& spec : adapters->layout().tensors()) {
    if (spec.role == model::AdapterRole::kLoraA) continue;
    for (float& value : adapters->tensor(spec)) value += normal(generator);
  }
  const std::string adapter_dir = (dir_.path() / "adapter").string();
  ASSERT_TRUE(model::SaveAdapters(*adapters, adapter_dir, model_dir()).ok());

  const auto loss = [&](std::vector<std::string> arguments) {
    std::vector<std::string> command = {"eval", "--data", data(), "--seq-len", "64"};
    command.insert(command.end(), arguments.begin(), arguments.end());
    const CommandResult eval = Model(command);
    EXPECT_EQ(eval.exit_code, 0) << eval.err;
    return eval.exit_code == 0 ? Json::parse(eval.out).at("loss").get<double>() : -1.0;
  };
  const double plain = loss({"--model", model_dir()});
  const double adapted = loss({"--model", model_dir(), "--adapter", adapter_dir});
  EXPECT_GT(std::abs(adapted - plain), 1e-3) << "the adapters changed nothing";

  const std::string merged_dir = (dir_.path() / "merged").string();
  const CommandResult merge = Model(
      {"merge-adapter", "--model", model_dir(), "--adapter", adapter_dir, "--out", merged_dir});
  ASSERT_EQ(merge.exit_code, 0) << merge.err;
  EXPECT_EQ(Json::parse(merge.out).at("rank"), 4);
  EXPECT_NEAR(loss({"--model", merged_dir}), adapted, 1e-5 * adapted);

  const CommandResult adapted_trace = Model({"trace", "--model", model_dir(), "--adapter",
                                             adapter_dir, "--text", "Invoice 1004", "--json"});
  const CommandResult merged_trace =
      Model({"trace", "--model", merged_dir, "--text", "Invoice 1004", "--json"});
  ASSERT_EQ(adapted_trace.exit_code, 0) << adapted_trace.err;
  ASSERT_EQ(merged_trace.exit_code, 0) << merged_trace.err;
  const Json adapted_rows = Json::parse(adapted_trace.out).at("tokens");
  const Json merged_rows = Json::parse(merged_trace.out).at("tokens");
  ASSERT_EQ(adapted_rows.size(), merged_rows.size());
  for (size_t i = 0; i < adapted_rows.size(); ++i) {
    for (size_t layer = 0; layer < 2; ++layer) {
      EXPECT_EQ(adapted_rows[i]["layers"][layer]["experts"],
                merged_rows[i]["layers"][layer]["experts"])
          << "token " << i << " layer " << layer;
    }
  }

  // INT8 and bf16 bases, asked for or stored, within rounding of fp32.
  const double int8 = loss({"--model", model_dir(), "--int8"});
  EXPECT_NEAR(int8, plain, 0.01 * plain);
  EXPECT_NEAR(loss({"--model", model_dir(), "--bf16"}), plain, 0.01 * plain);
  const std::string int8_dir = (dir_.path() / "int8").string();
  ASSERT_EQ(Model({"quantize", "--model", model_dir(), "--int8", "--out", int8_dir}).exit_code, 0);
  EXPECT_EQ(loss({"--model", int8_dir}), int8) << "a stored INT8 base is the same INT8 base";
  EXPECT_NEAR(loss({"--model", int8_dir, "--adapter", adapter_dir}), adapted, 0.01 * adapted);

  for (const auto& [arguments, message] :
       std::vector<std::pair<std::vector<std::string>, std::string>>{
           {{"eval", "--model", model_dir(), "--data", data(), "--adapter", merged_dir},
            "adapter_config.json"},
           {{"eval", "--model", model_dir(), "--data", data(), "--int8", "--bf16"},
            "--int8 and --bf16 exclude each other"},
           {{"merge-adapter", "--model", model_dir(), "--adapter", adapter_dir},
            "--out is required"},
           {{"merge-adapter", "--model", model_dir(), "--adapter", adapter_dir, "--out",
             model_dir()},
            "must not be the --model directory"}}) {
    const CommandResult bad = Model(arguments);
    EXPECT_NE(bad.exit_code, 0) << message;
    EXPECT_EQ(Lines(bad.err), 1) << bad.err;
    EXPECT_THAT(bad.err, HasSubstr(message));
  }
}

// train --lora: FFA-LoRA adapters over the model held as INT8, written as a PEFT directory that
// eval then runs, lower in loss on the text it trained on than the base alone.
TEST_F(ModelCliTest, TrainLoraWritesAPeftDirectoryThatLearns) {
  const std::filesystem::path corpus = dir_.path() / "corpus";
  std::filesystem::create_directories(corpus);
  std::string text;
  for (int i = 0; i < 200; ++i) text += "Invoice " + std::to_string(1000 + i % 37) + " is due.\n\n";
  WriteFile(corpus / "invoices.txt", text);
  WriteFile(dir_.path() / "lora.yaml", "lora:\n  rank: 4\n  alpha: 8\n  targets: [all]\n");
  const std::string adapter_dir = (dir_.path() / "adapter").string();
  const CommandResult train = RunCommand({BinaryPath("fedmoe-client"),
                                          "train",
                                          "--model",
                                          model_dir(),
                                          "--data",
                                          corpus.string(),
                                          "--steps",
                                          "30",
                                          "--out",
                                          adapter_dir,
                                          "--lora",
                                          "--int8",
                                          "--config",
                                          (dir_.path() / "lora.yaml").string(),
                                          "--batch-size",
                                          "4",
                                          "--seq-len",
                                          "32",
                                          "--lr",
                                          "0.02",
                                          "--threads",
                                          "2"});
  ASSERT_EQ(train.exit_code, 0) << train.err;
  const std::string trimmed = train.out.substr(0, train.out.find_last_not_of('\n') + 1);
  const Json summary = Json::parse(trimmed.substr(trimmed.rfind('\n') + 1));
  EXPECT_EQ(summary.at("steps"), 30);
  EXPECT_EQ(summary.at("adapters").at("rank"), 4);
  EXPECT_EQ(summary.at("adapters").at("ffa"), true);
  EXPECT_EQ(summary.at("adapters").at("base_format"), "int8");
  EXPECT_TRUE(std::filesystem::exists(std::filesystem::path(adapter_dir) / "adapter_config.json"));
  EXPECT_TRUE(
      std::filesystem::exists(std::filesystem::path(adapter_dir) / "adapter_model.safetensors"));

  const std::string data_file = (corpus / "invoices.txt").string();
  const CommandResult before =
      Model({"eval", "--model", model_dir(), "--int8", "--data", data_file, "--seq-len", "32"});
  const CommandResult after = Model({"eval", "--model", model_dir(), "--adapter", adapter_dir,
                                     "--int8", "--data", data_file, "--seq-len", "32"});
  ASSERT_EQ(after.exit_code, 0) << after.err;
  EXPECT_LT(Json::parse(after.out).at("loss").get<double>(),
            Json::parse(before.out).at("loss").get<double>() - 0.5);

  const CommandResult refused =
      RunCommand({BinaryPath("fedmoe-client"), "train", "--model", model_dir(), "--data",
                  corpus.string(), "--steps", "1", "--out", adapter_dir, "--int8"});
  EXPECT_NE(refused.exit_code, 0);
  EXPECT_THAT(refused.err, HasSubstr("--int8 and --bf16 hold a frozen base for --lora"));
}

// The last line of a command's stderr, as JSON.
Json LastErrLine(const std::string& err) {
  const size_t end = err.find_last_not_of('\n');
  const size_t start = err.rfind('\n', end);
  return Json::parse(err.substr(start == std::string::npos ? 0 : start + 1));
}

TEST_F(ModelCliTest, GenerateStreamsWhatTheLibraryGeneratesAndReportsItsRates) {
  const std::string prompt = "Invoice 1000 is";
  const CommandResult greedy = Model({"generate", "--model", model_dir(), "--prompt", prompt,
                                      "--max-tokens", "12", "--temperature", "0", "--seed", "1"});
  ASSERT_EQ(greedy.exit_code, 0) << greedy.err;
  const Json summary = LastErrLine(greedy.err);
  EXPECT_EQ(summary.at("prompt_tokens").get<int64_t>(), static_cast<int64_t>(prompt.size()));
  const auto generated = summary.at("generated_tokens").get<int64_t>();
  EXPECT_GE(generated, 1);
  EXPECT_LE(generated, 12);
  EXPECT_EQ(summary.at("finish_reason").get<std::string>(), generated == 12 ? "length" : "stop");
  EXPECT_GT(summary.at("prefill_tokens_per_second").get<double>(), 0);
  EXPECT_EQ(summary.at("seed").get<uint64_t>(), 1u);
  // --device auto: the GPU where one answers (the text below must then still be the CPU's).
  const absl::StatusOr<int> gpus = kernels::CudaDeviceCount();
  EXPECT_EQ(summary.at("device").get<std::string>(),
            kernels::CudaCompiledIn() && gpus.ok() && *gpus > 0 ? "cuda" : "cpu");

  // The same model in this process: the same text, streamed then a newline.
  absl::StatusOr<model::FrozenBase> base = model::FrozenBase::Open(model_dir());
  ASSERT_TRUE(base.ok()) << base.status();
  const model::LoraAdapters none = model::BaseOnlyAdapters(*base);
  absl::StatusOr<model::Generator> generator = model::Generator::Create(*base, none);
  ASSERT_TRUE(generator.ok());
  model::GenerationOptions options;
  options.max_tokens = 12;
  absl::StatusOr<model::GenerationResult> expected = model::Generate(
      *generator, *model::MakeByteTokenizer(258), prompt, options, [](std::string_view) {});
  ASSERT_TRUE(expected.ok()) << expected.status();
  EXPECT_EQ(greedy.out, expected->text + "\n");
  EXPECT_EQ(static_cast<int64_t>(expected->tokens.size()), generated);

  // Sampling repeats with its seed, from a file's prompt too, and over an INT8 base.
  WriteFile(dir_.path() / "prompt.txt", prompt);
  const std::vector<std::string> sampled = {"generate",
                                            "--model",
                                            model_dir(),
                                            "--prompt-file",
                                            (dir_.path() / "prompt.txt").string(),
                                            "--max-tokens",
                                            "10",
                                            "--temperature",
                                            "1.2",
                                            "--top-p",
                                            "0.9",
                                            "--seed",
                                            "77"};
  const CommandResult first = Model(sampled);
  const CommandResult again = Model(sampled);
  ASSERT_EQ(first.exit_code, 0) << first.err;
  EXPECT_EQ(first.out, again.out);
  std::vector<std::string> int8 = sampled;
  int8.push_back("--int8");
  const CommandResult quantized = Model(int8);
  ASSERT_EQ(quantized.exit_code, 0) << quantized.err;
  EXPECT_EQ(LastErrLine(quantized.err).at("prompt_tokens").get<int64_t>(),
            static_cast<int64_t>(prompt.size()));
  EXPECT_EQ(LastErrLine(quantized.err).at("format").get<std::string>(), "int8");
  int8.push_back("--int8-activations");
  const CommandResult activations = Model(int8);
  ASSERT_EQ(activations.exit_code, 0) << activations.err;
  EXPECT_EQ(LastErrLine(activations.err).at("format").get<std::string>(),
            "int8 with int8 activations");

  const CommandResult help = Model({"generate", "--help"});
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_THAT(help.out, HasSubstr("--max-tokens"));
}

TEST_F(ModelCliTest, BadInputGetsOneSpecificLineAndChangesNothing) {
  struct Case {
    std::vector<std::string> args;
    std::string message;
    int exit_code;
  };
  const std::string corrupt_dir = (dir_.path() / "corrupt").string();
  std::filesystem::create_directories(corrupt_dir);
  std::filesystem::copy_file(model_dir() + "/config.json", corrupt_dir + "/config.json");
  WriteFile(corrupt_dir + "/model.safetensors",
            ReadFile(model_dir() + "/model.safetensors").substr(0, 5000));
  WriteFile(dir_.path() / "one_byte.txt", "x");
  WriteFile(dir_.path() / "bad_config.json", R"({"vocab_size": 258, "hidden_size": 64})");
  for (const Case& c : {
           Case{{"eval", "--model", model_dir(), "--data", data(), "--seq-len", "1"},
                "--seq-len must be between 2 and",
                2},
           Case{{"eval", "--model", model_dir(), "--data", data(), "--seq-len", "many"},
                "--seq-len must be a whole number, not 'many'",
                2},
           Case{{"eval", "--model", model_dir(), "--data", data(), "--seq-len", "300"},
                "seq_len 300 is beyond max_position_embeddings 256",
                2},
           Case{{"eval", "--model", corrupt_dir, "--data", data()},
                "not a valid safetensors file",
                2},
           Case{{"eval", "--model", model_dir(), "--data", (dir_.path() / "one_byte.txt").string()},
                "the data has 1 tokens; evaluation needs at least 2",
                2},
           Case{{"eval", "--model", model_dir(), "--data", "/nonexistent"}, "cannot read", 1},
           Case{{"eval", "--model", "/nonexistent", "--data", data()}, "config.json", 1},
           Case{{"init", "--config", (dir_.path() / "bad_config.json").string(), "--out",
                 (dir_.path() / "never").string()},
                "missing required key \"intermediate_size\"",
                2},
           Case{{"init", "--config", (dir_.path() / "config.json").string(), "--out",
                 (dir_.path() / "never").string(), "--dtype", "f8"},
                "--dtype must be f32, bf16 or int8, not 'f8'",
                2},
           Case{{"trace", "--model", model_dir()}, "--text is required", 2},
           Case{{"generate", "--model", model_dir()}, "--prompt TEXT or --prompt-file FILE", 2},
           Case{{"generate", "--model", model_dir(), "--prompt", "a", "--temperature=-1"},
                "temperature must be a finite number",
                2},
           Case{{"generate", "--model", model_dir(), "--prompt", "a", "--top-p", "2"},
                "top_p must be in (0, 1]",
                2},
           Case{{"generate", "--model", model_dir(), "--prompt", std::string(300, 'a')},
                "the model takes at most 256 (max_position_embeddings)",
                2},
           Case{{"generate", "--model", model_dir(), "--prompt", "a", "--device", "gpu"},
                "unknown device 'gpu': expected cpu, cuda or auto",
                2},
           Case{{"frobnicate"}, "unknown model command 'frobnicate'", 2},
       }) {
    const CommandResult result = Model(c.args);
    EXPECT_EQ(result.exit_code, c.exit_code) << c.message << "\n" << result.err;
    EXPECT_THAT(result.err, HasSubstr(c.message));
    EXPECT_EQ(Lines(result.err), 1) << result.err;
  }
  EXPECT_FALSE(std::filesystem::exists(dir_.path() / "never"));
  // The good model is untouched by all of that.
  EXPECT_EQ(Model({"eval", "--model", model_dir(), "--data", data()}).exit_code, 0);
}

}  // namespace
}  // namespace fedmoe::testing
