// The three YAML configs an operator writes, on arbitrary bytes: coordinator.yaml, client.yaml
// and train.yaml, each read the way its program reads it. Each either loads or is refused with
// an error; none may crash, hang or throw (yaml-cpp throws, and the reader must catch it all).
#include <string>

#include "client/client_config.h"
#include "client/train_options.h"
#include "config/yaml_config.h"
#include "coordinator/config.h"
#include "model/trainer.h"
#include "tests/fuzz/fuzz_support.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fedmoe::fuzz::DiscardLogs();
  const std::filesystem::path path = fedmoe::fuzz::WriteScratchFile("config.yaml", {data, size});

  absl::StatusOr<fedmoe::coordinator::CoordinatorConfig> coordinator =
      fedmoe::coordinator::CoordinatorConfig::Load(path);
  if (coordinator.ok()) {
    FEDMOE_FUZZ_CHECK(!coordinator->federation.empty(), "a coordinator config without federation");
  }
  absl::StatusOr<fedmoe::client::ClientConfig> client = fedmoe::client::ClientConfig::Load(path);
  if (client.ok()) {
    FEDMOE_FUZZ_CHECK(!client->client_id.empty(), "a client config without client_id");
  }
  // `fedmoe-client train --config FILE`.
  absl::StatusOr<fedmoe::config::YamlConfigReader> reader =
      fedmoe::config::YamlConfigReader::FromFile(path);
  if (!reader.ok()) return 0;
  fedmoe::model::TrainOptions options;
  fedmoe::client::ComputeSettings compute;
  int64_t threads = 0;
  fedmoe::client::ReadTrainOptions(*reader, "", &options, &threads, &compute);
  fedmoe::client::ReadAdapterTrainingOptions(*reader, "", &options);
  if (reader->Finish().ok()) {
    FEDMOE_FUZZ_CHECK(options.steps >= 1 && options.batch_size >= 1 && options.seq_len >= 2 &&
                          options.learning_rate > 0,
                      "train options accepted out of their ranges");
  }
  return 0;
}
