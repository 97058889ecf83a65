// A model directory in the Hugging Face layout: config.json plus model.safetensors, or a
// sharded checkpoint (model-0000i-of-0000n.safetensors and model.safetensors.index.json).
#ifndef FEDMOE_MODEL_CHECKPOINT_H_
#define FEDMOE_MODEL_CHECKPOINT_H_

#include <cstdint>
#include <filesystem>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/parameters.h"
#include "model/safetensors.h"

namespace fedmoe::model {

// Loads config.json and every tensor of its layout, converting F16 and BF16 to f32. Missing
// tensors, tensors of the wrong shape and tensors the layout has no place for are errors that
// name the tensor; so are an index that points outside the directory or at a missing shard.
absl::StatusOr<ModelParameters> LoadModel(const std::filesystem::path& directory);

// The weight files of a model directory, mapped and validated: the shards its index names, or
// model.safetensors.
absl::StatusOr<std::vector<SafetensorsFile>> OpenWeightFiles(
    const std::filesystem::path& directory);

struct SaveOptions {
  DType dtype = DType::kF32;
  // Split into shards of at most about this many bytes, with an index; 0 writes one file.
  uint64_t max_shard_bytes = 0;
};

// Writes config.json and the weights into `directory` (created if missing). Each file is
// replaced atomically, and the index or single weights file, which is what a reader opens
// first, is written last.
absl::Status SaveModel(const ModelParameters& parameters, const std::filesystem::path& directory,
                       const SaveOptions& options = {});

// The bytes of the weight files in a model directory, for inspect.
absl::StatusOr<uint64_t> CheckpointBytes(const std::filesystem::path& directory);

}  // namespace fedmoe::model

#endif  // FEDMOE_MODEL_CHECKPOINT_H_
