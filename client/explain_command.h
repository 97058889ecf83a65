// `fedmoe-client model explain`: what the model did with one text, as a self-contained HTML
// page (client/explain_report.h) and one JSON line.
#ifndef FEDMOE_CLIENT_EXPLAIN_COMMAND_H_
#define FEDMOE_CLIENT_EXPLAIN_COMMAND_H_

#include <string>
#include <vector>

namespace fedmoe::client {

extern const char kExplainUsage[];

int ExplainCommand(const std::vector<std::string>& args);

}  // namespace fedmoe::client

#endif  // FEDMOE_CLIENT_EXPLAIN_COMMAND_H_
