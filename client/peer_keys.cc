#include "client/peer_keys.h"

#include <system_error>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "pki/certificate.h"
#include "pki/spiffe_id.h"
#include "storage/atomic_file.h"
#include "storage/read_file.h"

namespace fedmoe::client {

absl::StatusOr<PeerKeyPins> PeerKeyPins::Load(const std::filesystem::path& path) {
  PeerKeyPins pins(path);
  std::error_code error;
  if (!std::filesystem::exists(path, error)) return pins;
  absl::StatusOr<std::string> text = storage::ReadSmallFile(path, uint64_t{16} << 20);
  if (!text.ok()) return text.status();
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(*text, '\n')) {
    ++line_number;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line.front() == '#') continue;
    std::vector<std::string> fields = absl::StrSplit(line, ' ', absl::SkipEmpty());
    absl::StatusOr<std::string> fingerprint =
        fields.size() == 2 ? pki::NormalizeFingerprint(fields[1])
                           : absl::InvalidArgumentError("expected CLIENT_ID SHA256_HEX");
    if (!fingerprint.ok() || !pki::ValidateName("client id", fields[0]).ok()) {
      return absl::DataLossError(absl::StrCat(path.string(), ":", line_number,
                                              ": not a peer key line (CLIENT_ID SHA256_HEX)"));
    }
    pins.pins_[fields[0]] = *fingerprint;
  }
  return pins;
}

absl::StatusOr<PeerKeyPins::Outcome> PeerKeyPins::Check(
    const pki::SpiffeId& peer, const std::string& public_key_der,
    const std::vector<pki::KeyChange>& key_changes) {
  const std::string presented = pki::PublicKeyFingerprint(public_key_der);
  auto pinned = pins_.find(peer.name);
  if (pinned == pins_.end()) {
    pins_[peer.name] = presented;
    return Outcome::kPinned;
  }
  if (pki::FingerprintsEqual(pinned->second, presented)) return Outcome::kKnown;
  // Follow the changes that start at the key reached so far; a link signed by any other key
  // proves nothing to this site.
  std::string reached = pinned->second;
  for (const pki::KeyChange& change : key_changes) {
    if (!pki::FingerprintsEqual(pki::PublicKeyFingerprint(change.old_public_key_der), reached)) {
      continue;
    }
    if (!pki::VerifyKeyChange(peer, change).ok()) continue;
    reached = pki::PublicKeyFingerprint(change.new_public_key_der);
  }
  if (!pki::FingerprintsEqual(reached, presented)) {
    return absl::PermissionDeniedError(absl::StrCat(
        "peer '", peer.name, "' presents key sha256:", presented.substr(0, 16),
        "… but this site pinned sha256:", pinned->second.substr(0, 16),
        "… for it, and no key change signed by the pinned key leads to the new one: refusing "
        "the round, since the coordinator may be impersonating '",
        peer.name, "' (if its operator confirms it lost its key, run `fedmoe-client peers forget ",
        peer.name, "`)"));
  }
  pinned->second = presented;
  return Outcome::kChanged;
}

absl::Status PeerKeyPins::Save() const {
  std::string text =
      "# SecAgg+ peers' public keys (SHA-256 of the SubjectPublicKeyInfo), trusted on first use.\n";
  for (const auto& [client_id, fingerprint] : pins_) {
    absl::StrAppend(&text, client_id, " ", fingerprint, "\n");
  }
  using std::filesystem::perms;
  return storage::WriteFileAtomically(
      path_, text, perms::owner_read | perms::owner_write | perms::group_read | perms::others_read);
}

absl::Status PeerKeyPins::Forget(const std::string& client_id) {
  if (pins_.erase(client_id) == 0) {
    return absl::NotFoundError(absl::StrCat("no pinned key for peer '", client_id, "'"));
  }
  return absl::OkStatus();
}

}  // namespace fedmoe::client
