#include "pki/trust_bundle.h"

#include <algorithm>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "storage/atomic_file.h"

namespace fedmoe::pki {

absl::StatusOr<TrustBundle> TrustBundle::Create(std::vector<Certificate> cas,
                                                std::string_view federation) {
  if (cas.empty()) return absl::InvalidArgumentError("a trust bundle needs at least one CA");
  std::vector<std::string> seen;
  for (const Certificate& ca : cas) {
    absl::StatusOr<std::string> served = CaFederation(ca);
    if (!served.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "trust bundle certificate ", ca.Sha256Fingerprint(), ": ", served.status().message()));
    }
    if (*served != federation) {
      return absl::InvalidArgumentError(absl::StrCat(
          "trust bundle certificate ", ca.Sha256Fingerprint(), " is a CA of federation '", *served,
          "', not '", std::string(federation), "'"));
    }
    std::string fingerprint = ca.Sha256Fingerprint();
    if (std::find(seen.begin(), seen.end(), fingerprint) != seen.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("trust bundle names CA ", fingerprint, " twice"));
    }
    seen.push_back(std::move(fingerprint));
  }
  return TrustBundle(std::move(cas), std::string(federation));
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
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read CA bundle ", path.string()));
  std::ostringstream contents;
  contents << in.rdbuf();
  absl::StatusOr<std::vector<Certificate>> cas = Certificate::BundleFromPem(contents.str());
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

std::vector<std::string> TrustBundle::Fingerprints() const {
  std::vector<std::string> fingerprints;
  fingerprints.reserve(cas_.size());
  for (const Certificate& ca : cas_) fingerprints.push_back(ca.Sha256Fingerprint());
  return fingerprints;
}

bool TrustBundle::Contains(std::string_view fingerprint) const {
  return std::ranges::any_of(cas_, [&](const Certificate& ca) {
    return FingerprintsEqual(ca.Sha256Fingerprint(), fingerprint);
  });
}

std::string TrustBundle::Digest() const {
  std::string ders;
  for (const Certificate& ca : cas_) ders += ca.ToDer();
  return internal::Sha256Hex(ders);
}

absl::StatusOr<SpiffeId> TrustBundle::Verify(const Certificate& leaf, Purpose purpose,
                                             absl::Time now) const {
  return VerifyPeer(leaf, cas_, federation_, purpose, now);
}

}  // namespace fedmoe::pki
