// Real processes for integration tests: one-shot commands with their output, long-running
// daemons that can be signalled and killed, and free loopback ports.
#ifndef FEDMOE_TESTS_INTEGRATION_PROCESS_HARNESS_H_
#define FEDMOE_TESTS_INTEGRATION_PROCESS_HARNESS_H_

#include <sys/types.h>

#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/time/time.h"

namespace fedmoe::testing {

// The path of a program built into build/bin.
std::string BinaryPath(const std::string& name);

struct CommandResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};

// Runs a command to completion (killed after `timeout`) and returns its output.
CommandResult RunCommand(const std::vector<std::string>& argv,
                         absl::Duration timeout = absl::Seconds(60));

// `fedmoe-client model init` of a Mixtral config.json's text, with random weights from `seed`,
// into directory/model (the config is written beside it).
CommandResult InitModel(const std::filesystem::path& directory, const std::string& config_json,
                        int seed);

// A background process whose stdout and stderr go to a log file. Killed with SIGKILL when
// destroyed if still running, so a failing test leaves nothing behind.
class Daemon {
 public:
  Daemon(const std::vector<std::string>& argv, std::filesystem::path log);
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;
  ~Daemon();

  void Signal(int signal);
  // The exit code (128 + signal when killed by one), or nullopt if still running at timeout.
  std::optional<int> Wait(absl::Duration timeout);
  bool running();
  std::string Log() const;
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
  std::optional<int> exit_code_;
  std::filesystem::path log_;
};

// A kibibyte field of /proc/<pid>/status in MiB, e.g. VmRSS (resident) or VmHWM (its peak); 0
// when the process or the field is gone.
double ProcStatusMiB(pid_t pid, const std::string& field);

// A loopback TCP port that was free a moment ago, from below the ephemeral range.
int FreePort();

// Polls `condition` every 50 ms until it holds or `timeout` passes.
bool WaitFor(const std::function<bool()>& condition, absl::Duration timeout);

std::string ReadFile(const std::filesystem::path& path);
void WriteFile(const std::filesystem::path& path, const std::string& contents);
// Replaces the first occurrence of `from` in the file; returns false if absent.
bool ReplaceInFile(const std::filesystem::path& path, const std::string& from,
                   const std::string& to);

// GET /metrics from a Prometheus endpoint at `address` (127.0.0.1:port) and parse the text
// exposition format, independently of the library that produced it: every line is a
// "# HELP"/"# TYPE" comment or a sample `name{labels} value`, and every sample's family was
// declared by a # TYPE line. Samples are keyed as printed ("name{label=\"v\"}"). Returns
// false with `error` set when the request fails or a line is malformed. `bearer`, when given,
// is sent as the Authorization header.
bool ScrapeMetrics(const std::string& address, std::map<std::string, double>& samples,
                   std::string& error, const std::string& bearer = "");

}  // namespace fedmoe::testing

#endif  // FEDMOE_TESTS_INTEGRATION_PROCESS_HARNESS_H_
