#include "client/coordinator_channel.h"

#include <google/protobuf/util/time_util.h>

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace fedmoe::client {

absl::StatusOr<CoordinatorChannel> DialCoordinator(const ClientConfig& config,
                                                   bool own_connection) {
  const ClientStateDir& dir = config.state_dir;
  absl::StatusOr<pki::TrustBundle> trust =
      pki::TrustBundle::ReadFile(dir.ca_certificate(), config.federation);
  if (!trust.ok()) return trust.status();
  absl::StatusOr<pki::Certificate> certificate = pki::Certificate::ReadFile(dir.certificate());
  if (!certificate.ok()) return certificate.status();
  absl::StatusOr<pki::PrivateKey> key = pki::PrivateKey::ReadFile(dir.key());
  if (!key.ok()) return key.status();
  absl::StatusOr<std::string> key_pem = key->ToPem();
  if (!key_pem.ok()) return key_pem.status();
  if (certificate->PublicKeyDer() != *key->PublicKeyDer()) {
    return absl::FailedPreconditionError(absl::StrCat(
        dir.certificate().string(), " does not belong to the key in ", dir.key().string()));
  }
  grpc::SslCredentialsOptions tls;
  tls.pem_root_certs = trust->ToPem();
  tls.pem_private_key = *key_pem;
  tls.pem_cert_chain = certificate->ToPem();
  grpc::ChannelArguments arguments;
  // Pings keep NAT and proxy entries alive while a long poll is open.
  arguments.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 30'000);
  arguments.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10'000);
  arguments.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 0);
  // gRPC's own reconnect backoff (up to 120 s by default) would otherwise outlast ours after a
  // coordinator restart; bound it by the configured backoff. (GRPC_ARG_MIN_RECONNECT_BACKOFF_MS
  // is left alone: gRPC also uses it as the connect-and-handshake timeout.)
  arguments.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS,
                   static_cast<int>(absl::ToInt64Milliseconds(config.backoff_initial)));
  arguments.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS,
                   static_cast<int>(absl::ToInt64Milliseconds(config.backoff_max)));
  if (own_connection) arguments.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return CoordinatorChannel{
      grpc::CreateCustomChannel(config.coordinator, grpc::SslCredentials(tls), arguments),
      *std::move(certificate), *std::move(key), *std::move(trust)};
}

absl::StatusOr<std::optional<pki::TrustBundle>> ReceivedTrustBundle(
    const google::protobuf::RepeatedPtrField<std::string>& ders, const pki::Certificate& issued,
    const std::string& federation) {
  if (ders.empty()) return std::nullopt;
  if (ders.size() > kMaxTrustedCas) {
    return absl::InvalidArgumentError(absl::StrCat("the coordinator sent ", ders.size(),
                                                   " CA certificates to trust; at most ",
                                                   kMaxTrustedCas, " are accepted"));
  }
  absl::StatusOr<pki::TrustBundle> bundle =
      pki::TrustBundle::FromDer(std::vector<std::string>(ders.begin(), ders.end()), federation);
  if (!bundle.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("the coordinator's trust bundle: ", bundle.status().message()));
  }
  if (absl::StatusOr<pki::SpiffeId> id = bundle->Verify(issued, pki::Purpose::kClient); !id.ok()) {
    return absl::PermissionDeniedError(
        absl::StrCat("the issued certificate is not valid under the coordinator's trust bundle: ",
                     id.status().message()));
  }
  return std::optional<pki::TrustBundle>(*std::move(bundle));
}

absl::Duration NextPollDelay(const v1::Idle& idle, std::mt19937_64& jitter) {
  const absl::Duration retry =
      std::min(absl::Nanoseconds(
                   google::protobuf::util::TimeUtil::DurationToNanoseconds(idle.retry_after())),
               absl::Minutes(10));
  if (retry <= absl::ZeroDuration()) return absl::ZeroDuration();
  return retry * std::uniform_real_distribution<double>(0.5, 1.5)(jitter);
}

}  // namespace fedmoe::client
