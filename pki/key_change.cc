#include "pki/key_change.h"

#include "absl/strings/str_cat.h"
#include "pki/openssl_handles.h"

namespace fedmoe::pki {

std::string PublicKeyFingerprint(std::string_view public_key_der) {
  return internal::Sha256Hex(public_key_der);
}

std::string KeyChangeMessage(const SpiffeId& identity, std::string_view old_public_key_der,
                             std::string_view new_public_key_der) {
  const std::string uri = identity.ToUri();
  std::string message("fedmoe/v1/key-change", sizeof("fedmoe/v1/key-change"));
  const auto length = static_cast<uint32_t>(uri.size());
  for (int shift = 24; shift >= 0; shift -= 8) {
    message.push_back(static_cast<char>((length >> shift) & 0xff));
  }
  absl::StrAppend(&message, uri, PublicKeyFingerprint(old_public_key_der),
                  PublicKeyFingerprint(new_public_key_der));
  return message;
}

absl::StatusOr<KeyChange> SignKeyChange(const PrivateKey& old_key, const SpiffeId& identity,
                                        const std::string& new_public_key_der) {
  absl::StatusOr<std::string> old_public_key_der = old_key.PublicKeyDer();
  if (!old_public_key_der.ok()) return old_public_key_der.status();
  absl::StatusOr<std::string> signature =
      old_key.Sign(KeyChangeMessage(identity, *old_public_key_der, new_public_key_der));
  if (!signature.ok()) return signature.status();
  return KeyChange{*std::move(old_public_key_der), new_public_key_der, *std::move(signature)};
}

absl::Status VerifyKeyChange(const SpiffeId& identity, const KeyChange& change) {
  return VerifySignature(
      change.old_public_key_der,
      KeyChangeMessage(identity, change.old_public_key_der, change.new_public_key_der),
      change.signature);
}

}  // namespace fedmoe::pki
