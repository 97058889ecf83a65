// The keys this site has seen for its SecAgg+ peers, trusted on first use.
//
// The coordinator holds the federation CA and could mint a certificate of its own for a peer's
// id, then relay SecAgg+ keys that it controls; a signature chain to the CA cannot tell. A site
// therefore remembers the public key (its SHA-256) it first saw for each peer id, and later
// accepts a different key for that id only behind a chain of key changes, each signed by the
// key before it (pki/key_change.h), starting at the pinned one. Otherwise it refuses the round
// and names the peer. The file is `peer-keys` in the state directory: one line per peer,
// "CLIENT_ID SHA256_HEX", written atomically.
#ifndef FEDMOE_CLIENT_PEER_KEYS_H_
#define FEDMOE_CLIENT_PEER_KEYS_H_

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "pki/key_change.h"
#include "pki/spiffe_id.h"

namespace fedmoe::client {

class PeerKeyPins {
 public:
  // An absent file is an empty set: every peer is new.
  static absl::StatusOr<PeerKeyPins> Load(const std::filesystem::path& path);

  enum class Outcome { kKnown, kPinned, kChanged };
  // Checks `peer`'s key (SubjectPublicKeyInfo DER) against its pin and records the result in
  // memory: a new peer is pinned, a change proven by `key_changes` moves the pin.
  // PermissionDenied, naming the peer and both fingerprints, for a different key without a
  // chain of changes from the pinned one.
  absl::StatusOr<Outcome> Check(const pki::SpiffeId& peer, const std::string& public_key_der,
                                const std::vector<pki::KeyChange>& key_changes);

  // Writes every pin, atomically.
  absl::Status Save() const;
  // Drops a peer's pin, so that its next key is trusted on first use again: for an operator who
  // learned out of band that the peer lost its key. NotFound for an unknown peer.
  absl::Status Forget(const std::string& client_id);

  // Client id → SHA-256 hex of its key.
  const std::map<std::string, std::string>& pins() const { return pins_; }

 private:
  explicit PeerKeyPins(std::filesystem::path path) : path_(std::move(path)) {}

  std::filesystem::path path_;
  std::map<std::string, std::string> pins_;
};

}  // namespace fedmoe::client

#endif  // FEDMOE_CLIENT_PEER_KEYS_H_
