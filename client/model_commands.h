// `fedmoe-client model ...`: evaluate, create, inspect and trace a model directory without a
// federation, for the ML engineers who prepare and check checkpoints.
#ifndef FEDMOE_CLIENT_MODEL_COMMANDS_H_
#define FEDMOE_CLIENT_MODEL_COMMANDS_H_

#include <string>
#include <vector>

namespace fedmoe::client {

extern const char kModelUsage[];

// args start with the verb (eval, init, inspect, trace). Returns the process exit status.
int ModelCommand(const std::vector<std::string>& args);

extern const char kTrainUsage[];

// `fedmoe-client train`: local fine-tuning of a model directory on a data directory.
int TrainCommand(const std::vector<std::string>& args);

}  // namespace fedmoe::client

#endif  // FEDMOE_CLIENT_MODEL_COMMANDS_H_
