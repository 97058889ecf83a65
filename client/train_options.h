// Local training settings from YAML: a `train --config FILE` file, or (for the daemon) a
// section of client.yaml. Every key is optional and defaults to model::TrainOptions, except
// matmul_precision, which defaults to auto (bf16 weight products where the CPU has them).
#ifndef FEDMOE_CLIENT_TRAIN_OPTIONS_H_
#define FEDMOE_CLIENT_TRAIN_OPTIONS_H_

#include <string>

#include "config/yaml_config.h"
#include "model/trainer.h"

namespace fedmoe::client {

// Reads the keys under `prefix` ("" for the top level, "training." for a section) into
// *options, recording range errors on the reader; the caller's Finish() reports them.
// Also reads `threads` into *threads (0: every core).
void ReadTrainOptions(config::YamlConfigReader& reader, const std::string& prefix,
                      model::TrainOptions* options, int64_t* threads);

// Reads `key` (auto, fp32 or bf16; absent: auto) into *name and returns it resolved for this
// CPU; where it cannot be had here, records why on the reader (and returns fp32).
model::MatMulPrecision ReadMatMulPrecision(config::YamlConfigReader& reader, const std::string& key,
                                           std::string* name);

}  // namespace fedmoe::client

#endif  // FEDMOE_CLIENT_TRAIN_OPTIONS_H_
