#include "simulation/secagg_server_endpoint.h"

#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <string_view>

#include "absl/strings/str_cat.h"

namespace fedmoe::bench {
namespace {

using secure_agg::AdvertisedKeys;
using secure_agg::RevealedShares;
using secure_agg::SealedShares;
using secure_agg::SecAggServer;
using secure_agg::UnmaskRequest;

double OwnPeakRssMib() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;
}

class InProcess : public ServerEndpoint {
 public:
  explicit InProcess(SecAggServer server) : server_(std::move(server)) {}
  absl::Status ReceiveAdvertisedKeys(const AdvertisedKeys& keys) override {
    return server_.ReceiveAdvertisedKeys(keys);
  }
  absl::Status CloseAdvertiseKeys() override { return server_.CloseAdvertiseKeys(); }
  absl::StatusOr<std::vector<AdvertisedKeys>> KeysFor(uint32_t id) override {
    return server_.KeysFor(id);
  }
  absl::Status ReceiveShares(uint32_t sender, const std::vector<SealedShares>& shares) override {
    return server_.ReceiveShares(sender, shares);
  }
  absl::Status CloseShareKeys() override { return server_.CloseShareKeys(); }
  absl::StatusOr<std::vector<SealedShares>> SharesFor(uint32_t id) override {
    return server_.SharesFor(id);
  }
  absl::Status ReceiveMaskedChunk(uint32_t id, uint64_t first_value,
                                  std::span<const uint64_t> values) override {
    return server_.ReceiveMaskedChunk(id, first_value, values);
  }
  absl::Status CloseMaskedInput() override { return server_.CloseMaskedInput(); }
  absl::StatusOr<std::set<uint32_t>> Survivors() override { return server_.survivors(); }
  absl::StatusOr<UnmaskRequest> UnmaskRequestFor(uint32_t id) override {
    return server_.UnmaskRequestFor(id);
  }
  absl::Status ReceiveRevealedShares(const RevealedShares& shares) override {
    return server_.ReceiveRevealedShares(shares);
  }
  absl::StatusOr<uint64_t> StateBytes() override { return server_.StateBytes(); }
  absl::StatusOr<std::vector<uint64_t>> Finish() override { return server_.Finish(); }
  absl::StatusOr<double> PeakRssMib() override { return OwnPeakRssMib(); }

 private:
  SecAggServer server_;
};

// Frames on the socket pair: a 4-byte length, then the payload. A call's payload starts with
// its Op; a reply's with the status code and message, then the result.
enum class Op : uint8_t {
  kReceiveAdvertisedKeys,
  kCloseAdvertiseKeys,
  kKeysFor,
  kReceiveShares,
  kCloseShareKeys,
  kSharesFor,
  kReceiveMaskedChunk,
  kCloseMaskedInput,
  kSurvivors,
  kUnmaskRequestFor,
  kReceiveRevealedShares,
  kStateBytes,
  kFinish,
  kPeakRss,
};

class Writer {
 public:
  void U32(uint32_t value) { Raw(&value, sizeof value); }
  void U64(uint64_t value) { Raw(&value, sizeof value); }
  void Bytes(std::string_view text) {
    U64(text.size());
    out_.append(text);
  }
  void Values(std::span<const uint64_t> values) {
    U64(values.size());
    Raw(values.data(), values.size_bytes());
  }
  void Ids(const auto& ids) {
    U64(ids.size());
    for (uint32_t id : ids) U32(id);
  }
  void ShareMap(const std::map<uint32_t, std::string>& shares) {
    U64(shares.size());
    for (const auto& [owner, share] : shares) {
      U32(owner);
      Bytes(share);
    }
  }
  std::string& out() { return out_; }
  const std::string& out() const { return out_; }

 private:
  void Raw(const void* data, size_t size) { out_.append(static_cast<const char*>(data), size); }
  std::string out_;
};

// Reads what Writer wrote; a short frame reads as zeros and sets failed().
class Reader {
 public:
  explicit Reader(std::string_view in) : in_(in) {}
  uint32_t U32() { return Raw<uint32_t>(); }
  uint64_t U64() { return Raw<uint64_t>(); }
  std::string Bytes() {
    const uint64_t size = U64();
    if (size > in_.size()) return Fail<std::string>();
    std::string text(in_.substr(0, size));
    in_.remove_prefix(size);
    return text;
  }
  std::vector<uint64_t> Values() {
    const uint64_t size = U64();
    if (size > in_.size() / sizeof(uint64_t)) return Fail<std::vector<uint64_t>>();
    std::vector<uint64_t> values(size);
    std::memcpy(values.data(), in_.data(), size * sizeof(uint64_t));
    in_.remove_prefix(size * sizeof(uint64_t));
    return values;
  }
  std::vector<uint32_t> Ids() {
    std::vector<uint32_t> ids(Count(sizeof(uint32_t)));
    for (uint32_t& id : ids) id = U32();
    return ids;
  }
  std::map<uint32_t, std::string> ShareMap() {
    std::map<uint32_t, std::string> shares;
    for (uint64_t i = Count(12); i > 0; --i) {
      const uint32_t owner = U32();
      shares[owner] = Bytes();
    }
    return shares;
  }
  // An element count, bounded by what is left at `min_bytes` an element.
  uint64_t Count(size_t min_bytes) {
    const uint64_t count = U64();
    return count > in_.size() / min_bytes ? Fail<uint64_t>() : count;
  }
  bool failed() const { return failed_; }

 private:
  template <typename T>
  T Raw() {
    T value{};
    if (in_.size() < sizeof value) return Fail<T>();
    std::memcpy(&value, in_.data(), sizeof value);
    in_.remove_prefix(sizeof value);
    return value;
  }
  template <typename T>
  T Fail() {
    failed_ = true;
    in_ = {};
    return T{};
  }
  std::string_view in_;
  bool failed_ = false;
};

void WriteKeys(Writer& out, const AdvertisedKeys& keys) {
  out.U32(keys.participant);
  out.Bytes(keys.cipher_public_key);
  out.Bytes(keys.mask_public_key);
  out.Bytes(keys.signature);
}
AdvertisedKeys ReadKeys(Reader& in) {
  AdvertisedKeys keys;
  keys.participant = in.U32();
  keys.cipher_public_key = in.Bytes();
  keys.mask_public_key = in.Bytes();
  keys.signature = in.Bytes();
  return keys;
}
void WriteShares(Writer& out, const std::vector<SealedShares>& shares) {
  out.U64(shares.size());
  for (const SealedShares& bundle : shares) {
    out.U32(bundle.sender);
    out.U32(bundle.recipient);
    out.Bytes(bundle.ciphertext);
  }
}
std::vector<SealedShares> ReadShares(Reader& in) {
  std::vector<SealedShares> shares(in.Count(16));
  for (SealedShares& bundle : shares) {
    bundle.sender = in.U32();
    bundle.recipient = in.U32();
    bundle.ciphertext = in.Bytes();
  }
  return shares;
}

bool WriteFrame(int fd, const std::string& payload) {
  const auto size = static_cast<uint32_t>(payload.size());
  std::string frame(reinterpret_cast<const char*>(&size), sizeof size);
  frame += payload;
  for (size_t sent = 0; sent < frame.size();) {
    const ssize_t n = write(fd, frame.data() + sent, frame.size() - sent);
    if (n <= 0) return false;
    sent += static_cast<size_t>(n);
  }
  return true;
}

bool ReadExactly(int fd, char* data, size_t size) {
  for (size_t got = 0; got < size;) {
    const ssize_t n = read(fd, data + got, size - got);
    if (n <= 0) return false;
    got += static_cast<size_t>(n);
  }
  return true;
}

bool ReadFrame(int fd, std::string& payload) {
  uint32_t size = 0;
  if (!ReadExactly(fd, reinterpret_cast<char*>(&size), sizeof size)) return false;
  payload.resize(size);
  return ReadExactly(fd, payload.data(), size);
}

void WriteStatus(Writer& out, const absl::Status& status) {
  out.U32(static_cast<uint32_t>(status.code()));
  out.Bytes(std::string(status.message()));
}

// The child: one call at a time until the parent closes its end.
[[noreturn]] void Serve(int fd, SecAggServer server) {
  InProcess local(std::move(server));
  std::string call;
  while (ReadFrame(fd, call)) {
    Reader in(call);
    const auto op = static_cast<Op>(in.U32());
    Writer out;
    absl::Status status;
    Writer result;
    switch (op) {
      case Op::kReceiveAdvertisedKeys:
        status = local.ReceiveAdvertisedKeys(ReadKeys(in));
        break;
      case Op::kCloseAdvertiseKeys:
        status = local.CloseAdvertiseKeys();
        break;
      case Op::kKeysFor: {
        const std::vector<AdvertisedKeys> keys = *local.KeysFor(in.U32());
        result.U64(keys.size());
        for (const AdvertisedKeys& one : keys) WriteKeys(result, one);
        break;
      }
      case Op::kReceiveShares: {
        const uint32_t sender = in.U32();
        status = local.ReceiveShares(sender, ReadShares(in));
        break;
      }
      case Op::kCloseShareKeys:
        status = local.CloseShareKeys();
        break;
      case Op::kSharesFor:
        WriteShares(result, *local.SharesFor(in.U32()));
        break;
      case Op::kReceiveMaskedChunk: {
        const uint32_t id = in.U32();
        const uint64_t first = in.U64();
        status = local.ReceiveMaskedChunk(id, first, in.Values());
        break;
      }
      case Op::kCloseMaskedInput:
        status = local.CloseMaskedInput();
        break;
      case Op::kSurvivors:
        result.Ids(*local.Survivors());
        break;
      case Op::kUnmaskRequestFor: {
        const UnmaskRequest request = *local.UnmaskRequestFor(in.U32());
        result.Ids(request.alive);
        result.Ids(request.dropped);
        break;
      }
      case Op::kReceiveRevealedShares: {
        RevealedShares revealed;
        revealed.participant = in.U32();
        revealed.self_mask_shares = in.ShareMap();
        revealed.mask_key_shares = in.ShareMap();
        status = local.ReceiveRevealedShares(revealed);
        break;
      }
      case Op::kStateBytes:
        result.U64(*local.StateBytes());
        break;
      case Op::kFinish: {
        absl::StatusOr<std::vector<uint64_t>> sum = local.Finish();
        status = sum.status();
        if (sum.ok()) result.Values(*sum);
        break;
      }
      case Op::kPeakRss:
        result.U64(static_cast<uint64_t>(OwnPeakRssMib() * 1024));
        break;
    }
    if (in.failed()) status = absl::InvalidArgumentError("a malformed call reached the server");
    WriteStatus(out, status);
    out.out() += result.out();
    if (!WriteFrame(fd, out.out())) break;
  }
  _exit(0);
}

class ChildProcess : public ServerEndpoint {
 public:
  ChildProcess(pid_t pid, int fd) : pid_(pid), fd_(fd) {}
  ~ChildProcess() override {
    close(fd_);
    waitpid(pid_, nullptr, 0);
  }
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  absl::Status ReceiveAdvertisedKeys(const AdvertisedKeys& keys) override {
    Writer call = Begin(Op::kReceiveAdvertisedKeys);
    WriteKeys(call, keys);
    return Call(call).status();
  }
  absl::Status CloseAdvertiseKeys() override {
    return Call(Begin(Op::kCloseAdvertiseKeys)).status();
  }
  absl::StatusOr<std::vector<AdvertisedKeys>> KeysFor(uint32_t id) override {
    Writer call = Begin(Op::kKeysFor);
    call.U32(id);
    return Decode(call, [](Reader& in) {
      std::vector<AdvertisedKeys> keys(in.Count(28));
      for (AdvertisedKeys& one : keys) one = ReadKeys(in);
      return keys;
    });
  }
  absl::Status ReceiveShares(uint32_t sender, const std::vector<SealedShares>& shares) override {
    Writer call = Begin(Op::kReceiveShares);
    call.U32(sender);
    WriteShares(call, shares);
    return Call(call).status();
  }
  absl::Status CloseShareKeys() override { return Call(Begin(Op::kCloseShareKeys)).status(); }
  absl::StatusOr<std::vector<SealedShares>> SharesFor(uint32_t id) override {
    Writer call = Begin(Op::kSharesFor);
    call.U32(id);
    return Decode(call, [](Reader& in) { return ReadShares(in); });
  }
  absl::Status ReceiveMaskedChunk(uint32_t id, uint64_t first_value,
                                  std::span<const uint64_t> values) override {
    Writer call = Begin(Op::kReceiveMaskedChunk);
    call.U32(id);
    call.U64(first_value);
    call.Values(values);
    return Call(call).status();
  }
  absl::Status CloseMaskedInput() override { return Call(Begin(Op::kCloseMaskedInput)).status(); }
  absl::StatusOr<std::set<uint32_t>> Survivors() override {
    return Decode(Begin(Op::kSurvivors), [](Reader& in) {
      const std::vector<uint32_t> ids = in.Ids();
      return std::set<uint32_t>(ids.begin(), ids.end());
    });
  }
  absl::StatusOr<UnmaskRequest> UnmaskRequestFor(uint32_t id) override {
    Writer call = Begin(Op::kUnmaskRequestFor);
    call.U32(id);
    return Decode(call, [](Reader& in) {
      UnmaskRequest request;
      request.alive = in.Ids();
      request.dropped = in.Ids();
      return request;
    });
  }
  absl::Status ReceiveRevealedShares(const RevealedShares& shares) override {
    Writer call = Begin(Op::kReceiveRevealedShares);
    call.U32(shares.participant);
    call.ShareMap(shares.self_mask_shares);
    call.ShareMap(shares.mask_key_shares);
    return Call(call).status();
  }
  absl::StatusOr<uint64_t> StateBytes() override {
    return Decode(Begin(Op::kStateBytes), [](Reader& in) { return in.U64(); });
  }
  absl::StatusOr<std::vector<uint64_t>> Finish() override {
    return Decode(Begin(Op::kFinish), [](Reader& in) { return in.Values(); });
  }
  absl::StatusOr<double> PeakRssMib() override {
    return Decode(Begin(Op::kPeakRss),
                  [](Reader& in) { return static_cast<double>(in.U64()) / 1024.0; });
  }

 private:
  static Writer Begin(Op op) {
    Writer call;
    call.U32(static_cast<uint32_t>(op));
    return call;
  }
  // The reply's payload after its status, or the status.
  absl::StatusOr<std::string> Call(const Writer& call) {
    std::string reply;
    if (!WriteFrame(fd_, call.out()) || !ReadFrame(fd_, reply)) {
      return absl::UnavailableError("the server process is gone");
    }
    Reader in(reply);
    const auto code = static_cast<absl::StatusCode>(in.U32());
    std::string message = in.Bytes();
    if (in.failed()) return absl::DataLossError("a malformed reply from the server process");
    if (code != absl::StatusCode::kOk) return absl::Status(code, message);
    const size_t header = sizeof(uint32_t) + sizeof(uint64_t) + message.size();
    return reply.substr(header);
  }
  template <typename Parse>
  auto Decode(const Writer& call, Parse parse)
      -> absl::StatusOr<decltype(parse(std::declval<Reader&>()))> {
    absl::StatusOr<std::string> payload = Call(call);
    if (!payload.ok()) return payload.status();
    Reader in(*payload);
    auto value = parse(in);
    if (in.failed()) return absl::DataLossError("a malformed reply from the server process");
    return value;
  }

  pid_t pid_;
  int fd_;
};

}  // namespace

std::unique_ptr<ServerEndpoint> InProcessServer(SecAggServer server) {
  return std::make_unique<InProcess>(std::move(server));
}

absl::StatusOr<std::unique_ptr<ServerEndpoint>> ServerInChildProcess(
    const secure_agg::RoundSetup& setup, const secure_agg::NeighborGraph& graph) {
  int fds[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0) {
    return absl::InternalError(absl::StrCat("socketpair: ", std::strerror(errno)));
  }
  const pid_t pid = fork();
  if (pid < 0) return absl::InternalError(absl::StrCat("fork: ", std::strerror(errno)));
  if (pid == 0) {
    close(fds[0]);
    absl::StatusOr<SecAggServer> server = SecAggServer::Create(setup, graph);
    if (!server.ok()) _exit(1);
    Serve(fds[1], *std::move(server));
  }
  close(fds[1]);
  return std::make_unique<ChildProcess>(pid, fds[0]);
}

}  // namespace fedmoe::bench
