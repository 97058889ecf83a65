#include "coordinator/identity/caller.h"

#include <openssl/rand.h>

#include <algorithm>
#include <iterator>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "logging/log.h"

namespace fedmoe::coordinator {

grpc::Status ToGrpc(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  switch (status.code()) {
    case absl::StatusCode::kInternal:
    case absl::StatusCode::kUnknown:
    case absl::StatusCode::kDataLoss: {
      unsigned char bytes[6] = {};
      // Not a secret: an id to find one log line by, unpredictable only so that ids from
      // different coordinators and restarts do not collide.
      if (RAND_bytes(bytes, sizeof(bytes)) != 1) std::fill(std::begin(bytes), std::end(bytes), 0);
      const std::string id =
          absl::BytesToHexString(std::string(reinterpret_cast<const char*>(bytes), sizeof(bytes)));
      LogEvent(LogLevel::kError, "internal_error")
          .Field("incident", id)
          .Field("code", absl::StatusCodeToString(status.code()))
          .Field("error", std::string(status.message()));
      return {grpc::StatusCode::INTERNAL,
              absl::StrCat("the coordinator failed (incident ", id,
                           "); its operator finds the details under that id in its log")};
    }
    default:
      return {static_cast<grpc::StatusCode>(status.code()), std::string(status.message())};
  }
}

absl::StatusOr<Caller> CallerAuthorizer::Identify(const grpc::AuthContext& auth) const {
  const std::vector<grpc::string_ref> pems =
      auth.FindPropertyValues(GRPC_X509_PEM_CERT_PROPERTY_NAME);
  if (pems.empty()) {
    return absl::UnauthenticatedError("no client certificate: this port requires mutual TLS");
  }
  absl::StatusOr<pki::Certificate> certificate =
      pki::Certificate::FromPem(std::string(pems.front().data(), pems.front().size()));
  if (!certificate.ok()) return absl::UnauthenticatedError(certificate.status().message());
  absl::StatusOr<pki::SpiffeId> id = trust_.Verify(*certificate, pki::Purpose::kClient);
  if (!id.ok()) return id.status();
  return Caller{*id, certificate->SerialHex(), certificate->ToDer()};
}

absl::StatusOr<Caller> CallerAuthorizer::AuthorizeClient(const grpc::AuthContext& auth) const {
  absl::StatusOr<Caller> caller = Identify(auth);
  if (!caller.ok()) return caller.status();
  if (caller->id.kind != pki::IdentityKind::kClient) {
    return absl::PermissionDeniedError(
        absl::StrCat(caller->id.ToUri(), " is not a client identity"));
  }
  if (absl::Status status = store_->AuthorizeClient(caller->id.name, caller->serial);
      !status.ok()) {
    return status;
  }
  return caller;
}

absl::StatusOr<Caller> CallerAuthorizer::AuthorizeAdmin(const grpc::AuthContext& auth) const {
  absl::StatusOr<Caller> caller = Identify(auth);
  if (!caller.ok()) return caller.status();
  if (caller->id.kind != pki::IdentityKind::kAdmin) {
    return absl::PermissionDeniedError(
        absl::StrCat(caller->id.ToUri(),
                     " may not call admin methods: an admin certificate "
                     "(spiffe://<federation>/admin/<name>) is required"));
  }
  if (absl::Status status = store_->AuthorizeAdmin(caller->id.name, caller->serial, absl::Now());
      !status.ok()) {
    return status;
  }
  return caller;
}

}  // namespace fedmoe::coordinator
