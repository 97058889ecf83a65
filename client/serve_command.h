// `fedmoe-client serve`: the OpenAI-compatible HTTP server over a model directory, with a
// site's adapter over it (issue [serve]; client/serve/).
#ifndef FEDMOE_CLIENT_SERVE_COMMAND_H_
#define FEDMOE_CLIENT_SERVE_COMMAND_H_

#include <string>
#include <vector>

namespace fedmoe::client {

extern const char kServeUsage[];

// args follow `serve`. Serves until SIGTERM or SIGINT; returns the process exit status.
int ServeCommand(const std::vector<std::string>& args);

}  // namespace fedmoe::client

#endif  // FEDMOE_CLIENT_SERVE_COMMAND_H_
