// A model directory whose index (model.safetensors.index.json) or config.json is arbitrary,
// beside two real shards. LoadModel either refuses, or loads exactly the tensors the shards
// hold: an index can only choose among the files in the directory, never reach outside it.
//
// The first byte picks the file (even: the index, odd: config.json); the rest is its content.
#include <algorithm>
#include <string>

#include "absl/strings/str_cat.h"
#include "model/checkpoint.h"
#include "model/init.h"
#include "storage/read_file.h"
#include "tests/fuzz/fuzz_support.h"
#include "tests/testing_tiny_model.h"

namespace {

using fedmoe::model::ModelParameters;

struct SavedModel {
  std::filesystem::path directory;
  ModelParameters parameters;
  std::string config_json;
  std::string index_json;
};

std::string ReadWhole(const std::filesystem::path& path) {
  absl::StatusOr<std::string> bytes = fedmoe::storage::ReadSmallFile(path);
  if (!bytes.ok()) fedmoe::fuzz::Violated(bytes.status().ToString());
  return *std::move(bytes);
}

const SavedModel& Saved() {
  static const SavedModel* const saved = [] {
    const std::filesystem::path directory = fedmoe::fuzz::ScratchDirectory() / "model";
    ModelParameters parameters =
        fedmoe::model::InitializeModel(fedmoe::testing::TinyMoeConfig(), 11);
    // About half the model per shard: two shards and an index.
    const absl::Status status = fedmoe::model::SaveModel(
        parameters, directory,
        {.max_shard_bytes = static_cast<uint64_t>(parameters.values().size()) * 2});
    if (!status.ok()) fedmoe::fuzz::Violated(status.ToString());
    return new SavedModel{directory, std::move(parameters), ReadWhole(directory / "config.json"),
                          ReadWhole(directory / "model.safetensors.index.json")};
  }();
  return *saved;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fedmoe::fuzz::DiscardLogs();
  const SavedModel& saved = Saved();
  if (size == 0) return 0;
  const bool fuzz_config = (data[0] & 1) != 0;
  const std::span<const uint8_t> content(data + 1, size - 1);
  const std::span<const uint8_t> kept_config(
      reinterpret_cast<const uint8_t*>(saved.config_json.data()), saved.config_json.size());
  const std::span<const uint8_t> kept_index(
      reinterpret_cast<const uint8_t*>(saved.index_json.data()), saved.index_json.size());
  // The model directory is "model" in the scratch directory (Saved()).
  fedmoe::fuzz::WriteScratchFile("model/config.json", fuzz_config ? content : kept_config);
  fedmoe::fuzz::WriteScratchFile("model/model.safetensors.index.json",
                                 fuzz_config ? kept_index : content);

  absl::StatusOr<ModelParameters> loaded = fedmoe::model::LoadModel(saved.directory);
  if (!loaded.ok()) return 0;
  const std::span<const float> expected = saved.parameters.values();
  const std::span<const float> got = loaded->values();
  FEDMOE_FUZZ_CHECK(
      got.size() == expected.size() && std::equal(got.begin(), got.end(), expected.begin()),
      "LoadModel succeeded with values other than the shards hold");
  return 0;
}
