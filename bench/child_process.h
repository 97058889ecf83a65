// Running a measurement in a child process of its own, so that its peak RSS (ru_maxrss, which a
// process never gives back) is its own and not the high-water mark of whatever ran before it.
#ifndef FEDMOE_BENCH_CHILD_PROCESS_H_
#define FEDMOE_BENCH_CHILD_PROCESS_H_

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <functional>
#include <nlohmann/json.hpp>
#include <string>

namespace fedmoe::bench {

// Runs `run` in a forked child and returns the JSON it returned, or {"error": ...} when the child
// failed.
inline nlohmann::json InChild(const std::function<nlohmann::json()>& run) {
  int pipe_ends[2];
  if (pipe(pipe_ends) != 0) return {{"error", "pipe failed"}};
  const pid_t child = fork();
  if (child == 0) {
    close(pipe_ends[0]);
    const std::string line = run().dump();
    const ssize_t written = write(pipe_ends[1], line.data(), line.size());
    _exit(written == static_cast<ssize_t>(line.size()) ? 0 : 1);
  }
  close(pipe_ends[1]);
  std::string output;
  char buffer[4096];
  for (ssize_t n; (n = read(pipe_ends[0], buffer, sizeof(buffer))) > 0;) {
    output.append(buffer, static_cast<size_t>(n));
  }
  close(pipe_ends[0]);
  int status = 0;
  waitpid(child, &status, 0);
  const nlohmann::json json = nlohmann::json::parse(output, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return {{"error", "the child failed"}};
  }
  return json;
}

// This process's peak resident set so far, in MiB.
inline double PeakRssMib() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;
}

}  // namespace fedmoe::bench

#endif  // FEDMOE_BENCH_CHILD_PROCESS_H_
