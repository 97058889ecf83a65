// Local training settings from YAML: a `train --config FILE` file, or (for the daemon) a
// section of client.yaml. Every key is optional and defaults to model::TrainOptions, except
// device and matmul_precision, which default to auto: the GPU where one answers, and bf16
// weight products where the device has them.
#ifndef FEDMOE_CLIENT_TRAIN_OPTIONS_H_
#define FEDMOE_CLIENT_TRAIN_OPTIONS_H_

#include <string>

#include "absl/status/status.h"
#include "config/yaml_config.h"
#include "model/compute.h"
#include "model/trainer.h"

namespace fedmoe::client {

// Where local training runs and in which precision: as written (for echoing a config back, and
// for a flag to override one before resolving), and as resolved for this machine.
struct ComputeSettings {
  std::string device_name = "auto";            // cpu, cuda or auto
  std::string matmul_precision_name = "auto";  // fp32, bf16 or auto
  model::Device device = model::Device::kCpu;
  model::MatMulPrecision matmul_precision = model::MatMulPrecision::kFloat32;

  // Resolves the names: the device first (auto: a GPU when one answers), then the precision for
  // that device. The error says which setting cannot be had here, and why.
  absl::Status Resolve();

  // Fits the resolved device to the model about to be trained. A GPU that auto chose but whose
  // kernels cannot train the model gives way to the CPU, in the precision the name gives
  // there, and the line returned says so; a GPU asked for by name is an error instead, which
  // says why. An empty line when nothing changed.
  absl::StatusOr<std::string> FitToModel(const model::MoeConfig& config);
};

// Reads `device` and `matmul_precision` under `prefix` and resolves them, recording on the
// reader why one cannot be had here.
void ReadComputeSettings(config::YamlConfigReader& reader, const std::string& prefix,
                         ComputeSettings* settings);

// Reads the keys under `prefix` ("" for the top level, "training." for a section) into
// *options, recording range errors on the reader; the caller's Finish() reports them.
// Also reads `threads` into *threads (0: every core), and the device and precision into
// *compute when given (else they are resolved into *options alone).
void ReadTrainOptions(config::YamlConfigReader& reader, const std::string& prefix,
                      model::TrainOptions* options, int64_t* threads,
                      ComputeSettings* compute = nullptr);

// Reads train.yaml's lora: block under `prefix` into options->adapters. Only
// `fedmoe-client train` reads it: a federation's adapters are the round policy's to set.
void ReadAdapterTrainingOptions(config::YamlConfigReader& reader, const std::string& prefix,
                                model::TrainOptions* options);

}  // namespace fedmoe::client

#endif  // FEDMOE_CLIENT_TRAIN_OPTIONS_H_
