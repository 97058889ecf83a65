#include "tests/integration/loopback_http.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace fedmoe::testing {
namespace {

// The chunked transfer coding undone.
std::string Dechunk(std::string_view chunked) {
  std::string body;
  size_t at = 0;
  while (at < chunked.size()) {
    const size_t line_end = chunked.find("\r\n", at);
    if (line_end == std::string_view::npos) break;
    const size_t size = std::stoul(std::string(chunked.substr(at, line_end - at)), nullptr, 16);
    if (size == 0) break;
    body.append(chunked.substr(line_end + 2, size));
    at = line_end + 2 + size + 2;
  }
  return body;
}

}  // namespace

Connection::Connection(int port) : fd_(::socket(AF_INET, SOCK_STREAM, 0)) {
  sockaddr_in peer{};
  peer.sin_family = AF_INET;
  peer.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  peer.sin_port = htons(static_cast<uint16_t>(port));
  connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&peer), sizeof(peer)) == 0;
}

bool Connection::Send(std::string_view bytes, bool then_end) {
  size_t sent = 0;
  while (sent < bytes.size()) {
    const ssize_t n = ::send(fd_, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) return false;
    sent += static_cast<size_t>(n);
  }
  if (then_end) ::shutdown(fd_, SHUT_WR);
  return true;
}

bool Connection::Read(std::string& into, absl::Duration timeout) {
  pollfd ready{.fd = fd_, .events = POLLIN, .revents = 0};
  if (::poll(&ready, 1, static_cast<int>(absl::ToInt64Milliseconds(timeout))) <= 0) return true;
  char buffer[8192];
  const ssize_t n = ::recv(fd_, buffer, sizeof(buffer), 0);
  if (n <= 0) return false;
  into.append(buffer, static_cast<size_t>(n));
  return true;
}

std::string Connection::ReadToEnd(absl::Duration timeout) {
  std::string all;
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline && Read(all, absl::Milliseconds(100))) {
  }
  return all;
}

void Connection::Close() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

std::string HttpRequest(std::string_view method, std::string_view path, std::string_view body,
                        std::string_view token) {
  std::string request =
      absl::StrCat(std::string(method), " ", std::string(path), " HTTP/1.1\r\nHost: 127.0.0.1\r\n");
  if (!token.empty()) {
    absl::StrAppend(&request, "Authorization: Bearer ", std::string(token), "\r\n");
  }
  if (method == "POST") {
    absl::StrAppend(&request, "Content-Type: application/json\r\nContent-Length: ", body.size(),
                    "\r\n");
  }
  absl::StrAppend(&request, "\r\n", std::string(body));
  return request;
}

HttpResponse ParseHttpResponse(const std::string& raw) {
  HttpResponse response;
  const size_t end = raw.find("\r\n\r\n");
  if (raw.rfind("HTTP/1.1 ", 0) != 0 || end == std::string::npos) return response;
  response.status = std::stoi(raw.substr(9, 3));
  response.headers = raw.substr(0, end);
  response.body = raw.substr(end + 4);
  if (response.headers.find("Transfer-Encoding: chunked") != std::string::npos) {
    response.body = Dechunk(response.body);
  }
  return response;
}

HttpResponse HttpCall(int port, const std::string& request, absl::Duration timeout) {
  Connection connection(port);
  if (!connection.connected() || !connection.Send(request)) return {};
  return ParseHttpResponse(connection.ReadToEnd(timeout));
}

std::vector<std::string> ServerSentEvents(const std::string& body) {
  std::vector<std::string> events;
  size_t at = 0;
  for (size_t end; (end = body.find("\n\n", at)) != std::string::npos; at = end + 2) {
    const std::string event = body.substr(at, end - at);
    if (event.rfind("data: ", 0) == 0) events.push_back(event.substr(6));
  }
  return events;
}

}  // namespace fedmoe::testing
