// How the fuzz targets with structured inputs read their bytes, shared with the seed writer
// (make_seeds.cc): a seed keeps meaning what it was written to mean when the layout changes.
#ifndef FEDMOE_TESTS_FUZZ_INPUT_LAYOUT_H_
#define FEDMOE_TESTS_FUZZ_INPUT_LAYOUT_H_

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>

#include "privacy/ring_encoder.h"

namespace fedmoe::fuzz {

// coordinator_requests: byte 0 is the method (modulo kRequestMethods), byte 1 the identity
// (modulo kRequestIdentities), the rest the request.
enum class RequestMethod : uint8_t {
  kEnroll,
  kRenew,
  kCreateEnrollmentToken,
  kListEnrollmentTokens,
  kRevokeEnrollmentToken,
  kListClients,
  kRevokeClient,
  kGetStatus,
  kListRounds,
  kGetPrivacyLedger,
  kAddAdmin,
  kListAdmins,
  kRevokeAdmin,
  kPollTask,
  kAdvertiseKeys,
  kShareKeys,
  kUnmask,
  kGetModelManifest,
  kDownloadModel,
  kUploadMaskedInput,
  kGetRoundStatus,
};
inline constexpr int kRequestMethods = static_cast<int>(RequestMethod::kGetRoundStatus) + 1;
// Identity 0 is the operator's admin certificate, 1 to kRequestClients the enrolled clients,
// and the last a peer that presents no certificate.
inline constexpr int kRequestClients = 3;
inline constexpr int kAdminIdentity = 0;
inline constexpr int kNoCertificateIdentity = kRequestClients + 1;
inline constexpr int kRequestIdentities = kRequestClients + 2;

// ring_decode: dimension, ring bits, log2 γ and clip norm (a byte each), the 32-byte rotation
// seed, then the packed values.
inline constexpr size_t kRingHeaderBytes = 4 + 32;

struct RingDecodeHeader {
  size_t dimension = 0;
  privacy::RingEncoding encoding;
};

inline RingDecodeHeader ReadRingHeader(std::span<const uint8_t, kRingHeaderBytes> header) {
  RingDecodeHeader read;
  read.dimension = 1 + header[0] % 300;
  read.encoding.ring_bits = 16 + header[1] % 47;
  read.encoding.scale = std::ldexp(1.0, static_cast<int>(header[2] % 48) - 8);
  read.encoding.clip_norm = 1.0 + header[3] / 16.0;
  read.encoding.rotation_seed.assign(reinterpret_cast<const char*>(header.data() + 4), 32);
  return read;
}

}  // namespace fedmoe::fuzz

#endif  // FEDMOE_TESTS_FUZZ_INPUT_LAYOUT_H_
