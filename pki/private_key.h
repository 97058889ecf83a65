// An ECDSA P-256 private key: the identity key of a client, an admin, the coordinator's server
// certificate or the federation CA. Generated from OpenSSL's CSPRNG, never logged, and written
// to disk only with mode 0600.
#ifndef FEDMOE_PKI_PRIVATE_KEY_H_
#define FEDMOE_PKI_PRIVATE_KEY_H_

#include <filesystem>
#include <string>

#include "absl/status/statusor.h"
#include "pki/openssl_handles.h"

namespace fedmoe::pki {

class PrivateKey {
 public:
  static absl::StatusOr<PrivateKey> GenerateP256();
  // Accepts a PKCS#8 or SEC1 PEM key; refuses any key that is not EC P-256.
  static absl::StatusOr<PrivateKey> FromPem(const std::string& pem);
  // Reads a key file, refusing one that group or others can read: a key that has been exposed
  // is not silently used.
  static absl::StatusOr<PrivateKey> ReadFile(const std::filesystem::path& path);

  PrivateKey(PrivateKey&&) noexcept = default;
  PrivateKey& operator=(PrivateKey&&) noexcept = default;
  PrivateKey(const PrivateKey&) = delete;
  PrivateKey& operator=(const PrivateKey&) = delete;
  ~PrivateKey() = default;

  // PKCS#8 PEM. Holds the secret: keep it out of logs.
  absl::StatusOr<std::string> ToPem() const;
  // Writes the PKCS#8 PEM atomically (temporary file, fsync, rename) with mode 0600.
  absl::Status WriteFile(const std::filesystem::path& path) const;

  // SubjectPublicKeyInfo, DER.
  absl::StatusOr<std::string> PublicKeyDer() const;

  // ECDSA-SHA256 signature, DER, over `message`.
  absl::StatusOr<std::string> Sign(const std::string& message) const;

  EVP_PKEY* get() const { return key_.get(); }

 private:
  explicit PrivateKey(internal::EvpPkeyPtr key) : key_(std::move(key)) {}
  internal::EvpPkeyPtr key_;
};

// Verifies an ECDSA-SHA256 signature made by PrivateKey::Sign against a public key
// (SubjectPublicKeyInfo DER). InvalidArgument for a malformed key, Unauthenticated for a
// signature that does not verify.
absl::Status VerifySignature(const std::string& public_key_der, const std::string& message,
                             const std::string& signature_der);

}  // namespace fedmoe::pki

#endif  // FEDMOE_PKI_PRIVATE_KEY_H_
