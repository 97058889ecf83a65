// Rotating a federation's CA without a new federation: the model history, the privacy ledger
// and every client's enrollment carry over. A rotation has three steps, each an offline
// command on the state directory followed by a coordinator restart:
//
//   begin   a new CA (made here, or from an offline ceremony) is trusted beside the old one,
//           which still issues. Clients fetch the two-CA bundle when their next poll answer
//           announces a bundle digest other than their own (they renew to get it).
//   switch  once every client that can still call holds the new CA, the new CA issues: the
//           server and admin certificates are re-issued from it, the old CA's key is
//           destroyed, and clients renew onto the new CA. The old CA stays trusted.
//   retire  once every such client uses a certificate from the new CA, the old CA is no
//           longer trusted anywhere, and clients drop it from their bundles.
//
// Each step refuses, naming the clients that have not moved, unless forced: a forced switch
// strands clients without the new CA (they cannot verify the server and must enroll again),
// and a forced retire refuses clients still on an old certificate.
#ifndef FEDMOE_COORDINATOR_IDENTITY_CA_ROTATION_H_
#define FEDMOE_COORDINATOR_IDENTITY_CA_ROTATION_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "coordinator/config.h"
#include "pki/certificate_authority.h"
#include "pki/trust_bundle.h"

namespace fedmoe::coordinator {

enum class CaRotationPhase {
  // One CA, which issues.
  kNone,
  // After begin: the old CA issues, the new one is trusted too.
  kNewCaTrusted,
  // After switch: the new CA issues, the old one is trusted too.
  kNewCaIssuing,
};

std::string_view CaRotationPhaseName(CaRotationPhase phase);

// What the coordinator trusts and issues with.
struct FederationTrust {
  pki::CertificateAuthority issuer;
  // The issuer first, then the other CA of a rotation's overlap.
  pki::TrustBundle bundle;
  CaRotationPhase phase = CaRotationPhase::kNone;
};

// The CAs the state directory trusts, issuer first; reads no key and changes nothing (the
// admin commands use it to verify the coordinator).
absl::StatusOr<pki::TrustBundle> LoadTrustedCas(const CoordinatorConfig& config);

// The federation CA and trust bundle of the state directory. Finishes a switch that a crash
// interrupted before reading anything.
absl::StatusOr<FederationTrust> LoadFederationTrust(const CoordinatorConfig& config);

struct CaRotationStatus {
  CaRotationPhase phase = CaRotationPhase::kNone;
  // Fingerprints: the issuing CA, and the other trusted CA of a rotation (empty without one).
  std::string issuer_fingerprint;
  std::string other_fingerprint;
  // Clients that hold back the next step (empty outside a rotation).
  std::vector<std::string> clients_not_moved;
};

absl::StatusOr<CaRotationStatus> GetCaRotationStatus(const CoordinatorConfig& config,
                                                     absl::Time now = absl::Now());

struct BeginCaRotationOptions {
  // An existing CA to rotate to (an offline ceremony): PEM files, both or neither. Without
  // them a new CA is made, valid for `validity`.
  std::filesystem::path ca_certificate;
  std::filesystem::path ca_key;
  absl::Duration validity = absl::Hours(24 * 3650);
};

// kNone → kNewCaTrusted. Returns the new CA's fingerprint.
absl::StatusOr<std::string> BeginCaRotation(const CoordinatorConfig& config,
                                            const BeginCaRotationOptions& options);

// kNewCaTrusted → kNewCaIssuing. FailedPrecondition naming the clients without the new CA,
// unless `force`. Returns the new CA's fingerprint.
absl::StatusOr<std::string> SwitchCa(const CoordinatorConfig& config, bool force,
                                     absl::Time now = absl::Now());

// kNewCaIssuing → kNone. FailedPrecondition naming the clients still on the old CA's
// certificates, unless `force`. Returns the retired CA's fingerprint.
absl::StatusOr<std::string> RetireCa(const CoordinatorConfig& config, bool force,
                                     absl::Time now = absl::Now());

}  // namespace fedmoe::coordinator

#endif  // FEDMOE_COORDINATOR_IDENTITY_CA_ROTATION_H_
