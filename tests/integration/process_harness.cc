#include "tests/integration/process_harness.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstdlib>
#include <fstream>
#include <random>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include "absl/time/clock.h"

extern char** environ;

namespace fedmoe::testing {
namespace {

pid_t Spawn(const std::vector<std::string>& argv, const std::filesystem::path& out,
            const std::filesystem::path& err) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, out.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (err == out) {
    posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
  } else {
    posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, err.c_str(),
                                     O_WRONLY | O_CREAT | O_TRUNC, 0600);
  }
  std::vector<char*> args;
  args.reserve(argv.size() + 1);
  for (const std::string& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
  args.push_back(nullptr);
  pid_t pid = -1;
  if (posix_spawn(&pid, args[0], &actions, nullptr, args.data(), environ) != 0) pid = -1;
  posix_spawn_file_actions_destroy(&actions);
  return pid;
}

int DecodeStatus(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

std::optional<int> WaitPid(pid_t pid, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    int status = 0;
    const pid_t done = ::waitpid(pid, &status, WNOHANG);
    if (done == pid) return DecodeStatus(status);
    if (done < 0) return -1;
    if (absl::Now() >= deadline) return std::nullopt;
    absl::SleepFor(absl::Milliseconds(20));
  }
}

std::filesystem::path TempFile(const std::string& stem) {
  std::string pattern = (std::filesystem::temp_directory_path() / (stem + "-XXXXXX")).string();
  const int fd = ::mkstemp(pattern.data());
  if (fd >= 0) ::close(fd);
  return pattern;
}

}  // namespace

std::string BinaryPath(const std::string& name) { return std::string(FEDMOE_BIN_DIR) + "/" + name; }

CommandResult RunCommand(const std::vector<std::string>& argv, absl::Duration timeout) {
  const std::filesystem::path out = TempFile("fedmoe-out");
  const std::filesystem::path err = TempFile("fedmoe-err");
  CommandResult result;
  const pid_t pid = Spawn(argv, out, err);
  if (pid > 0) {
    std::optional<int> code = WaitPid(pid, timeout);
    if (!code.has_value()) {
      ::kill(pid, SIGKILL);
      code = WaitPid(pid, absl::Seconds(5));
    }
    result.exit_code = code.value_or(-1);
  }
  result.out = ReadFile(out);
  result.err = ReadFile(err);
  std::filesystem::remove(out);
  std::filesystem::remove(err);
  return result;
}

CommandResult InitModel(const std::filesystem::path& directory, const std::string& config_json,
                        int seed) {
  WriteFile(directory / "config.json", config_json);
  return RunCommand({BinaryPath("fedmoe-client"), "model", "init", "--config",
                     (directory / "config.json").string(), "--out", (directory / "model").string(),
                     "--seed", std::to_string(seed)});
}

Daemon::Daemon(const std::vector<std::string>& argv, std::filesystem::path log)
    : log_(std::move(log)) {
  pid_ = Spawn(argv, log_, log_);
}

Daemon::~Daemon() {
  if (running()) {
    ::kill(pid_, SIGKILL);
    Wait(absl::Seconds(5));
  }
}

void Daemon::Signal(int signal) {
  if (running()) ::kill(pid_, signal);
}

std::optional<int> Daemon::Wait(absl::Duration timeout) {
  if (!exit_code_.has_value() && pid_ > 0) exit_code_ = WaitPid(pid_, timeout);
  return exit_code_;
}

bool Daemon::running() { return pid_ > 0 && !Wait(absl::ZeroDuration()).has_value(); }

std::string Daemon::Log() const { return ReadFile(log_); }

namespace {

// Binds a loopback socket to `port` (0: the kernel chooses), closes it, and returns the port it
// had, or 0 if the bind failed.
int BindLoopback(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 0;
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = htons(static_cast<uint16_t>(port));
  socklen_t length = sizeof(address);
  const bool bound = ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0 &&
                     ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) == 0;
  ::close(fd);
  return bound ? ntohs(address.sin_port) : 0;
}

// The first port the kernel hands to outgoing connections (32768 by default).
int FirstEphemeralPort() {
  std::ifstream range("/proc/sys/net/ipv4/ip_local_port_range");
  int first = 32768;
  range >> first;
  return first;
}

}  // namespace

double ProcStatusMiB(pid_t pid, const std::string& field) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind(field + ":", 0) == 0) {
      std::istringstream fields(line.substr(field.size() + 1));
      double kib = 0;
      fields >> kib;
      return kib / 1024.0;
    }
  }
  return 0;
}

int FreePort() {
  // Ports below the ephemeral range: a port the kernel chose would be one it may give the next
  // outgoing connection (another test's client, say) before the daemon meant to bind it does.
  // Random, so that tests running side by side rarely try the same one.
  static std::mt19937 random(std::random_device{}() ^ static_cast<unsigned>(::getpid()));
  const int first_ephemeral = FirstEphemeralPort();
  constexpr int kLowest = 10000;
  if (first_ephemeral > kLowest + 1000) {
    std::uniform_int_distribution<int> port(kLowest, first_ephemeral - 1);
    // The ports this process handed out are not bound yet when the next is asked for (a test
    // takes three before it starts its coordinator): never the same one twice.
    static std::set<int> handed_out;
    for (int attempt = 0; attempt < 100; ++attempt) {
      const int candidate = port(random);
      if (handed_out.contains(candidate)) continue;
      if (BindLoopback(candidate) != 0) {
        handed_out.insert(candidate);
        return candidate;
      }
    }
  }
  // An unusual range: let the kernel choose, and accept the race.
  return BindLoopback(0);
}

bool ScrapeMetrics(const std::string& address, std::map<std::string, double>& samples,
                   std::string& error, const std::string& bearer) {
  samples.clear();
  const size_t colon = address.rfind(':');
  const int port = std::atoi(address.c_str() + colon + 1);
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in peer{};
  peer.sin_family = AF_INET;
  peer.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  peer.sin_port = htons(static_cast<uint16_t>(port));
  if (::connect(fd, reinterpret_cast<sockaddr*>(&peer), sizeof(peer)) != 0) {
    ::close(fd);
    error = "cannot connect to " + address;
    return false;
  }
  const std::string request = "GET /metrics HTTP/1.0\r\nHost: " + address + "\r\n" +
                              (bearer.empty() ? "" : "Authorization: Bearer " + bearer + "\r\n") +
                              "\r\n";
  if (::write(fd, request.data(), request.size()) != static_cast<ssize_t>(request.size())) {
    ::close(fd);
    error = "cannot send the request";
    return false;
  }
  std::string reply;
  char buffer[4096];
  for (ssize_t n; (n = ::read(fd, buffer, sizeof buffer)) > 0;) {
    reply.append(buffer, static_cast<size_t>(n));
  }
  ::close(fd);
  const size_t body = reply.find("\r\n\r\n");
  if (reply.rfind("HTTP/1.", 0) != 0 || reply.find(" 200 ") == std::string::npos ||
      body == std::string::npos) {
    error = "not an HTTP 200 answer: " + reply.substr(0, 80);
    return false;
  }
  static const std::regex kSample(
      R"(([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="[^"]*",?)*\})? (\S+))");
  static const std::regex kType(
      R"(# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped))");
  std::set<std::string> families;
  std::istringstream lines(reply.substr(body + 4));
  std::string line;
  while (std::getline(lines, line)) {
    std::smatch match;
    if (line.empty() || line.rfind("# HELP ", 0) == 0) continue;
    if (std::regex_match(line, match, kType)) {
      families.insert(match[1]);
      continue;
    }
    if (!std::regex_match(line, match, kSample)) {
      error = "malformed line: " + line;
      return false;
    }
    std::string family = match[1];
    for (const char* suffix : {"_bucket", "_sum", "_count"}) {
      const std::string ending = suffix;
      if (!families.contains(family) && family.size() > ending.size() &&
          family.compare(family.size() - ending.size(), ending.size(), ending) == 0) {
        family.resize(family.size() - ending.size());
      }
    }
    if (!families.contains(family)) {
      error = "a sample of an undeclared family: " + line;
      return false;
    }
    char* end = nullptr;
    const std::string value = match[4];
    const double number = std::strtod(value.c_str(), &end);
    if (end == value.c_str() || *end != '\0') {
      error = "not a number: " + line;
      return false;
    }
    samples[line.substr(0, line.rfind(' '))] = number;
  }
  return true;
}

bool WaitFor(const std::function<bool()>& condition, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (condition()) return true;
    absl::SleepFor(absl::Milliseconds(50));
  }
  return condition();
}

std::string ReadFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

void WriteFile(const std::filesystem::path& path, const std::string& contents) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << contents;
}

bool ReplaceInFile(const std::filesystem::path& path, const std::string& from,
                   const std::string& to) {
  std::string text = ReadFile(path);
  const size_t at = text.find(from);
  if (at == std::string::npos) return false;
  text.replace(at, from.size(), to);
  WriteFile(path, text);
  return true;
}

}  // namespace fedmoe::testing
