#include "coordinator/ca_rotation.h"

#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "coordinator/store.h"
#include "logging/log.h"
#include "storage/atomic_file.h"

namespace fedmoe::coordinator {
namespace {

namespace fs = std::filesystem;

absl::Status RemoveDurably(const fs::path& path) {
  std::error_code error;
  fs::remove(path, error);
  if (error) {
    return absl::InternalError(
        absl::StrCat("cannot remove ", path.string(), ": ", error.message()));
  }
  storage::SyncParentDirectory(path);
  return absl::OkStatus();
}

// Each step is a rename that is skipped once done, so running the whole list again after a
// crash at any point ends in the same place: the old CA's certificate kept as the previous
// one, the new CA's key over the old key (which destroys it), the new certificate as ca.pem.
absl::Status CompleteCaSwitch(const StateDir& dir) {
  if (!fs::exists(dir.ca_switch_marker())) return absl::OkStatus();
  if (fs::exists(dir.next_ca_certificate()) && !fs::exists(dir.previous_ca_certificate())) {
    if (absl::Status status =
            storage::RenameDurably(dir.ca_certificate(), dir.previous_ca_certificate());
        !status.ok()) {
      return status;
    }
  }
  if (fs::exists(dir.next_ca_key())) {
    if (absl::Status status = storage::RenameDurably(dir.next_ca_key(), dir.ca_key());
        !status.ok()) {
      return status;
    }
  }
  if (fs::exists(dir.next_ca_certificate())) {
    if (absl::Status status =
            storage::RenameDurably(dir.next_ca_certificate(), dir.ca_certificate());
        !status.ok()) {
      return status;
    }
  }
  return RemoveDurably(dir.ca_switch_marker());
}

absl::StatusOr<pki::CertificateAuthority> LoadCaPair(const fs::path& certificate_path,
                                                     const fs::path& key_path,
                                                     const std::string& federation) {
  absl::StatusOr<pki::Certificate> certificate = pki::Certificate::ReadFile(certificate_path);
  if (!certificate.ok()) return certificate.status();
  absl::StatusOr<pki::PrivateKey> key = pki::PrivateKey::ReadFile(key_path);
  if (!key.ok()) return key.status();
  absl::StatusOr<pki::CertificateAuthority> ca =
      pki::CertificateAuthority::Load(*std::move(certificate), *std::move(key));
  if (!ca.ok()) return ca.status();
  if (ca->federation() != federation) {
    return absl::InvalidArgumentError(absl::StrCat("the CA in ", certificate_path.string(),
                                                   " is for federation '", ca->federation(),
                                                   "', not '", federation, "'"));
  }
  return ca;
}

absl::Status RequirePhase(const FederationTrust& trust, CaRotationPhase wanted, const char* step) {
  if (trust.phase == wanted) return absl::OkStatus();
  const char* hint = "";
  switch (trust.phase) {
    case CaRotationPhase::kNone:
      hint = "no CA rotation is in progress; start one with `fedmoe-coordinator ca begin`";
      break;
    case CaRotationPhase::kNewCaTrusted:
      hint =
          "the new CA is trusted but does not issue yet; the next step is `fedmoe-coordinator ca "
          "switch`";
      break;
    case CaRotationPhase::kNewCaIssuing:
      hint =
          "the new CA issues and the old one is still trusted; the next step is "
          "`fedmoe-coordinator ca retire`";
      break;
  }
  return absl::FailedPreconditionError(absl::StrCat("cannot ", step, ": ", hint));
}

absl::StatusOr<std::vector<std::string>> ClientsNotMoved(const CoordinatorConfig& config,
                                                         const FederationTrust& trust,
                                                         absl::Time now) {
  if (trust.phase == CaRotationPhase::kNone) return std::vector<std::string>{};
  absl::StatusOr<std::unique_ptr<Store>> store = Store::Open(config.state_dir.store());
  if (!store.ok()) return store.status();
  // Before the switch the new CA is the bundle's second; after it, the issuer.
  return trust.phase == CaRotationPhase::kNewCaTrusted
             ? (*store)->ClientsWithoutCa(trust.bundle.Fingerprints()[1], CaHolding::kTrusts, now)
             : (*store)->ClientsWithoutCa(trust.issuer.certificate().Sha256Fingerprint(),
                                          CaHolding::kIssuedBy, now);
}

absl::Status RequireAllMoved(const std::vector<std::string>& not_moved, const char* what,
                             bool force) {
  if (not_moved.empty()) return absl::OkStatus();
  if (force) {
    LogEvent(LogLevel::kWarning, "ca_rotation_forced")
        .Field("clients_not_moved", absl::StrJoin(not_moved, ","));
    return absl::OkStatus();
  }
  return absl::FailedPreconditionError(absl::StrCat(
      not_moved.size(), " client(s) ", what, ": ", absl::StrJoin(not_moved, ", "),
      "; wait until they have polled (`fedmoe-coordinator ca status`), revoke them, or pass "
      "--force to cut them off"));
}

}  // namespace

std::string_view CaRotationPhaseName(CaRotationPhase phase) {
  switch (phase) {
    case CaRotationPhase::kNone:
      return "none";
    case CaRotationPhase::kNewCaTrusted:
      return "new-ca-trusted";
    case CaRotationPhase::kNewCaIssuing:
      return "new-ca-issuing";
  }
  return "unknown";
}

absl::StatusOr<pki::TrustBundle> LoadTrustedCas(const CoordinatorConfig& config) {
  const StateDir& dir = config.state_dir;
  const bool next = fs::exists(dir.next_ca_certificate());
  const bool previous = fs::exists(dir.previous_ca_certificate());
  if (next && previous) {
    return absl::FailedPreconditionError(absl::StrCat(
        dir.root.string(), " holds both ", dir.next_ca_certificate().filename().string(), " and ",
        dir.previous_ca_certificate().filename().string(),
        ": a CA rotation began before the previous one was retired"));
  }
  std::vector<fs::path> paths = {dir.ca_certificate()};
  if (next) paths.push_back(dir.next_ca_certificate());
  if (previous) paths.push_back(dir.previous_ca_certificate());
  std::vector<pki::Certificate> cas;
  for (const fs::path& path : paths) {
    absl::StatusOr<pki::Certificate> ca = pki::Certificate::ReadFile(path);
    if (!ca.ok()) return ca.status();
    cas.push_back(*std::move(ca));
  }
  absl::StatusOr<pki::TrustBundle> bundle = pki::TrustBundle::Create(cas, config.federation);
  if (!bundle.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("the CAs in ", dir.root.string(), ": ", bundle.status().message()));
  }
  return bundle;
}

absl::StatusOr<FederationTrust> LoadFederationTrust(const CoordinatorConfig& config) {
  const StateDir& dir = config.state_dir;
  if (absl::Status status = CompleteCaSwitch(dir); !status.ok()) return status;
  absl::StatusOr<pki::CertificateAuthority> issuer = LoadFederationCa(config);
  if (!issuer.ok()) return issuer.status();
  absl::StatusOr<pki::TrustBundle> bundle = LoadTrustedCas(config);
  if (!bundle.ok()) return bundle.status();
  CaRotationPhase phase = CaRotationPhase::kNone;
  if (fs::exists(dir.next_ca_certificate())) phase = CaRotationPhase::kNewCaTrusted;
  if (fs::exists(dir.previous_ca_certificate())) phase = CaRotationPhase::kNewCaIssuing;
  return FederationTrust{*std::move(issuer), *std::move(bundle), phase};
}

absl::StatusOr<CaRotationStatus> GetCaRotationStatus(const CoordinatorConfig& config,
                                                     absl::Time now) {
  absl::StatusOr<FederationTrust> trust = LoadFederationTrust(config);
  if (!trust.ok()) return trust.status();
  CaRotationStatus status;
  status.phase = trust->phase;
  const std::vector<std::string> fingerprints = trust->bundle.Fingerprints();
  status.issuer_fingerprint = fingerprints.front();
  if (fingerprints.size() > 1) status.other_fingerprint = fingerprints[1];
  absl::StatusOr<std::vector<std::string>> not_moved = ClientsNotMoved(config, *trust, now);
  if (!not_moved.ok()) return not_moved.status();
  status.clients_not_moved = *std::move(not_moved);
  return status;
}

absl::StatusOr<std::string> BeginCaRotation(const CoordinatorConfig& config,
                                            const BeginCaRotationOptions& options) {
  const StateDir& dir = config.state_dir;
  absl::StatusOr<FederationTrust> trust = LoadFederationTrust(config);
  if (!trust.ok()) return trust.status();
  if (absl::Status status = RequirePhase(*trust, CaRotationPhase::kNone, "begin a CA rotation");
      !status.ok()) {
    return status;
  }
  absl::StatusOr<pki::CertificateAuthority> next =
      absl::InvalidArgumentError("--ca-cert and --ca-key go together");
  if (options.ca_certificate.empty() && options.ca_key.empty()) {
    next = pki::CertificateAuthority::Create(config.federation, options.validity);
  } else if (!options.ca_certificate.empty() && !options.ca_key.empty()) {
    next = LoadCaPair(options.ca_certificate, options.ca_key, config.federation);
  }
  if (!next.ok()) return next.status();
  const std::string fingerprint = next->certificate().Sha256Fingerprint();
  if (trust->bundle.Contains(fingerprint)) {
    return absl::InvalidArgumentError(
        absl::StrCat("CA ", fingerprint, " is already this federation's CA; rotate to a new one"));
  }
  // The key first: the certificate's presence is what marks the rotation as begun, and a
  // lone key from an interrupted begin is simply overwritten by the next one.
  if (absl::Status status = next->key().WriteFile(dir.next_ca_key()); !status.ok()) return status;
  if (absl::Status status = next->certificate().WriteFile(dir.next_ca_certificate());
      !status.ok()) {
    return status;
  }
  LogEvent(LogLevel::kInfo, "ca_rotation_begun").Field("new_ca_fingerprint", fingerprint);
  return fingerprint;
}

absl::StatusOr<std::string> SwitchCa(const CoordinatorConfig& config, bool force, absl::Time now) {
  const StateDir& dir = config.state_dir;
  absl::StatusOr<FederationTrust> trust = LoadFederationTrust(config);
  if (!trust.ok()) return trust.status();
  if (absl::Status status =
          RequirePhase(*trust, CaRotationPhase::kNewCaTrusted, "switch to the new CA");
      !status.ok()) {
    return status;
  }
  absl::StatusOr<std::vector<std::string>> not_moved = ClientsNotMoved(config, *trust, now);
  if (!not_moved.ok()) return not_moved.status();
  if (absl::Status status = RequireAllMoved(*not_moved, "do not hold the new CA yet", force);
      !status.ok()) {
    return status;
  }
  if (absl::Status status = CompleteCoordinatorKeySwaps(dir); !status.ok()) return status;
  absl::StatusOr<pki::CertificateAuthority> next =
      LoadCaPair(dir.next_ca_certificate(), dir.next_ca_key(), config.federation);
  if (!next.ok()) return next.status();
  // The coordinator's own certificates move first. A crash before the marker leaves them
  // issued by the new CA while the old one still issues clients' certificates: both CAs are
  // trusted on both sides, so that state serves, and switching again finishes the job.
  absl::StatusOr<RenewedCertificates> renewed = ReissueCoordinatorCertificates(config, *next, {});
  if (!renewed.ok()) return renewed.status();
  const std::string fingerprint = next->certificate().Sha256Fingerprint();
  if (absl::Status status =
          storage::WriteFileAtomically(dir.ca_switch_marker(), fingerprint + "\n",
                                       fs::perms::owner_read | fs::perms::owner_write);
      !status.ok()) {
    return status;
  }
  if (absl::Status status = CompleteCaSwitch(dir); !status.ok()) return status;
  LogEvent(LogLevel::kInfo, "ca_rotation_switched")
      .Field("issuing_ca_fingerprint", fingerprint)
      .Field("clients_cut_off", static_cast<int64_t>(not_moved->size()));
  return fingerprint;
}

absl::StatusOr<std::string> RetireCa(const CoordinatorConfig& config, bool force, absl::Time now) {
  const StateDir& dir = config.state_dir;
  absl::StatusOr<FederationTrust> trust = LoadFederationTrust(config);
  if (!trust.ok()) return trust.status();
  if (absl::Status status =
          RequirePhase(*trust, CaRotationPhase::kNewCaIssuing, "retire the old CA");
      !status.ok()) {
    return status;
  }
  absl::StatusOr<std::vector<std::string>> not_moved = ClientsNotMoved(config, *trust, now);
  if (!not_moved.ok()) return not_moved.status();
  if (absl::Status status =
          RequireAllMoved(*not_moved, "still use a certificate from the old CA", force);
      !status.ok()) {
    return status;
  }
  const std::string retired = trust->bundle.Fingerprints()[1];
  if (absl::Status status = RemoveDurably(dir.previous_ca_certificate()); !status.ok()) {
    return status;
  }
  LogEvent(LogLevel::kInfo, "ca_rotation_retired").Field("retired_ca_fingerprint", retired);
  return retired;
}

}  // namespace fedmoe::coordinator
