// `fedmoe-client privacy ...`: record-level privacy questions a site answers on its own, before
// it trains.
#ifndef FEDMOE_CLIENT_PRIVACY_COMMANDS_H_
#define FEDMOE_CLIENT_PRIVACY_COMMANDS_H_

#include <string>
#include <vector>

namespace fedmoe::client {

extern const char kPrivacyUsage[];

// args start with the verb (plan). Returns the process exit status.
int PrivacyCommand(const std::vector<std::string>& args);

}  // namespace fedmoe::client

#endif  // FEDMOE_CLIENT_PRIVACY_COMMANDS_H_
