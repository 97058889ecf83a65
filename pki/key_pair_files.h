// Replacing a key and its certificate on disk so that a crash at any point leaves a matching
// pair. Both new files are written in full beside the old ones (KEY.next, CERT.next), then
// renamed into place, key first. A crash between the renames leaves CERT.next; the next
// CompleteKeyPairSwap (at start-up) finishes the job. A lone KEY.next is an unfinished write
// and is discarded. Used for client renewal and the coordinator's server and admin pairs.
#ifndef FEDMOE_PKI_KEY_PAIR_FILES_H_
#define FEDMOE_PKI_KEY_PAIR_FILES_H_

#include <filesystem>

#include "absl/status/status.h"
#include "pki/certificate.h"
#include "pki/private_key.h"

namespace fedmoe::pki {

absl::Status ReplaceKeyPair(const PrivateKey& key, const Certificate& certificate,
                            const std::filesystem::path& key_path,
                            const std::filesystem::path& certificate_path);

absl::Status CompleteKeyPairSwap(const std::filesystem::path& key_path,
                                 const std::filesystem::path& certificate_path);

}  // namespace fedmoe::pki

#endif  // FEDMOE_PKI_KEY_PAIR_FILES_H_
