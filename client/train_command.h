// `fedmoe-client train`: fine-tuning a model directory (whole, or LoRA adapters over a frozen
// base) on local text, on the GPU or the CPU.
#ifndef FEDMOE_CLIENT_TRAIN_COMMAND_H_
#define FEDMOE_CLIENT_TRAIN_COMMAND_H_

#include <string>
#include <vector>

namespace fedmoe::client {

extern const char kTrainUsage[];

int TrainCommand(const std::vector<std::string>& args);

}  // namespace fedmoe::client

#endif  // FEDMOE_CLIENT_TRAIN_COMMAND_H_
