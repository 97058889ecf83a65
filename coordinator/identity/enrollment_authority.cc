#include "coordinator/identity/enrollment_authority.h"

#include <optional>

#include "absl/strings/str_cat.h"
#include "logging/log.h"

namespace fedmoe::coordinator {

absl::StatusOr<EnrollmentAuthority::CreatedToken> EnrollmentAuthority::CreateToken(
    const std::string& client_id, absl::Duration ttl, absl::Time now) {
  if (absl::Status status = pki::ValidateName("client id", client_id); !status.ok()) {
    return status;
  }
  if (ttl <= absl::ZeroDuration() || ttl > kMaxTokenTtl) {
    return absl::InvalidArgumentError(
        absl::StrCat("token ttl must be in (0, 720h], not ", absl::FormatDuration(ttl)));
  }
  if (absl::StatusOr<ClientRecord> existing = store_->GetClient(client_id); existing.ok()) {
    return absl::FailedPreconditionError(
        existing->revoked()
            ? absl::StrCat("client id '", client_id, "' was revoked; enroll under a new id")
            : absl::StrCat("client id '", client_id, "' is already enrolled"));
  }
  absl::StatusOr<EnrollmentToken> token = GenerateEnrollmentToken();
  if (!token.ok()) return token.status();
  TokenRecord record{token->token_id, client_id, now, now + ttl, std::nullopt, std::nullopt};
  if (absl::Status status = store_->AddToken(record, HashTokenSecret(token->secret));
      !status.ok()) {
    return status;
  }
  LogEvent(LogLevel::kInfo, "token_created")
      .Field("client_id", client_id)
      .Field("token_id", token->token_id)
      .Field("expires_at", absl::FormatTime(record.expires_at));
  return CreatedToken{*token, record};
}

IssuedCertificate EnrollmentAuthority::Record(const pki::Certificate& certificate) const {
  absl::StatusOr<pki::SpiffeId> id = certificate.Identity();
  return IssuedCertificate{certificate.SerialHex(),
                           id.ok() ? id->ToUri() : std::string(),
                           certificate.NotAfter(),
                           ca_.certificate().Sha256Fingerprint(),
                           trust_.Fingerprints(),
                           certificate.PublicKeyDer(),
                           std::nullopt};
}

absl::StatusOr<EnrollmentAuthority::Enrolled> EnrollmentAuthority::Enroll(
    const std::string& token, const std::string& csr_der, const std::string& client_version,
    absl::Time now) {
  absl::StatusOr<EnrollmentToken> parsed = ParseEnrollmentToken(token);
  if (!parsed.ok()) return absl::UnauthenticatedError(parsed.status().message());
  std::optional<pki::Certificate> issued;
  absl::StatusOr<ClientRecord> client = store_->Enroll(
      parsed->token_id, HashTokenSecret(parsed->secret), PrintableLine(client_version, 64), now,
      [&](const std::string& client_id) -> absl::StatusOr<IssuedCertificate> {
        const pki::SpiffeId id{ca_.federation(), pki::IdentityKind::kClient, client_id};
        absl::StatusOr<pki::Certificate> certificate =
            ca_.IssueFromCsr(csr_der, id, client_certificate_validity_, now);
        if (!certificate.ok()) return certificate.status();
        issued = *certificate;
        return Record(*certificate);
      });
  // The caller logs refusals, by peer and at most once per interval (a guessing peer would
  // otherwise write a line per guess).
  if (!client.ok()) return client.status();
  LogEvent(LogLevel::kInfo, "client_enrolled")
      .Field("client_id", client->client_id)
      .Field("serial", client->certificate_serial)
      .Field("not_after", absl::FormatTime(client->certificate_not_after));
  return Enrolled{*client, *issued};
}

absl::StatusOr<pki::Certificate> EnrollmentAuthority::Renew(
    const std::string& client_id, const std::string& csr_der,
    const std::string& current_public_key_der, const std::string& key_change_signature,
    absl::Time now) {
  absl::StatusOr<ClientRecord> client = store_->GetClient(client_id);
  if (!client.ok()) return client.status();
  if (client->revoked()) {
    return absl::PermissionDeniedError(absl::StrCat("client '", client_id, "' is revoked"));
  }
  // Peers pin the old key; without the old key's word for the new one they would refuse it.
  if (key_change_signature.empty()) {
    return absl::InvalidArgumentError(
        "the renewal carries no key_change_signature (the old key's signature over the new "
        "key), which the client's SecAgg+ peers need; upgrade fedmoe-client");
  }
  const pki::SpiffeId id{ca_.federation(), pki::IdentityKind::kClient, client_id};
  absl::StatusOr<pki::Certificate> certificate =
      ca_.IssueFromCsr(csr_der, id, client_certificate_validity_, now);
  if (!certificate.ok()) return certificate.status();
  IssuedCertificate record = Record(*certificate);
  record.key_change =
      pki::KeyChange{current_public_key_der, record.public_key_der, key_change_signature};
  if (absl::Status status = pki::VerifyKeyChange(id, *record.key_change); !status.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "key_change_signature is not the current key's over the new key: ", status.message()));
  }
  if (absl::Status status = store_->RecordRenewal(client_id, record, now); !status.ok()) {
    return status;
  }
  LogEvent(LogLevel::kInfo, "certificate_renewed")
      .Field("client_id", client_id)
      .Field("serial", certificate->SerialHex())
      .Field("not_after", absl::FormatTime(certificate->NotAfter()));
  return certificate;
}

absl::StatusOr<pki::Certificate> EnrollmentAuthority::AddAdmin(const std::string& name,
                                                               const std::string& csr_der,
                                                               const std::string& added_by,
                                                               absl::Duration validity,
                                                               absl::Time now) {
  if (absl::Status status = pki::ValidateName("admin name", name); !status.ok()) return status;
  std::optional<pki::Certificate> issued;
  absl::Status added = store_->AddAdmin(name, added_by, now, [&]() -> absl::StatusOr<std::string> {
    const pki::SpiffeId id{ca_.federation(), pki::IdentityKind::kAdmin, name};
    absl::StatusOr<pki::Certificate> certificate = ca_.IssueFromCsr(csr_der, id, validity, now);
    if (!certificate.ok()) return certificate.status();
    issued = *certificate;
    return certificate->SerialHex();
  });
  if (!added.ok()) return added;
  LogEvent(LogLevel::kInfo, "admin_added")
      .Field("name", name)
      .Field("by", added_by)
      .Field("serial", issued->SerialHex())
      .Field("not_after", absl::FormatTime(issued->NotAfter()));
  return *std::move(issued);
}

}  // namespace fedmoe::coordinator
