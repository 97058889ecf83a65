// A few lines of HTTP/1.1 over a loopback socket, for the tests and the bench that drive
// `fedmoe-client serve`: independent of the server's HTTP library, so that what they check is
// what a client on the wire sees. A request goes out whole, and the answer is read until the
// server closes (it never keeps connections alive); a chunked body is joined.
#ifndef FEDMOE_TESTS_INTEGRATION_LOOPBACK_HTTP_H_
#define FEDMOE_TESTS_INTEGRATION_LOOPBACK_HTTP_H_

#include <string>
#include <string_view>
#include <vector>

#include "absl/time/time.h"

namespace fedmoe::testing {

struct HttpResponse {
  // 0 when no HTTP answer came.
  int status = 0;
  std::string headers;
  std::string body;
};

// One loopback TCP connection.
class Connection {
 public:
  explicit Connection(int port);
  ~Connection() { Close(); }
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  bool connected() const { return connected_; }
  // Sends `bytes`; with `then_end`, also ends the request stream, so that the server sees the
  // request end, whole or not, instead of waiting for more.
  bool Send(std::string_view bytes, bool then_end = true);
  // Appends what arrives within `timeout`; false once the server has closed.
  bool Read(std::string& into, absl::Duration timeout);
  std::string ReadToEnd(absl::Duration timeout);
  void Close();

 private:
  int fd_;
  bool connected_ = false;
};

// A request with a Content-Length (POST) and, unless empty, an Authorization: Bearer header.
std::string HttpRequest(std::string_view method, std::string_view path, std::string_view body,
                        std::string_view token);
// A raw answer parsed; status 0 when it is not HTTP.
HttpResponse ParseHttpResponse(const std::string& raw);
// Sends `request` and reads the whole answer.
HttpResponse HttpCall(int port, const std::string& request,
                      absl::Duration timeout = absl::Seconds(60));
// The data of each server-sent event in `body`.
std::vector<std::string> ServerSentEvents(const std::string& body);

}  // namespace fedmoe::testing

#endif  // FEDMOE_TESTS_INTEGRATION_LOOPBACK_HTTP_H_
