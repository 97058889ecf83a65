#include "pki/trust_bundle.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "storage/atomic_file.h"
#include "storage/read_file.h"

namespace fedmoe::pki {

absl::StatusOr<TrustBundle> TrustBundle::Create(std::vector<Certificate> cas,
                                                std::string_view federation) {
  if (cas.empty()) return absl::InvalidArgumentError("a trust bundle needs at least one CA");
  std::vector<std::string> fingerprints;
  std::string ders;
  for (const Certificate& ca : cas) {
    std::string fingerprint = ca.Sha256Fingerprint();
    absl::StatusOr<std::string> served = CaFederation(ca);
    if (!served.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("trust bundle certificate ", fingerprint, ": ", served.status().message()));
    }
    if (*served != federation) {
      return absl::InvalidArgumentError(absl::StrCat("trust bundle certificate ", fingerprint,
                                                     " is a CA of federation '", *served,
                                                     "', not '", std::string(federation), "'"));
    }
    if (std::find(fingerprints.begin(), fingerprints.end(), fingerprint) != fingerprints.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("trust bundle names CA ", fingerprint, " twice"));
    }
    fingerprints.push_back(std::move(fingerprint));
    ders += ca.ToDer();
  }
  std::string digest = internal::Sha256Hex(ders);
  return TrustBundle(std::move(cas), std::string(federation), std::move(fingerprints),
                     std::move(digest));
}

absl::StatusOr<TrustBundle> TrustBundle::FromDer(const std::vector<std::string>& ders,
                                                 std::string_view federation) {
  std::vector<Certificate> cas;
  for (const std::string& der : ders) {
    absl::StatusOr<Certificate> ca = Certificate::FromDer(der);
    if (!ca.ok()) return ca.status();
    cas.push_back(*std::move(ca));
  }
  return Create(std::move(cas), federation);
}

absl::StatusOr<TrustBundle> TrustBundle::ReadFile(const std::filesystem::path& path,
                                                  std::string_view federation) {
  absl::StatusOr<std::string> contents = storage::ReadSmallFile(path, internal::kMaxPemFileBytes);
  if (!contents.ok()) return contents.status();
  absl::StatusOr<std::vector<Certificate>> cas = Certificate::BundleFromPem(*contents);
  if (!cas.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path.string(), ": ", cas.status().message()));
  }
  absl::StatusOr<TrustBundle> bundle = Create(*std::move(cas), federation);
  if (!bundle.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path.string(), ": ", bundle.status().message()));
  }
  return bundle;
}

absl::Status TrustBundle::WriteFile(const std::filesystem::path& path) const {
  using std::filesystem::perms;
  return storage::WriteFileAtomically(
      path, ToPem(),
      perms::owner_read | perms::owner_write | perms::group_read | perms::others_read);
}

std::vector<std::string> TrustBundle::Der() const {
  std::vector<std::string> ders;
  ders.reserve(cas_.size());
  for (const Certificate& ca : cas_) ders.push_back(ca.ToDer());
  return ders;
}

std::string TrustBundle::ToPem() const {
  std::string pem;
  for (const Certificate& ca : cas_) pem += ca.ToPem();
  return pem;
}

bool TrustBundle::Contains(std::string_view fingerprint) const {
  return std::ranges::any_of(
      fingerprints_, [&](const std::string& held) { return FingerprintsEqual(held, fingerprint); });
}

absl::StatusOr<SpiffeId> TrustBundle::Verify(const Certificate& leaf, Purpose purpose,
                                             absl::Time now) const {
  return VerifyPeer(leaf, cas_, federation_, purpose, now);
}

}  // namespace fedmoe::pki
