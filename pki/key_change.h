// A key change vouched for by the key it replaces.
//
// The coordinator holds the federation CA, so "signed by the CA" cannot tell a site's peer from
// a certificate the coordinator minted for the peer's id. Each site therefore pins the key it
// first saw for every peer id (client/peer_keys.h) and accepts a different key only behind a
// chain of key changes, each signed by the key before it. A client signs one when it renews;
// the coordinator keeps the chain and relays it with the peer's advertised keys, and cannot
// forge a link without the peer's old private key.
#ifndef FEDMOE_PKI_KEY_CHANGE_H_
#define FEDMOE_PKI_KEY_CHANGE_H_

#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "pki/private_key.h"
#include "pki/spiffe_id.h"

namespace fedmoe::pki {

struct KeyChange {
  // SubjectPublicKeyInfo DER of the key replaced and of its successor.
  std::string old_public_key_der;
  std::string new_public_key_der;
  // ECDSA-SHA256 (DER) by the old key over KeyChangeMessage.
  std::string signature;
};

// Lower-case hex SHA-256 of a SubjectPublicKeyInfo: what a site pins for a peer.
std::string PublicKeyFingerprint(std::string_view public_key_der);

// "fedmoe/v1/key-change" ‖ 0 ‖ the identity's URI, length-prefixed (4 bytes big-endian) ‖ the
// old and the new key's fingerprints: binding the identity keeps one peer's change from being
// replayed as another's.
std::string KeyChangeMessage(const SpiffeId& identity, std::string_view old_public_key_der,
                             std::string_view new_public_key_der);

// `old_key` vouches for `new_public_key_der` as `identity`'s next key.
absl::StatusOr<KeyChange> SignKeyChange(const PrivateKey& old_key, const SpiffeId& identity,
                                        const std::string& new_public_key_der);

// Unauthenticated unless `change.signature` is the old key's over the change for `identity`.
absl::Status VerifyKeyChange(const SpiffeId& identity, const KeyChange& change);

}  // namespace fedmoe::pki

#endif  // FEDMOE_PKI_KEY_CHANGE_H_
