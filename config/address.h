// host:port addresses as written in configs and flags.
#ifndef FEDMOE_CONFIG_ADDRESS_H_
#define FEDMOE_CONFIG_ADDRESS_H_

#include <string>

#include "absl/status/statusor.h"

namespace fedmoe::config {

struct HostPort {
  // Without the brackets of an IPv6 literal.
  std::string host;
  std::string port;
};

// Splits "host:port" ("[::1]:7443" for IPv6) and checks the port is 1..65535.
absl::StatusOr<HostPort> ParseHostPort(const std::string& address);

}  // namespace fedmoe::config

#endif  // FEDMOE_CONFIG_ADDRESS_H_
