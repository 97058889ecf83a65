// `fedmoe-client model generate`: text from a model directory (with a site's adapters, over a
// compact base if asked), streamed as it is generated (issue [serve]).
#ifndef FEDMOE_CLIENT_GENERATE_COMMAND_H_
#define FEDMOE_CLIENT_GENERATE_COMMAND_H_

#include <string>
#include <vector>

namespace fedmoe::client {

extern const char kGenerateUsage[];

// args follow `model generate`. Returns the process exit status.
int GenerateCommand(const std::vector<std::string>& args);

}  // namespace fedmoe::client

#endif  // FEDMOE_CLIENT_GENERATE_COMMAND_H_
