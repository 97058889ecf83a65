#include "coordinator/identity/ca_rotation.h"

#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "config/enum_names.h"
#include "coordinator/state/store.h"
#include "logging/log.h"
#include "storage/atomic_file.h"
#include "storage/file_status.h"

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
  if (!storage::PathExists(dir.ca_switch_marker())) return absl::OkStatus();
  if (storage::PathExists(dir.next_ca_certificate()) &&
      !storage::PathExists(dir.previous_ca_certificate())) {
    if (absl::Status status =
            storage::RenameDurably(dir.ca_certificate(), dir.previous_ca_certificate());
        !status.ok()) {
      return status;
    }
  }
  if (storage::PathExists(dir.next_ca_key())) {
    if (absl::Status status = storage::RenameDurably(dir.next_ca_key(), dir.ca_key());
        !status.ok()) {
      return status;
    }
  }
  if (storage::PathExists(dir.next_ca_certificate())) {
    if (absl::Status status =
            storage::RenameDurably(dir.next_ca_certificate(), dir.ca_certificate());
        !status.ok()) {
      return status;
    }
  }
  return RemoveDurably(dir.ca_switch_marker());
}

// Which rotation files the state directory holds, and so its phase.
absl::StatusOr<CaRotationPhase> PhaseOnDisk(const StateDir& dir) {
  const bool next = storage::PathExists(dir.next_ca_certificate());
  const bool previous = storage::PathExists(dir.previous_ca_certificate());
  if (next && previous) {
    return absl::FailedPreconditionError(absl::StrCat(
        dir.root.string(), " holds both ", dir.next_ca_certificate().filename().string(), " and ",
        dir.previous_ca_certificate().filename().string(),
        ": a CA rotation began before the previous one was retired"));
  }
  if (next) return CaRotationPhase::kNewCaTrusted;
  if (previous) return CaRotationPhase::kNewCaIssuing;
  return CaRotationPhase::kNone;
}

// The issuing CA's certificate, then the other CA of the rotation `phase` is in.
absl::StatusOr<pki::TrustBundle> TrustedCasWith(const pki::Certificate& issuer,
                                                CaRotationPhase phase,
                                                const CoordinatorConfig& config) {
  const StateDir& dir = config.state_dir;
  std::vector<pki::Certificate> cas = {issuer};
  if (phase != CaRotationPhase::kNone) {
    absl::StatusOr<pki::Certificate> other = pki::Certificate::ReadFile(
        phase == CaRotationPhase::kNewCaTrusted ? dir.next_ca_certificate()
                                                : dir.previous_ca_certificate());
    if (!other.ok()) return other.status();
    cas.push_back(*std::move(other));
  }
  absl::StatusOr<pki::TrustBundle> bundle = pki::TrustBundle::Create(cas, config.federation);
  if (!bundle.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("the CAs in ", dir.root.string(), ": ", bundle.status().message()));
  }
  return bundle;
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
  absl::StatusOr<std::unique_ptr<Store>> store =
      Store::OpenExisting(config.state_dir.store(), config.federation);
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

// What switch and retire do first: load the trust, check that the rotation is at `from`, and
// refuse while clients have not moved (`what` they lack), unless forced.
absl::StatusOr<FederationTrust> StartStep(const CoordinatorConfig& config, CaRotationPhase from,
                                          const char* step, const char* what, bool force,
                                          absl::Time now) {
  absl::StatusOr<FederationTrust> trust = LoadFederationTrust(config);
  if (!trust.ok()) return trust.status();
  if (absl::Status status = RequirePhase(*trust, from, step); !status.ok()) return status;
  absl::StatusOr<std::vector<std::string>> not_moved = ClientsNotMoved(config, *trust, now);
  if (!not_moved.ok()) return not_moved.status();
  if (absl::Status status = RequireAllMoved(*not_moved, what, force); !status.ok()) return status;
  return trust;
}

}  // namespace

constexpr config::EnumName<CaRotationPhase> kCaRotationPhaseNames[] = {
    {CaRotationPhase::kNone, "none"},
    {CaRotationPhase::kNewCaTrusted, "new-ca-trusted"},
    {CaRotationPhase::kNewCaIssuing, "new-ca-issuing"}};

std::string_view CaRotationPhaseName(CaRotationPhase phase) {
  return config::NameOf(kCaRotationPhaseNames, phase, "unknown");
}

absl::StatusOr<pki::TrustBundle> LoadTrustedCas(const CoordinatorConfig& config) {
  absl::StatusOr<CaRotationPhase> phase = PhaseOnDisk(config.state_dir);
  if (!phase.ok()) return phase.status();
  absl::StatusOr<pki::Certificate> issuer =
      pki::Certificate::ReadFile(config.state_dir.ca_certificate());
  if (!issuer.ok()) return issuer.status();
  return TrustedCasWith(*issuer, *phase, config);
}

absl::StatusOr<FederationTrust> LoadFederationTrust(const CoordinatorConfig& config) {
  if (absl::Status status = CompleteCaSwitch(config.state_dir); !status.ok()) return status;
  absl::StatusOr<CaRotationPhase> phase = PhaseOnDisk(config.state_dir);
  if (!phase.ok()) return phase.status();
  absl::StatusOr<pki::CertificateAuthority> issuer = LoadFederationCa(config);
  if (!issuer.ok()) return issuer.status();
  absl::StatusOr<pki::TrustBundle> bundle = TrustedCasWith(issuer->certificate(), *phase, config);
  if (!bundle.ok()) return bundle.status();
  return FederationTrust{*std::move(issuer), *std::move(bundle), *phase};
}

absl::StatusOr<CaRotationStatus> GetCaRotationStatus(const CoordinatorConfig& config,
                                                     absl::Time now) {
  absl::StatusOr<FederationTrust> trust = LoadFederationTrust(config);
  if (!trust.ok()) return trust.status();
  CaRotationStatus status;
  status.phase = trust->phase;
  const std::vector<std::string>& fingerprints = trust->bundle.Fingerprints();
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
      NewOrGivenCa(config.federation, options.ca_certificate, options.ca_key, options.validity);
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
  absl::StatusOr<FederationTrust> trust =
      StartStep(config, CaRotationPhase::kNewCaTrusted, "switch to the new CA",
                "do not hold the new CA yet", force, now);
  if (!trust.ok()) return trust.status();
  if (absl::Status status = CompleteCoordinatorKeySwaps(dir); !status.ok()) return status;
  absl::StatusOr<pki::CertificateAuthority> next =
      LoadCaFiles(dir.next_ca_certificate(), dir.next_ca_key(), config.federation);
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
  LogEvent(LogLevel::kInfo, "ca_rotation_switched").Field("issuing_ca_fingerprint", fingerprint);
  return fingerprint;
}

absl::StatusOr<std::string> RetireCa(const CoordinatorConfig& config, bool force, absl::Time now) {
  absl::StatusOr<FederationTrust> trust =
      StartStep(config, CaRotationPhase::kNewCaIssuing, "retire the old CA",
                "still use a certificate from the old CA", force, now);
  if (!trust.ok()) return trust.status();
  const std::string retired = trust->bundle.Fingerprints()[1];
  if (absl::Status status = RemoveDurably(config.state_dir.previous_ca_certificate());
      !status.ok()) {
    return status;
  }
  LogEvent(LogLevel::kInfo, "ca_rotation_retired").Field("retired_ca_fingerprint", retired);
  return retired;
}

}  // namespace fedmoe::coordinator
