// Enrollment, renewal and tokens: the coordinator's CA and store, without any transport.
// The gRPC services are thin wrappers over this object, which is tested directly.
#ifndef FEDMOE_COORDINATOR_IDENTITY_ENROLLMENT_AUTHORITY_H_
#define FEDMOE_COORDINATOR_IDENTITY_ENROLLMENT_AUTHORITY_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "coordinator/identity/enrollment_token.h"
#include "coordinator/state/store.h"
#include "pki/certificate_authority.h"
#include "pki/trust_bundle.h"

namespace fedmoe::coordinator {

// The longest an enrollment token may live.
inline constexpr absl::Duration kMaxTokenTtl = absl::Hours(24 * 30);

class EnrollmentAuthority {
 public:
  // `ca` issues; `trust` is the bundle sent with every certificate (ca first).
  EnrollmentAuthority(pki::CertificateAuthority ca, pki::TrustBundle trust, Store* store,
                      absl::Duration client_certificate_validity)
      : ca_(std::move(ca)),
        trust_(std::move(trust)),
        store_(store),
        client_certificate_validity_(client_certificate_validity) {}

  struct CreatedToken {
    EnrollmentToken token;
    TokenRecord record;
  };
  // FailedPrecondition when the client id belongs to an enrolled, unrevoked client.
  absl::StatusOr<CreatedToken> CreateToken(const std::string& client_id, absl::Duration ttl,
                                           absl::Time now = absl::Now());

  struct Enrolled {
    ClientRecord client;
    pki::Certificate certificate;
  };
  // Consumes the token and issues a certificate for the CSR's key, atomically.
  absl::StatusOr<Enrolled> Enroll(const std::string& token, const std::string& csr_der,
                                  const std::string& client_version, absl::Time now = absl::Now());

  // A fresh certificate for an enrolled, unrevoked client's new key, which the key of the
  // certificate it calls with (`current_public_key_der`) vouches for with
  // `key_change_signature` (pki/key_change.h); InvalidArgument without it.
  absl::StatusOr<pki::Certificate> Renew(const std::string& client_id, const std::string& csr_der,
                                         const std::string& current_public_key_der,
                                         const std::string& key_change_signature,
                                         absl::Time now = absl::Now());

  // An admin certificate for a new operator `name`, valid for `validity`; `added_by` is the
  // calling admin's name. AlreadyExists for a name the federation has known.
  absl::StatusOr<pki::Certificate> AddAdmin(const std::string& name, const std::string& csr_der,
                                            const std::string& added_by, absl::Duration validity,
                                            absl::Time now = absl::Now());

  const pki::CertificateAuthority& ca() const { return ca_; }
  const pki::TrustBundle& trust() const { return trust_; }

 private:
  IssuedCertificate Record(const pki::Certificate& certificate) const;

  pki::CertificateAuthority ca_;
  pki::TrustBundle trust_;
  Store* store_;
  absl::Duration client_certificate_validity_;
};

}  // namespace fedmoe::coordinator

#endif  // FEDMOE_COORDINATOR_IDENTITY_ENROLLMENT_AUTHORITY_H_
