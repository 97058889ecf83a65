#include "model/safetensors.h"

#include <bit>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "model/checkpoint.h"
#include "model/init.h"
#include "tests/testing_temp_dir.h"

namespace fedmoe::model {
namespace {

namespace fs = std::filesystem;

void WriteRaw(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
}

// A file with the given header text and data bytes, length prefix included.
std::string FileWithHeader(const std::string& header, const std::string& data) {
  std::string bytes(8, '\0');
  for (size_t i = 0; i < 8; ++i) bytes[i] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
  return bytes + header + data;
}

// Bit patterns, so that a round trip is checked exactly (−0.0 included), not just by value.
std::vector<uint32_t> Bits(std::span<const float> values) {
  std::vector<uint32_t> bits;
  bits.reserve(values.size());
  for (const float value : values) bits.push_back(std::bit_cast<uint32_t>(value));
  return bits;
}

std::string OpenError(const fs::path& path) {
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Open(path);
  EXPECT_FALSE(file.ok());
  if (file.ok()) return "";
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument) << file.status();
  return std::string(file.status().message());
}

TEST(SafetensorsTest, RoundTripsF32ExactlyWithMetadata) {
  testing::TempDir dir;
  const std::vector<float> a = {1.5f, -2.25f, 3e-8f, 65504.0f, -0.0f, 1e30f};
  const std::vector<float> b = {42.0f};
  const std::vector<TensorToWrite> tensors = {{"layer.a", {2, 3}, a}, {"b", {1}, b}};
  ASSERT_TRUE(
      WriteSafetensors(dir.path() / "x.safetensors", tensors, DType::kF32, {{"format", "pt"}})
          .ok());
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Open(dir.path() / "x.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->metadata().at("format"), "pt");
  const SafetensorsEntry* entry = file->Find("layer.a");
  ASSERT_NE(entry, nullptr);
  EXPECT_EQ(entry->shape, (std::vector<int64_t>{2, 3}));
  std::vector<float> read(6);
  ASSERT_TRUE(file->ReadFloats(*entry, read).ok());
  EXPECT_EQ(Bits(read), Bits(a));
  std::vector<float> wrong_size(5);
  EXPECT_FALSE(file->ReadFloats(*entry, wrong_size).ok());
}

TEST(SafetensorsTest, Bf16AndF16InputAreConvertedExactlyWhereRepresentable) {
  testing::TempDir dir;
  // Values exactly representable in both 16-bit formats, and some that need rounding.
  const std::vector<float> values = {1.0f, -0.5f, 3.0f, 0.15625f, 1.0f / 3.0f, 1000.1f};
  const std::vector<TensorToWrite> tensors = {{"t", {6}, values}};
  for (const DType dtype : {DType::kBF16, DType::kF16}) {
    const fs::path path = dir.path() / std::string(DTypeName(dtype));
    ASSERT_TRUE(WriteSafetensors(path, tensors, dtype).ok());
    absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Open(path);
    ASSERT_TRUE(file.ok()) << file.status();
    EXPECT_EQ(file->entries()[0].dtype_name, DTypeName(dtype));
    std::vector<float> read(6);
    ASSERT_TRUE(file->ReadFloats(file->entries()[0], read).ok());
    for (size_t i = 0; i < 4; ++i) EXPECT_EQ(read[i], values[i]) << DTypeName(dtype);
    // bf16 keeps 8 significant bits, f16 11: rounding errs by at most 2^-8 and 2^-11 relative.
    const double bound = dtype == DType::kBF16 ? 0x1p-8 : 0x1p-11;
    for (size_t i = 4; i < 6; ++i) {
      EXPECT_LE(std::abs(read[i] - values[i]), bound * std::abs(values[i])) << DTypeName(dtype);
    }
  }
}

TEST(SafetensorsTest, HalfConversionsHandleTheEdges) {
  EXPECT_EQ(FloatToHalf(65504.0f), 0x7bff);
  EXPECT_EQ(FloatToHalf(65520.0f), 0x7c00) << "the tie above the largest half rounds to inf";
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -24)), 0x0001) << "smallest subnormal";
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -26)), 0x0000) << "below half the smallest: zero";
  EXPECT_EQ(FloatToHalf(-2.0f), 0xc000);
  EXPECT_EQ(HalfToFloat(0x0001), std::ldexp(1.0f, -24));
  EXPECT_TRUE(std::isinf(HalfToFloat(0x7c00)));
  EXPECT_TRUE(std::isnan(HalfToFloat(FloatToHalf(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_EQ(FloatToBFloat16(1.0f), 0x3f80);
  EXPECT_EQ(FloatToBFloat16(BFloat16ToFloat(0x4049)), 0x4049);
  // 1 + 2^-8 is the tie between bf16 1.0 and 1.0078125; even mantissa wins.
  EXPECT_EQ(FloatToBFloat16(1.0f + 0x1p-8f), 0x3f80);
  for (uint32_t bits = 0; bits < 0x7c00; ++bits) {  // Every finite half round-trips.
    ASSERT_EQ(FloatToHalf(HalfToFloat(static_cast<uint16_t>(bits))), bits);
  }
}

TEST(SafetensorsTest, CorruptAndTruncatedFilesAreClearErrors) {
  testing::TempDir dir;
  const fs::path path = dir.path() / "bad.safetensors";
  const std::string good_entry = R"("t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  const std::string eight_bytes(8, '\1');

  WriteRaw(path, "abc");
  EXPECT_NE(OpenError(path).find("shorter than the 8-byte header length"), std::string::npos);

  std::string huge(8, '\0');
  huge[7] = 0x10;  // 2^60 bytes of header
  WriteRaw(path, huge + "{}");
  EXPECT_NE(OpenError(path).find("over the"), std::string::npos);

  WriteRaw(path, FileWithHeader("{" + good_entry + "}", eight_bytes).substr(0, 20));
  EXPECT_NE(OpenError(path).find("runs past the end"), std::string::npos);

  WriteRaw(path, FileWithHeader("{" + good_entry + "}", eight_bytes.substr(0, 5)));
  EXPECT_NE(OpenError(path).find("ends at byte 8 but the data section has only 5"),
            std::string::npos);

  WriteRaw(path, FileWithHeader("{\"t\": [1, 2", eight_bytes));
  EXPECT_NE(OpenError(path).find("header is not a JSON object"), std::string::npos);

  WriteRaw(path, FileWithHeader(R"({"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})",
                                eight_bytes));
  EXPECT_NE(OpenError(path).find("has 8 bytes, but dtype F32 and its shape make 12"),
            std::string::npos);

  WriteRaw(path, FileWithHeader(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                                eight_bytes));
  EXPECT_NE(OpenError(path).find("overlaps"), std::string::npos);

  WriteRaw(path, FileWithHeader(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                                eight_bytes));
  EXPECT_NE(OpenError(path).find("gap of 4 bytes"), std::string::npos);

  WriteRaw(path, FileWithHeader("{" + good_entry + "}", eight_bytes + "xyz"));
  EXPECT_NE(OpenError(path).find("3 bytes after the last tensor"), std::string::npos);

  WriteRaw(path,
           FileWithHeader(R"({"t":{"dtype":"Q4","shape":[2],"data_offsets":[0,8]}})", eight_bytes));
  EXPECT_NE(OpenError(path).find("unknown dtype \"Q4\""), std::string::npos);

  WriteRaw(path, FileWithHeader(R"({"t":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})",
                                eight_bytes));
  EXPECT_NE(OpenError(path).find("not non-negative integers"), std::string::npos);

  WriteRaw(path, FileWithHeader(R"({"t":{"dtype":"F32","shape":[4294967296,4294967296],)"
                                R"("data_offsets":[0,8]}})",
                                eight_bytes));
  EXPECT_NE(OpenError(path).find("impossibly large shape"), std::string::npos);

  WriteRaw(path, FileWithHeader(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})",
                                eight_bytes));
  EXPECT_NE(OpenError(path).find("end before they begin"), std::string::npos);

  EXPECT_EQ(SafetensorsFile::Open(dir.path() / "absent").status().code(),
            absl::StatusCode::kNotFound);
}

TEST(SafetensorsTest, EveryTruncationOfAValidFileIsAnErrorNotACrash) {
  testing::TempDir dir;
  const std::vector<float> values(10, 1.0f);
  const std::vector<TensorToWrite> tensors = {{"a", {10}, values},
                                              {"b", {5}, std::span(values).first(5)}};
  const fs::path good = dir.path() / "good.safetensors";
  ASSERT_TRUE(WriteSafetensors(good, tensors, DType::kBF16).ok());
  std::ifstream in(good, std::ios::binary);
  std::ostringstream contents;
  contents << in.rdbuf();
  const std::string bytes = contents.str();
  for (size_t length = 0; length < bytes.size(); ++length) {
    WriteRaw(dir.path() / "cut", bytes.substr(0, length));
    EXPECT_FALSE(SafetensorsFile::Open(dir.path() / "cut").ok()) << length;
  }
}

TEST(SafetensorsTest, RandomlyCorruptedHeadersAreErrorsOrSafeToRead) {
  testing::TempDir dir;
  const std::vector<float> values(12, 0.5f);
  const std::vector<TensorToWrite> tensors = {{"weight", {3, 4}, values},
                                              {"bias", {4}, std::span(values).first(4)}};
  const fs::path good = dir.path() / "good.safetensors";
  ASSERT_TRUE(WriteSafetensors(good, tensors, DType::kF16).ok());
  std::ifstream in(good, std::ios::binary);
  std::ostringstream contents;
  contents << in.rdbuf();
  const std::string bytes = contents.str();
  std::mt19937 generator(1234);
  int opened = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    std::string mutated = bytes;
    // Corrupt one to three bytes of the length prefix or the JSON header.
    const size_t header_end = bytes.size() - 32;
    for (int flips = 1 + trial % 3; flips > 0; --flips) {
      mutated[generator() % header_end] = static_cast<char>(generator() % 256);
    }
    WriteRaw(dir.path() / "mutated", mutated);
    absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Open(dir.path() / "mutated");
    if (!file.ok()) continue;
    ++opened;
    for (const SafetensorsEntry& entry : file->entries()) {
      std::vector<float> out(static_cast<size_t>(entry.element_count()));
      (void)file->ReadFloats(entry, out);  // Must stay inside the mapping (ASan checks).
    }
  }
  EXPECT_LT(opened, 3000) << "the corruptions should be caught, not all ignored";
}

TEST(SafetensorsTest, WriterRefusesDuplicateNamesAndShapeMismatches) {
  testing::TempDir dir;
  const std::vector<float> values(4);
  const std::vector<TensorToWrite> duplicate = {{"a", {4}, values}, {"a", {4}, values}};
  EXPECT_FALSE(WriteSafetensors(dir.path() / "x", duplicate, DType::kF32).ok());
  const std::vector<TensorToWrite> mismatch = {{"a", {5}, values}};
  EXPECT_FALSE(WriteSafetensors(dir.path() / "x", mismatch, DType::kF32).ok());
  EXPECT_FALSE(fs::exists(dir.path() / "x"));
}

MoeConfig SmallConfig() {
  MoeConfig config;
  config.vocab_size = 50;
  config.hidden_size = 16;
  config.intermediate_size = 8;
  config.num_hidden_layers = 2;
  config.num_attention_heads = 4;
  config.num_key_value_heads = 2;
  config.head_dim = 4;
  config.num_local_experts = 3;
  config.num_experts_per_tok = 2;
  config.n_shared_experts = 1;
  config.shared_expert_intermediate_size = 8;
  return config;
}

TEST(CheckpointTest, SingleFileAndShardedCheckpointsRoundTrip) {
  testing::TempDir dir;
  const ModelParameters original = InitializeModel(SmallConfig(), 17);
  for (const uint64_t shard_bytes : {uint64_t{0}, uint64_t{4096}}) {
    const fs::path model_dir = dir.path() / std::to_string(shard_bytes);
    ASSERT_TRUE(SaveModel(original, model_dir, {DType::kF32, shard_bytes}).ok());
    EXPECT_EQ(fs::exists(model_dir / "model.safetensors.index.json"), shard_bytes > 0);
    int shards = 0;
    for (const auto& entry : fs::directory_iterator(model_dir)) {
      shards += entry.path().extension() == ".safetensors" ? 1 : 0;
    }
    EXPECT_EQ(shards > 1, shard_bytes > 0) << shards;
    absl::StatusOr<ModelParameters> loaded = LoadModel(model_dir);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    EXPECT_EQ(loaded->config().ToJson(), original.config().ToJson());
    ASSERT_EQ(loaded->values().size(), original.values().size());
    EXPECT_EQ(Bits(loaded->values()), Bits(original.values()));
  }
}

TEST(CheckpointTest, Bf16CheckpointLoadsWithinBf16Precision) {
  testing::TempDir dir;
  const ModelParameters original = InitializeModel(SmallConfig(), 3);
  ASSERT_TRUE(SaveModel(original, dir.path(), {DType::kBF16, 0}).ok());
  absl::StatusOr<ModelParameters> loaded = LoadModel(dir.path());
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  for (size_t i = 0; i < original.values().size(); ++i) {
    ASSERT_LE(std::abs(loaded->values()[i] - original.values()[i]),
              0x1p-8 * std::abs(original.values()[i]));
  }
}

TEST(CheckpointTest, MismatchesBetweenConfigAndWeightsNameTheTensor) {
  testing::TempDir dir;
  const ModelParameters original = InitializeModel(SmallConfig(), 3);
  ASSERT_TRUE(SaveModel(original, dir.path()).ok());

  // A config without shared experts leaves their tensors without a place.
  MoeConfig unshared = SmallConfig();
  unshared.n_shared_experts = 0;
  WriteRaw(dir.path() / "config.json", unshared.ToJson());
  absl::StatusOr<ModelParameters> loaded = LoadModel(dir.path());
  EXPECT_NE(loaded.status().message().find("shared_experts.w1.weight\" has no place"),
            std::string::npos)
      << loaded.status();

  MoeConfig fewer = SmallConfig();
  fewer.num_local_experts = 2;
  WriteRaw(dir.path() / "config.json", fewer.ToJson());
  loaded = LoadModel(dir.path());
  EXPECT_NE(loaded.status().message().find("gate.weight\" has shape [3, 16] but config.json "
                                           "needs [2, 16]"),
            std::string::npos)
      << loaded.status();

  MoeConfig wider = SmallConfig();
  wider.intermediate_size = 10;
  WriteRaw(dir.path() / "config.json", wider.ToJson());
  loaded = LoadModel(dir.path());
  EXPECT_NE(loaded.status().message().find("has shape [8, 16] but config.json needs [10, 16]"),
            std::string::npos)
      << loaded.status();

  MoeConfig untied = SmallConfig();
  ModelParameters tied_model([] {
    MoeConfig c = SmallConfig();
    c.tie_word_embeddings = true;
    return c;
  }());
  ASSERT_TRUE(SaveModel(tied_model, dir.path()).ok());
  WriteRaw(dir.path() / "config.json", untied.ToJson());
  loaded = LoadModel(dir.path());
  EXPECT_NE(loaded.status().message().find("\"lm_head.weight\" is missing"), std::string::npos)
      << loaded.status();
}

TEST(CheckpointTest, AnIndexCannotPointOutsideTheDirectory) {
  testing::TempDir dir;
  ASSERT_TRUE(SaveModel(InitializeModel(SmallConfig(), 3), dir.path(), {DType::kF32, 4096}).ok());
  WriteRaw(dir.path() / "model.safetensors.index.json",
           R"({"weight_map": {"model.norm.weight": "../../etc/passwd"}})");
  absl::StatusOr<ModelParameters> loaded = LoadModel(dir.path());
  EXPECT_NE(loaded.status().message().find("is not a file name inside the directory"),
            std::string::npos)
      << loaded.status();
  WriteRaw(dir.path() / "model.safetensors.index.json",
           R"({"weight_map": {"model.norm.weight": "model-09.safetensors"}})");
  EXPECT_EQ(LoadModel(dir.path()).status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace fedmoe::model
