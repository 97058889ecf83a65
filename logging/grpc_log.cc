#include "logging/grpc_log.h"

#include <grpc/support/log.h>

#include <cstdint>
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "logging/log.h"
#include "logging/log_throttle.h"

namespace fedmoe {
namespace {

void LogGrpcLine(gpr_log_func_args* args) {
  // gRPC logs from a few hundred source lines at most.
  static LogThrottle* throttle = new LogThrottle(absl::Seconds(10), /*max_keys=*/1024);
  const std::string location =
      absl::StrCat(args->file != nullptr ? args->file : "?", ":", args->line);
  const std::optional<int64_t> not_logged = throttle->ShouldLog(location, absl::Now());
  if (!not_logged.has_value()) return;
  // gRPC's errors are mostly a peer's (a handshake that failed): warnings of this program.
  const LogLevel level =
      args->severity == GPR_LOG_SEVERITY_ERROR
          ? LogLevel::kWarning
          : (args->severity == GPR_LOG_SEVERITY_INFO ? LogLevel::kInfo : LogLevel::kDebug);
  LogEvent(level, "grpc")
      .Field("message", PrintableLine(args->message != nullptr ? args->message : "", 512))
      .Field("source", location)
      .Field("not_logged_since_last", *not_logged);
}

}  // namespace

void RouteGrpcLogsToJson() { gpr_set_log_function(LogGrpcLine); }

}  // namespace fedmoe
