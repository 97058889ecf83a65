// The federation CA, and the certificate signing requests clients send it.
//
// The CA's key is made on the coordinator and never leaves its state directory. Every
// certificate the CA issues names exactly one identity (a SAN URI spiffe://<federation>/...),
// carries the key usage its role needs, and has a bounded lifetime that never outlives the CA.
#ifndef FEDMOE_PKI_CERTIFICATE_AUTHORITY_H_
#define FEDMOE_PKI_CERTIFICATE_AUTHORITY_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "pki/certificate.h"
#include "pki/private_key.h"
#include "pki/spiffe_id.h"

namespace fedmoe::pki {

// Issued certificates start this long before "now", so that a peer whose clock is slightly
// behind does not see a certificate that is not yet valid.
inline constexpr absl::Duration kClockSkewAllowance = absl::Minutes(5);
// The longest lifetime the CA gives a client, admin or server certificate.
inline constexpr absl::Duration kMaxLeafValidity = absl::Hours(24 * 398);

// A PKCS#10 request, DER, for `key`, signed with it. The subject is only a label: the CA names
// the certificate after the identity it has authenticated, not after the request.
absl::StatusOr<std::string> MakeCsr(const PrivateKey& key, std::string_view common_name);

class CertificateAuthority {
 public:
  // A new self-signed CA for `federation`, with a fresh P-256 key.
  static absl::StatusOr<CertificateAuthority> Create(const std::string& federation,
                                                     absl::Duration validity,
                                                     absl::Time now = absl::Now());
  // An existing CA; the key must match the certificate.
  static absl::StatusOr<CertificateAuthority> Load(Certificate certificate, PrivateKey key);

  CertificateAuthority(CertificateAuthority&&) noexcept = default;
  CertificateAuthority& operator=(CertificateAuthority&&) noexcept = default;

  const Certificate& certificate() const { return certificate_; }
  const PrivateKey& key() const { return key_; }
  const std::string& federation() const { return federation_; }

  // Issues a client or admin certificate for the key in `csr_der`, after checking the
  // request's own signature and that its key is P-256. `identity` must be of this federation.
  absl::StatusOr<Certificate> IssueFromCsr(const std::string& csr_der, const SpiffeId& identity,
                                           absl::Duration validity,
                                           absl::Time now = absl::Now()) const;

  // Issues the coordinator's TLS server certificate for `key`, valid for each of `hosts`
  // (DNS names or IP addresses) and naming spiffe://<federation>/server/coordinator.
  absl::StatusOr<Certificate> IssueServer(const PrivateKey& key,
                                          const std::vector<std::string>& hosts,
                                          absl::Duration validity,
                                          absl::Time now = absl::Now()) const;

 private:
  CertificateAuthority(Certificate certificate, PrivateKey key, std::string federation)
      : certificate_(std::move(certificate)),
        key_(std::move(key)),
        federation_(std::move(federation)) {}

  absl::StatusOr<Certificate> Issue(EVP_PKEY* subject_key, const SpiffeId& identity,
                                    const std::vector<std::string>& extra_sans,
                                    absl::Duration validity, absl::Time now) const;

  Certificate certificate_;
  PrivateKey key_;
  std::string federation_;
};

}  // namespace fedmoe::pki

#endif  // FEDMOE_PKI_CERTIFICATE_AUTHORITY_H_
