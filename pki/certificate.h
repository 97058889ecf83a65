// X.509 certificates of a federation, their SHA-256 fingerprints, and the checks the services
// make on a peer: issued by the federation CA, within validity, for the right purpose, and
// naming a well-formed identity of this federation.
#ifndef FEDMOE_PKI_CERTIFICATE_H_
#define FEDMOE_PKI_CERTIFICATE_H_

#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "pki/openssl_handles.h"
#include "pki/spiffe_id.h"

namespace fedmoe::pki {

// A shared, immutable handle to one certificate. Copies share the underlying X509.
class Certificate {
 public:
  static absl::StatusOr<Certificate> FromPem(const std::string& pem);
  static absl::StatusOr<Certificate> FromDer(const std::string& der);
  // Every certificate of a PEM bundle, in order. InvalidArgument when there is none.
  static absl::StatusOr<std::vector<Certificate>> BundleFromPem(const std::string& pem);
  static absl::StatusOr<Certificate> ReadFile(const std::filesystem::path& path);
  // Takes ownership of an OpenSSL certificate (pki's own constructors use this).
  static Certificate Adopt(internal::X509Ptr certificate) {
    return Certificate(std::move(certificate));
  }

  Certificate(const Certificate& other);
  Certificate& operator=(const Certificate& other);
  Certificate(Certificate&&) noexcept = default;
  Certificate& operator=(Certificate&&) noexcept = default;
  ~Certificate() = default;

  std::string ToPem() const;
  std::string ToDer() const;
  absl::Status WriteFile(const std::filesystem::path& path) const;

  // SHA-256 of the DER encoding, 64 lower-case hex digits.
  std::string Sha256Fingerprint() const;
  // The certificate's one SAN URI, parsed. NotFound when it has none.
  absl::StatusOr<SpiffeId> Identity() const;
  absl::Time NotBefore() const;
  absl::Time NotAfter() const;
  // Lower-case hex.
  std::string SerialHex() const;
  // The DNS names and IP addresses of the subject alternative names (not the SPIFFE URI), as
  // IssueServer took them.
  std::vector<std::string> ServerHosts() const;
  bool IsCa() const;
  // SubjectPublicKeyInfo, DER: compare with PrivateKey::PublicKeyDer() to match a key.
  std::string PublicKeyDer() const;

  X509* get() const { return certificate_.get(); }

 private:
  explicit Certificate(internal::X509Ptr certificate) : certificate_(std::move(certificate)) {}
  internal::X509Ptr certificate_;
};

// Turns a fingerprint as an operator may type it (upper or lower case, with or without colons)
// into the 64 lower-case hex digits that Certificate::Sha256Fingerprint returns.
absl::StatusOr<std::string> NormalizeFingerprint(std::string_view fingerprint);

// Compares two normalized fingerprints in constant time.
bool FingerprintsEqual(std::string_view a, std::string_view b);

// The federation a CA certificate serves: its SAN URI is spiffe://<federation>.
absl::StatusOr<std::string> CaFederation(const Certificate& ca);

// Whether the certificate is valid for `host`, a DNS name or an IP address.
bool CertificateMatchesHost(const Certificate& certificate, const std::string& host);

enum class Purpose { kClient, kServer };

// Checks that `leaf` chains to `ca` at time `now`, carries the extended key usage for
// `purpose`, and names an identity of `federation`; returns that identity. Each failure gets a
// specific message (expired, not yet valid, wrong issuer, wrong purpose, foreign federation).
absl::StatusOr<SpiffeId> VerifyPeer(const Certificate& leaf, const Certificate& ca,
                                    std::string_view federation, Purpose purpose,
                                    absl::Time now = absl::Now());
// The same, accepting a chain to any of `cas` (the two CAs of a rotation's overlap).
absl::StatusOr<SpiffeId> VerifyPeer(const Certificate& leaf, std::span<const Certificate> cas,
                                    std::string_view federation, Purpose purpose,
                                    absl::Time now = absl::Now());

}  // namespace fedmoe::pki

#endif  // FEDMOE_PKI_CERTIFICATE_H_
