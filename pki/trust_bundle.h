// The CA certificates a member of a federation trusts. Outside a CA rotation that is the one
// federation CA; during a rotation it is two CAs of the same trust domain, so that
// certificates issued by either are accepted while clients move from the old CA to the new
// one. The first certificate is the CA that currently issues certificates.
#ifndef FEDMOE_PKI_TRUST_BUNDLE_H_
#define FEDMOE_PKI_TRUST_BUNDLE_H_

#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "pki/certificate.h"

namespace fedmoe::pki {

class TrustBundle {
 public:
  // InvalidArgument unless `cas` is one or more distinct CA certificates of `federation`.
  static absl::StatusOr<TrustBundle> Create(std::vector<Certificate> cas,
                                            std::string_view federation);
  // The same, from DER certificates as they travel on the wire.
  static absl::StatusOr<TrustBundle> FromDer(const std::vector<std::string>& ders,
                                             std::string_view federation);
  // A PEM file of one or more CA certificates (a file written before rotations existed holds
  // one, and reads as a bundle of one).
  static absl::StatusOr<TrustBundle> ReadFile(const std::filesystem::path& path,
                                              std::string_view federation);

  // Written atomically, world-readable: it holds no secret.
  absl::Status WriteFile(const std::filesystem::path& path) const;

  const Certificate& issuer() const { return cas_.front(); }
  const std::vector<Certificate>& certificates() const { return cas_; }
  const std::string& federation() const { return federation_; }
  std::vector<std::string> Der() const;
  std::string ToPem() const;
  // Lower-case hex SHA-256 fingerprints of the certificates, in order.
  const std::vector<std::string>& Fingerprints() const { return fingerprints_; }
  bool Contains(std::string_view fingerprint) const;
  // SHA-256 over the certificates' DER encodings in order, 64 lower-case hex digits. Two
  // members hold the same trust exactly when their digests are equal (order included, so a
  // change of issuing CA changes the digest).
  const std::string& Digest() const { return digest_; }

  // VerifyPeer against every CA of the bundle and this bundle's federation.
  absl::StatusOr<SpiffeId> Verify(const Certificate& leaf, Purpose purpose,
                                  absl::Time now = absl::Now()) const;

 private:
  TrustBundle(std::vector<Certificate> cas, std::string federation,
              std::vector<std::string> fingerprints, std::string digest)
      : cas_(std::move(cas)),
        federation_(std::move(federation)),
        fingerprints_(std::move(fingerprints)),
        digest_(std::move(digest)) {}

  // Immutable, so the hashes are taken once: clients compare the digest on every poll.
  std::vector<Certificate> cas_;
  std::string federation_;
  std::vector<std::string> fingerprints_;
  std::string digest_;
};

}  // namespace fedmoe::pki

#endif  // FEDMOE_PKI_TRUST_BUNDLE_H_
