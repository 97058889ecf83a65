// Every request the coordinator's mTLS and enrollment ports take, from arbitrary bytes, handed
// to the same code the gRPC services call (coordinator/service/api.h) with the identity of a
// verified TLS peer, and no network. One coordinator lives for the whole run: a real state
// directory, store, CA and round engine (its thread running), an initial model, three enrolled
// clients and the operator's admin identity, so that requests meet rounds that open, progress and
// abort. Beyond crashes, leaks and undefined behaviour, the fuzzer checks the authorization
// promise of caller.h on every call: a peer without a certificate is refused as
// unauthenticated, a client cannot call admin methods, and an admin cannot act as a client.
//
// Input (input_layout.h): method, identity, then the request's wire bytes. For the
// UploadMaskedInput stream, the bytes are chunks, each a 2-byte little-endian length and that
// many bytes of a MaskedInputChunk.
#include <grpcpp/grpcpp.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "coordinator/config.h"
#include "coordinator/core.h"
#include "coordinator/service/api.h"
#include "coordinator/service/wire.h"
#include "model/checkpoint.h"
#include "model/init.h"
#include "pki/certificate.h"
#include "pki/certificate_authority.h"
#include "pki/private_key.h"
#include "tests/coordinator/fake_peer.h"
#include "tests/fuzz/fuzz_support.h"
#include "tests/fuzz/input_layout.h"
#include "tests/testing_tiny_model.h"

namespace {

using fedmoe::coordinator::CoordinatorApi;
using fedmoe::coordinator::CoordinatorCore;
namespace v1 = fedmoe::v1;

using fedmoe::testing::PeerCertificate;

enum class Identity { kAdmin, kClient, kNoCertificate };

struct Federation {
  std::unique_ptr<CoordinatorCore> core;
  std::unique_ptr<CoordinatorApi> api;
  PeerCertificate admin{""};
  std::array<PeerCertificate, fedmoe::fuzz::kRequestClients> clients{
      PeerCertificate(""), PeerCertificate(""), PeerCertificate("")};
  std::array<std::string, fedmoe::fuzz::kRequestClients> client_ids;
  PeerCertificate nobody{""};
  int enrolled = 0;
};

template <typename T>
T OrDie(absl::StatusOr<T> value) {
  if (!value.ok()) fedmoe::fuzz::Violated(value.status().ToString());
  return *std::move(value);
}

// Enrolls a new client through the API's own Enroll, as fedmoe-client enroll would.
void EnrollInto(Federation& federation, int slot) {
  const std::string client_id = absl::StrCat("site-", ++federation.enrolled);
  fedmoe::coordinator::ServiceContext context = federation.core->context();
  auto token = OrDie(context.authority->CreateToken(client_id, absl::Hours(1)));
  const fedmoe::pki::PrivateKey key = OrDie(fedmoe::pki::PrivateKey::GenerateP256());
  v1::EnrollRequest request;
  request.set_token(token.token.ToString());
  request.set_csr_der(OrDie(fedmoe::pki::MakeCsr(key, client_id)));
  request.set_client_version("fuzz");
  v1::EnrollResponse response;
  const grpc::Status status = federation.api->Enroll("127.0.0.1", request, response);
  if (!status.ok()) fedmoe::fuzz::Violated(absl::StrCat("enrollment: ", status.error_message()));
  const fedmoe::pki::Certificate certificate =
      OrDie(fedmoe::pki::Certificate::FromDer(response.certificate().certificate_der()));
  federation.clients[slot].set_pem(certificate.ToPem());
  federation.client_ids[slot] = client_id;
}

Federation& TheFederation() {
  static Federation* const federation = [] {
    fedmoe::fuzz::DiscardLogs();
    auto* made = new Federation();
    const std::filesystem::path root = fedmoe::fuzz::ScratchDirectory();
    const std::filesystem::path model_directory = root / "initial-model";
    if (absl::Status status = fedmoe::model::SaveModel(
            fedmoe::model::InitializeModel(fedmoe::testing::TinyMoeConfig(), 5), model_directory);
        !status.ok()) {
      fedmoe::fuzz::Violated(status.ToString());
    }
    fedmoe::coordinator::InitOptions init;
    init.federation = "fuzz";
    init.state_dir = root / "coordinator";
    fedmoe::coordinator::CoordinatorConfig config =
        OrDie(fedmoe::coordinator::InitStateDir(init)).config;
    // Rounds that open as soon as two clients poll, and whose stages end within the run.
    config.rounds.initial_model = model_directory;
    config.rounds.min_clients = 2;
    config.rounds.interval = absl::Milliseconds(50);
    config.rounds.timeouts = {absl::Seconds(2), absl::Seconds(1), absl::Seconds(1),
                              absl::Seconds(1)};
    config.poll_max_wait = absl::Milliseconds(1);
    // Every input is a failed enrollment: the per-peer limit would stop looking at them.
    config.enrollment_failures_per_minute = 1000000;
    made->core = OrDie(CoordinatorCore::Open(std::move(config)));
    made->api = std::make_unique<CoordinatorApi>(made->core->context());
    made->admin.set_pem(OrDie(fedmoe::pki::Certificate::ReadFile(
                                  made->core->config().state_dir.admin_certificate()))
                            .ToPem());
    for (int slot = 0; slot < fedmoe::fuzz::kRequestClients; ++slot) EnrollInto(*made, slot);
    made->core->rounds().Start();
    // The round engine stops before the scratch directory it writes to goes (atexit runs in
    // reverse: the directory's own handler was registered first).
    std::atexit([] { TheFederation().core->rounds().Stop(); });
    return made;
  }();
  return *federation;
}

// The authorization promise, whatever the request said.
void CheckAuthorization(std::string_view method, Identity identity, bool admin_method,
                        const grpc::Status& status) {
  if (identity == Identity::kNoCertificate) {
    FEDMOE_FUZZ_CHECK(status.error_code() == grpc::StatusCode::UNAUTHENTICATED,
                      absl::StrCat(std::string(method),
                                   " without a certificate was not refused as "
                                   "unauthenticated: ",
                                   status.error_message()));
  }
  const bool wrong_kind = (identity == Identity::kAdmin) != admin_method;
  if (identity != Identity::kNoCertificate && wrong_kind) {
    FEDMOE_FUZZ_CHECK(
        status.error_code() == grpc::StatusCode::PERMISSION_DENIED,
        absl::StrCat(std::string(method),
                     " by the wrong kind of identity was not refused: ", status.error_message()));
  }
}

template <typename Request>
bool Parse(std::span<const uint8_t> bytes, Request& request) {
  grpc::Slice slice(bytes.data(), bytes.size());
  const grpc::ByteBuffer buffer(&slice, 1);
  return fedmoe::coordinator::ParseRequest(buffer, request).ok();
}

// Parses the request and calls an admin (or, with admin_method false, federation) method.
// None when the bytes are not a Request: the gRPC shell refuses those before the API.
using Outcome = std::optional<grpc::Status>;

template <typename Request, typename Response, typename Method>
Outcome CallUnary(CoordinatorApi& api, Method method, const grpc::AuthContext& peer,
                  std::span<const uint8_t> bytes, Response& response) {
  Request request;
  if (!Parse(bytes, request)) return std::nullopt;
  return (api.*method)(peer, request, response);
}

Outcome Poll(CoordinatorApi& api, const grpc::AuthContext& peer, std::span<const uint8_t> bytes) {
  v1::PollTaskRequest request;
  if (!Parse(bytes, request)) return std::nullopt;
  struct Answer {
    absl::Notification done;
    grpc::Status status;
  };
  auto outcome = std::make_shared<Answer>();
  api.PollTask(
      peer, request,
      [outcome](absl::StatusOr<v1::PollTaskResponse> response) {
        outcome->status = fedmoe::coordinator::ToGrpc(response.status());
        outcome->done.Notify();
      },
      [] { return false; });
  if (!outcome->done.WaitForNotificationWithTimeout(absl::Seconds(10))) {
    fedmoe::fuzz::Violated("a poll with a 1 ms wait was not answered within 10 s");
  }
  return outcome->status;
}

Outcome Upload(CoordinatorApi& api, const grpc::AuthContext& peer, std::span<const uint8_t> bytes) {
  size_t at = 0;
  auto read = [&](v1::MaskedInputChunk& chunk) {
    if (bytes.size() - at < 2) return false;
    const size_t length = bytes[at] | (size_t{bytes[at + 1]} << 8);
    at += 2;
    const std::span<const uint8_t> piece = bytes.subspan(at, std::min(length, bytes.size() - at));
    at += piece.size();
    chunk.Clear();
    return Parse(piece, chunk);
  };
  v1::StageAck ack;
  return api.UploadMaskedInput(peer, read, ack);
}

Outcome Download(CoordinatorApi& api, const grpc::AuthContext& peer,
                 std::span<const uint8_t> bytes) {
  v1::DownloadModelRequest request;
  if (!Parse(bytes, request)) return std::nullopt;
  uint64_t received = 0;
  return api.DownloadModel(
      peer, request,
      [&](const v1::ModelChunk& chunk) {
        FEDMOE_FUZZ_CHECK(chunk.offset() == request.offset() + received,
                          "DownloadModel sent a chunk out of order");
        received += chunk.data().size();
        return true;
      },
      [] { return false; });
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Federation& federation = TheFederation();
  if (size < 2) return 0;
  using fedmoe::fuzz::RequestMethod;
  const auto method = static_cast<RequestMethod>(data[0] % fedmoe::fuzz::kRequestMethods);
  const int identity_byte = data[1] % fedmoe::fuzz::kRequestIdentities;
  const std::span<const uint8_t> bytes(data + 2, size - 2);
  Identity identity = Identity::kClient;
  const grpc::AuthContext* peer = nullptr;
  int slot = -1;
  if (identity_byte == fedmoe::fuzz::kAdminIdentity) {
    identity = Identity::kAdmin;
    peer = &federation.admin;
  } else if (identity_byte == fedmoe::fuzz::kNoCertificateIdentity) {
    identity = Identity::kNoCertificate;
    peer = &federation.nobody;
  } else {
    slot = identity_byte - 1;
    peer = &federation.clients[slot];
  }
  CoordinatorApi& api = *federation.api;

  Outcome status;
  bool admin_method = true;
  std::string_view name;
  switch (method) {
    case RequestMethod::kEnroll: {
      name = "Enroll";
      v1::EnrollRequest request;
      v1::EnrollResponse response;
      // No identity to check: the token is the credential, and nobody gave the fuzzer one.
      if (Parse(bytes, request)) {
        FEDMOE_FUZZ_CHECK(!api.Enroll("192.0.2.1", request, response).ok(),
                          "Enroll succeeded with a token nobody issued");
      }
      return 0;
    }
    case RequestMethod::kRenew: {
      name = "Renew";
      admin_method = false;
      v1::RenewCertificateResponse response;
      status = CallUnary<v1::RenewCertificateRequest>(api, &CoordinatorApi::Renew, *peer, bytes,
                                                      response);
      if (status.has_value() && status->ok() && slot >= 0) {
        // The renewed certificate is the client's from now on.
        federation.clients[slot].set_pem(
            OrDie(fedmoe::pki::Certificate::FromDer(response.certificate().certificate_der()))
                .ToPem());
      }
      break;
    }
#define FEDMOE_ADMIN_CASE(Method)                                                                  \
  case RequestMethod::k##Method: {                                                                 \
    name = #Method;                                                                                \
    v1::Method##Response response;                                                                 \
    status = CallUnary<v1::Method##Request>(api, &CoordinatorApi::Method, *peer, bytes, response); \
    break;                                                                                         \
  }
      FEDMOE_ADMIN_CASE(CreateEnrollmentToken)
      FEDMOE_ADMIN_CASE(ListEnrollmentTokens)
      FEDMOE_ADMIN_CASE(RevokeEnrollmentToken)
      FEDMOE_ADMIN_CASE(ListClients)
      FEDMOE_ADMIN_CASE(GetStatus)
      FEDMOE_ADMIN_CASE(ListRounds)
      FEDMOE_ADMIN_CASE(GetPrivacyLedger)
      FEDMOE_ADMIN_CASE(AddAdmin)
      FEDMOE_ADMIN_CASE(ListAdmins)
      FEDMOE_ADMIN_CASE(RevokeAdmin)
#undef FEDMOE_ADMIN_CASE
    case RequestMethod::kRevokeClient: {
      name = "RevokeClient";
      v1::RevokeClientResponse response;
      status = CallUnary<v1::RevokeClientRequest>(api, &CoordinatorApi::RevokeClient, *peer, bytes,
                                                  response);
      // A revoked site is replaced by a new one, so that the run keeps three live clients.
      for (int revoked = 0;
           status.has_value() && status->ok() && revoked < fedmoe::fuzz::kRequestClients;
           ++revoked) {
        if (federation.client_ids[revoked] == response.client().client_id()) {
          EnrollInto(federation, revoked);
        }
      }
      break;
    }
    default: {
      admin_method = false;
      switch (method) {
        case RequestMethod::kPollTask:
          name = "PollTask";
          status = Poll(api, *peer, bytes);
          break;
        case RequestMethod::kAdvertiseKeys: {
          name = "AdvertiseKeys";
          v1::StageAck ack;
          status = CallUnary<v1::AdvertiseKeysRequest>(api, &CoordinatorApi::AdvertiseKeys, *peer,
                                                       bytes, ack);
          break;
        }
        case RequestMethod::kShareKeys: {
          name = "ShareKeys";
          v1::StageAck ack;
          status =
              CallUnary<v1::ShareKeysRequest>(api, &CoordinatorApi::ShareKeys, *peer, bytes, ack);
          break;
        }
        case RequestMethod::kUnmask: {
          name = "Unmask";
          v1::StageAck ack;
          status = CallUnary<v1::UnmaskRequest>(api, &CoordinatorApi::Unmask, *peer, bytes, ack);
          break;
        }
        case RequestMethod::kGetModelManifest: {
          name = "GetModelManifest";
          v1::ModelManifest manifest;
          status = CallUnary<v1::GetModelManifestRequest>(api, &CoordinatorApi::GetModelManifest,
                                                          *peer, bytes, manifest);
          break;
        }
        case RequestMethod::kDownloadModel:
          name = "DownloadModel";
          status = Download(api, *peer, bytes);
          break;
        case RequestMethod::kUploadMaskedInput:
          name = "UploadMaskedInput";
          status = Upload(api, *peer, bytes);
          break;
        default: {  // RequestMethod::kGetRoundStatus
          name = "GetRoundStatus";
          v1::RoundStatus round;
          status = CallUnary<v1::GetRoundStatusRequest>(api, &CoordinatorApi::GetRoundStatus, *peer,
                                                        bytes, round);
          break;
        }
      }
    }
  }
  if (!status.has_value()) return 0;
  // FEDMOE_FUZZ_VERBOSE=1 shows what each input did, for a crash input being replayed.
  static const bool verbose = std::getenv("FEDMOE_FUZZ_VERBOSE") != nullptr;
  if (verbose) {
    std::fprintf(stderr, "%.*s as identity %d: %d %s\n", static_cast<int>(name.size()), name.data(),
                 identity_byte, static_cast<int>(status->error_code()),
                 status->error_message().c_str());
  }
  CheckAuthorization(name, identity, admin_method, *status);
  return 0;
}
