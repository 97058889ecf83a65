#include "logging/grpc_log.h"

#include <grpc/support/log.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "logging/log.h"

namespace fedmoe {
namespace {

constexpr absl::Duration kInterval = absl::Seconds(10);
// Source locations remembered; gRPC logs from a few hundred at most.
constexpr size_t kMaxLocations = 1024;

struct Throttle {
  absl::Time logged_at;
  int64_t not_logged = 0;
};

void LogGrpcLine(gpr_log_func_args* args) {
  static std::mutex mutex;
  static std::map<std::string, Throttle>* locations = new std::map<std::string, Throttle>();
  const std::string location =
      absl::StrCat(args->file != nullptr ? args->file : "?", ":", args->line);
  int64_t not_logged = 0;
  {
    std::lock_guard<std::mutex> lock(mutex);
    const absl::Time now = absl::Now();
    auto found = locations->find(location);
    if (found != locations->end()) {
      if (now - found->second.logged_at < kInterval) {
        ++found->second.not_logged;
        return;
      }
      not_logged = found->second.not_logged;
      found->second = Throttle{now, 0};
    } else if (locations->size() < kMaxLocations) {
      locations->emplace(location, Throttle{now, 0});
    }
  }
  // gRPC's errors are mostly a peer's (a handshake that failed): warnings of this program.
  const LogLevel level =
      args->severity == GPR_LOG_SEVERITY_ERROR
          ? LogLevel::kWarning
          : (args->severity == GPR_LOG_SEVERITY_INFO ? LogLevel::kInfo : LogLevel::kDebug);
  LogEvent(level, "grpc")
      .Field("message", PrintableLine(args->message != nullptr ? args->message : "", 512))
      .Field("source", location)
      .Field("not_logged_since_last", not_logged);
}

}  // namespace

void RouteGrpcLogsToJson() { gpr_set_log_function(LogGrpcLine); }

}  // namespace fedmoe
