#include "pki/key_pair_files.h"

#include "absl/strings/str_cat.h"
#include "storage/atomic_file.h"
#include "storage/file_status.h"

namespace fedmoe::pki {
namespace {

std::filesystem::path Next(const std::filesystem::path& path) { return {path.string() + ".next"}; }

}  // namespace

absl::Status ReplaceKeyPair(const PrivateKey& key, const Certificate& certificate,
                            const std::filesystem::path& key_path,
                            const std::filesystem::path& certificate_path) {
  if (absl::Status status = key.WriteFile(Next(key_path)); !status.ok()) return status;
  if (absl::Status status = certificate.WriteFile(Next(certificate_path)); !status.ok()) {
    return status;
  }
  return CompleteKeyPairSwap(key_path, certificate_path);
}

absl::Status CompleteKeyPairSwap(const std::filesystem::path& key_path,
                                 const std::filesystem::path& certificate_path) {
  const std::filesystem::path next_key = Next(key_path);
  const std::filesystem::path next_certificate = Next(certificate_path);
  std::error_code error;
  if (storage::PathExists(next_certificate)) {
    if (storage::PathExists(next_key)) {
      if (absl::Status status = storage::RenameDurably(next_key, key_path); !status.ok()) {
        return status;
      }
    }
    return storage::RenameDurably(next_certificate, certificate_path);
  }
  if (storage::PathExists(next_key)) std::filesystem::remove(next_key, error);
  if (error) {
    return absl::InternalError(
        absl::StrCat("cannot discard ", next_key.string(), ": ", error.message()));
  }
  return absl::OkStatus();
}

}  // namespace fedmoe::pki
