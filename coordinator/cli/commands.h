// The commands of fedmoe-coordinator, one file per group (main.cc has the usage and the
// dispatch): state_dir_commands.cc (init, serve, --check-config, backup, restore),
// identity_commands.cc (certificates, ca, token, clients, admins) and federation_commands.cc
// (status, rounds, privacy). Each takes the arguments after its name and returns the exit
// status: 0 success, 1 the operation failed (the message says why), 2 bad usage.
#ifndef FEDMOE_COORDINATOR_CLI_COMMANDS_H_
#define FEDMOE_COORDINATOR_CLI_COMMANDS_H_

#include <google/protobuf/message.h>
#include <google/protobuf/timestamp.pb.h>
#include <google/protobuf/util/time_util.h>
#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "config/command_line.h"
#include "coordinator/config.h"
#include "fedmoe/v1/admin.grpc.pb.h"

namespace fedmoe::coordinator::cli {

using config::CommandLine;
using google::protobuf::util::TimeUtil;

int Init(const std::vector<std::string>& args);
int Serve(const std::vector<std::string>& args);
int CheckConfig(const std::vector<std::string>& args);
int Backup(const std::vector<std::string>& args);
int Restore(const std::vector<std::string>& args);

int CertificatesCommand(const std::vector<std::string>& args);
int CaCommand(const std::vector<std::string>& args);
int TokenCommand(const std::vector<std::string>& args);
int ClientsCommand(const std::vector<std::string>& args);
int AdminsCommand(const std::vector<std::string>& args);

int Status(const std::vector<std::string>& args);
int RoundsCommand(const std::vector<std::string>& args);
int PrivacyCommand(const std::vector<std::string>& args);

// What the commands share (common.cc).
// Prints the one-line error and returns exit status 1.
int Fail(const absl::Status& status);
int Fail(const grpc::Status& status);
// A timestamp as RFC 3339 UTC, "-" when unset.
std::string Time(const google::protobuf::Timestamp& timestamp);
// A message as JSON with proto field names and every field printed.
std::string Json(const google::protobuf::Message& message);
absl::StatusOr<CoordinatorConfig> ConfigFromFlags(const CommandLine& flags,
                                                  const std::string& missing);
absl::StatusOr<std::unique_ptr<v1::Admin::Stub>> DialAdmin(const CommandLine& flags);
// A context with the admin commands' deadline.
std::unique_ptr<grpc::ClientContext> AdminContext();

}  // namespace fedmoe::coordinator::cli

#endif  // FEDMOE_COORDINATOR_CLI_COMMANDS_H_
