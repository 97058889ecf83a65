// The helpers the coordinator's commands share.
#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>

#include "absl/time/time.h"
#include "config/command_line.h"
#include "coordinator/cli/commands.h"
#include "coordinator/config.h"
#include "coordinator/service/admin_channel.h"
#include "fedmoe/v1/admin.grpc.pb.h"

namespace fedmoe::coordinator::cli {

int Fail(const absl::Status& status) { return config::ReportFailure("fedmoe-coordinator", status); }

// A failed admin RPC: the coordinator's message, and exit status 1 (the call, not its
// arguments, failed).
int Fail(const grpc::Status& status) {
  return config::ReportFailure("fedmoe-coordinator", absl::UnknownError(status.error_message()));
}

std::string Time(const google::protobuf::Timestamp& timestamp) {
  if (timestamp.seconds() == 0 && timestamp.nanos() == 0) return "-";
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", absl::FromUnixSeconds(timestamp.seconds()),
                          absl::UTCTimeZone());
}

std::string Json(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  std::string json;
  (void)google::protobuf::util::MessageToJsonString(message, &json, options);
  return json;
}

// The config a command works on: --config FILE, or the one in --state-dir DIR; `missing` is
// the error when neither is given.
absl::StatusOr<CoordinatorConfig> ConfigFromFlags(const CommandLine& flags,
                                                  const std::string& missing) {
  std::filesystem::path config_path;
  if (auto config = flags.Get("config")) {
    config_path = *config;
  } else if (auto dir = flags.Get("state-dir")) {
    config_path = StateDir{*dir}.config();
  } else {
    return absl::InvalidArgumentError(missing);
  }
  return CoordinatorConfig::Load(config_path);
}

// The admin's channel to the running coordinator: with the credentials of `admins add`'s
// --out directory, or with the operator's own from the state directory.
absl::StatusOr<std::unique_ptr<v1::Admin::Stub>> DialAdmin(const CommandLine& flags) {
  if (auto admin_dir = flags.Get("admin-dir")) {
    return coordinator::DialAdmin(AdminCredentials{*admin_dir}, flags.GetOr("coordinator", ""));
  }
  absl::StatusOr<CoordinatorConfig> config = ConfigFromFlags(
      flags,
      "admin commands need --state-dir DIR (or --config FILE) to find the admin certificate");
  if (!config.ok()) return config.status();
  return coordinator::DialAdmin(*config, flags.GetOr("coordinator", ""));
}

std::unique_ptr<grpc::ClientContext> AdminContext() {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(15));
  return context;
}

}  // namespace fedmoe::coordinator::cli
