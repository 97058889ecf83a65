// fedmoe-coordinator certificates, ca, token, clients and admins: who belongs to the
// federation.
#include <grpcpp/grpcpp.h>

#include <cstdio>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "config/command_line.h"
#include "coordinator/cli/commands.h"
#include "coordinator/config.h"
#include "coordinator/identity/ca_rotation.h"
#include "coordinator/service/admin_channel.h"
#include "fedmoe/v1/admin.grpc.pb.h"
#include "logging/log.h"
#include "pki/certificate.h"
#include "pki/private_key.h"
#include "storage/file_status.h"

namespace fedmoe::coordinator::cli {
namespace {

void PrintCaRotationStatus(const CaRotationStatus& status, bool json) {
  if (json) {
    std::printf(
        "{\"phase\":\"%s\",\"issuing_ca\":\"%s\",\"other_ca\":\"%s\","
        "\"clients_not_moved\":[%s]}\n",
        std::string(CaRotationPhaseName(status.phase)).c_str(), status.issuer_fingerprint.c_str(),
        status.other_fingerprint.c_str(),
        absl::StrJoin(status.clients_not_moved, ",", [](std::string* out, const std::string& id) {
          absl::StrAppend(out, "\"", id, "\"");
        }).c_str());
    return;
  }
  std::printf("phase: %s\nissuing CA: %s\n", std::string(CaRotationPhaseName(status.phase)).c_str(),
              status.issuer_fingerprint.c_str());
  switch (status.phase) {
    case CaRotationPhase::kNone:
      std::printf("no CA rotation in progress\n");
      return;
    case CaRotationPhase::kNewCaTrusted:
      std::printf("new CA (trusted, not issuing yet): %s\n", status.other_fingerprint.c_str());
      break;
    case CaRotationPhase::kNewCaIssuing:
      std::printf("old CA (still trusted): %s\n", status.other_fingerprint.c_str());
      break;
  }
  if (status.clients_not_moved.empty()) {
    std::printf("every client has moved; the next step may run\n");
  } else {
    std::printf("clients not moved yet (%zu): %s\n", status.clients_not_moved.size(),
                absl::StrJoin(status.clients_not_moved, ", ").c_str());
  }
}

// Where the new operator should dial: --coordinator, else the address this command used, else
// the endpoint the coordinator advertises to clients.
absl::StatusOr<std::string> AdminAddress(const CommandLine& flags) {
  if (auto address = flags.Get("coordinator")) return *address;
  if (auto admin_dir = flags.Get("admin-dir"))
    return ReadAdminAddress(AdminCredentials{*admin_dir});
  absl::StatusOr<CoordinatorConfig> config =
      ConfigFromFlags(flags, "admins add needs --state-dir DIR, --config FILE or --admin-dir DIR");
  if (!config.ok()) return config.status();
  return config->advertised_endpoint();
}

void PrintAdmins(const v1::ListAdminsResponse& admins) {
  std::printf("%-24s  %-8s  %-20s  %-16s  %s\n", "ADMIN", "STATE", "LAST SEEN", "ADDED BY",
              "REVOKED BY");
  for (const v1::AdminInfo& admin : admins.admins()) {
    std::printf("%-24s  %-8s  %-20s  %-16s  %s\n", admin.name().c_str(),
                admin.revoked() ? "revoked" : "active", Time(admin.last_seen_at()).c_str(),
                admin.added_by().empty() ? "-" : admin.added_by().c_str(),
                admin.revoked_by().empty() ? "-" : admin.revoked_by().c_str());
  }
  std::printf("%d admin(s)\n", admins.admins_size());
}

// `admins add`: the new operator's key never leaves this host, and the directory it gets is
// all it needs to dial the coordinator.
int AddAdmin(const CommandLine& flags, v1::Admin::Stub& stub) {
  if (flags.positional().size() != 1) {
    return Fail(absl::InvalidArgumentError("admins add needs exactly one NAME"));
  }
  absl::StatusOr<std::string> out = flags.Require("out");
  if (!out.ok()) return Fail(out.status());
  const AdminCredentials credentials{*out};
  if (storage::PathExists(credentials.key())) {
    return Fail(absl::AlreadyExistsError(
        absl::StrCat(credentials.key().string(), " exists; choose a new --out directory")));
  }
  const std::string& name = flags.positional()[0];
  absl::StatusOr<pki::PrivateKey> key = pki::PrivateKey::GenerateP256();
  if (!key.ok()) return Fail(key.status());
  absl::StatusOr<std::string> csr = pki::MakeCsr(*key, name);
  if (!csr.ok()) return Fail(csr.status());
  v1::AddAdminRequest request;
  request.set_name(name);
  request.set_csr_der(*csr);
  v1::AddAdminResponse response;
  auto context = AdminContext();
  if (grpc::Status status = stub.AddAdmin(context.get(), request, &response); !status.ok()) {
    return Fail(status);
  }
  absl::StatusOr<pki::Certificate> certificate =
      pki::Certificate::FromDer(response.certificate().certificate_der());
  if (!certificate.ok()) return Fail(certificate.status());
  std::vector<std::string> trusted(response.trusted_ca_certificates_der().begin(),
                                   response.trusted_ca_certificates_der().end());
  absl::StatusOr<pki::SpiffeId> id = certificate->Identity();
  if (!id.ok()) return Fail(id.status());
  absl::StatusOr<pki::TrustBundle> trust = pki::TrustBundle::FromDer(trusted, id->federation);
  if (!trust.ok()) return Fail(trust.status());
  absl::StatusOr<std::string> address = AdminAddress(flags);
  if (!address.ok()) return Fail(address.status());
  if (absl::Status status =
          WriteAdminCredentials(credentials, *key, *certificate, *trust, *address);
      !status.ok()) {
    return Fail(status);
  }
  std::printf(
      "admin '%s' added: serial %s, expires %s\n"
      "its key, certificate, trusted CAs and the coordinator's address are in %s; it runs admin "
      "commands with --admin-dir %s\n",
      name.c_str(), certificate->SerialHex().c_str(),
      absl::FormatTime(certificate->NotAfter()).c_str(), out->c_str(), out->c_str());
  return 0;
}

}  // namespace

int CertificatesCommand(const std::vector<std::string>& args) {
  if (args.empty() || args[0] != "renew") {
    return Fail(absl::InvalidArgumentError("certificates needs renew"));
  }
  const std::vector<std::string> rest(args.begin() + 1, args.end());
  auto flags = CommandLine::Parse(rest, {"state-dir", "config", "san"}, {});
  if (!flags.ok()) return Fail(flags.status());
  absl::StatusOr<CoordinatorConfig> config =
      ConfigFromFlags(*flags, "certificates renew needs --state-dir DIR");
  if (!config.ok()) return Fail(config.status());
  absl::StatusOr<RenewedCertificates> renewed =
      RenewCoordinatorCertificates(*config, flags->GetAll("san"));
  if (!renewed.ok()) return Fail(renewed.status());
  std::printf(
      "server certificate: serial %s for %s, expires %s\n"
      "admin certificate:  serial %s, expires %s\n"
      "the admin commands use the new admin certificate now; restart the coordinator to serve "
      "the new server certificate\n",
      renewed->server.SerialHex().c_str(),
      absl::StrJoin(renewed->server.ServerHosts(), ", ").c_str(),
      absl::FormatTime(renewed->server.NotAfter()).c_str(), renewed->admin.SerialHex().c_str(),
      absl::FormatTime(renewed->admin.NotAfter()).c_str());
  return 0;
}

int CaCommand(const std::vector<std::string>& args) {
  const std::string verb = args.empty() ? "" : args[0];
  const std::vector<std::string> rest(args.begin() + (args.empty() ? 0 : 1), args.end());
  auto flags = CommandLine::Parse(rest, {"state-dir", "config", "ca-cert", "ca-key", "validity"},
                                  {"force", "json"});
  if (!flags.ok()) return Fail(flags.status());
  if (verb != "status" && verb != "begin" && verb != "switch" && verb != "retire") {
    return Fail(absl::InvalidArgumentError("ca needs status, begin, switch or retire"));
  }
  absl::StatusOr<CoordinatorConfig> config =
      ConfigFromFlags(*flags, absl::StrCat("ca ", verb, " needs --state-dir DIR"));
  if (!config.ok()) return Fail(config.status());
  constexpr char kRestart[] =
      "restart the coordinator to apply it; clients follow at their next poll";
  if (verb == "begin") {
    BeginCaRotationOptions options;
    options.ca_certificate = flags->GetOr("ca-cert", "");
    options.ca_key = flags->GetOr("ca-key", "");
    if (!absl::ParseDuration(flags->GetOr("validity", "87600h"), &options.validity) ||
        options.validity <= absl::ZeroDuration()) {
      return Fail(
          absl::InvalidArgumentError("--validity must be a positive duration, e.g. 87600h"));
    }
    absl::StatusOr<std::string> fingerprint = BeginCaRotation(*config, options);
    if (!fingerprint.ok()) return Fail(fingerprint.status());
    std::printf("new CA %s is trusted beside the old one, which still issues; %s\n",
                fingerprint->c_str(), kRestart);
  } else if (verb == "switch") {
    absl::StatusOr<std::string> fingerprint = SwitchCa(*config, flags->Has("force"));
    if (!fingerprint.ok()) return Fail(fingerprint.status());
    std::printf(
        "CA %s issues now (server and admin certificates re-issued from it, the old "
        "CA's key destroyed); %s\n",
        fingerprint->c_str(), kRestart);
  } else if (verb == "retire") {
    absl::StatusOr<std::string> fingerprint = RetireCa(*config, flags->Has("force"));
    if (!fingerprint.ok()) return Fail(fingerprint.status());
    std::printf("old CA %s is no longer trusted; %s\n", fingerprint->c_str(), kRestart);
  } else {
    absl::StatusOr<CaRotationStatus> status = GetCaRotationStatus(*config);
    if (!status.ok()) return Fail(status.status());
    PrintCaRotationStatus(*status, flags->Has("json"));
  }
  return 0;
}

int TokenCommand(const std::vector<std::string>& args) {
  if (args.empty()) return Fail(absl::InvalidArgumentError("token needs create, list or revoke"));
  const std::string& verb = args[0];
  const std::vector<std::string> rest(args.begin() + 1, args.end());
  auto flags = CommandLine::Parse(
      rest, {"client-id", "ttl", "state-dir", "config", "admin-dir", "coordinator"}, {"json"});
  if (!flags.ok()) return Fail(flags.status());
  auto stub = DialAdmin(*flags);
  if (!stub.ok()) return Fail(stub.status());
  const bool json = flags->Has("json");

  if (verb == "create") {
    auto client_id = flags->Require("client-id");
    if (!client_id.ok()) return Fail(client_id.status());
    absl::Duration ttl = absl::Hours(24);
    if (!absl::ParseDuration(flags->GetOr("ttl", "24h"), &ttl)) {
      return Fail(absl::InvalidArgumentError("--ttl must be a duration such as 24h or 90m"));
    }
    v1::CreateEnrollmentTokenRequest request;
    request.set_client_id(*client_id);
    request.mutable_ttl()->set_seconds(absl::ToInt64Seconds(ttl));
    v1::CreateEnrollmentTokenResponse response;
    auto context = AdminContext();
    if (grpc::Status status = (*stub)->CreateEnrollmentToken(context.get(), request, &response);
        !status.ok()) {
      return Fail(status);
    }
    if (json) {
      std::string out = "{\"token\":\"";
      AppendJsonEscaped(response.token(), out);
      out += "\",\"token_id\":\"" + response.token_id() + "\",\"client_id\":\"";
      AppendJsonEscaped(response.client_id(), out);
      out += "\",\"ca_fingerprint\":\"" + response.ca_fingerprint_sha256() +
             "\",\"expires_at\":\"" + Time(response.expires_at()) + "\"}";
      std::printf("%s\n", out.c_str());
    } else {
      std::printf(
          "enrollment token for client '%s' (expires %s):\n\n  %s\n\nCA fingerprint (SHA-256):"
          "\n\n  %s\n\nGive both to the organisation out of band; on their host:\n"
          "  fedmoe-client enroll --coordinator HOST:PORT --token TOKEN --ca-fingerprint "
          "FINGERPRINT --state-dir DIR\n",
          response.client_id().c_str(), Time(response.expires_at()).c_str(),
          response.token().c_str(), response.ca_fingerprint_sha256().c_str());
    }
    return 0;
  }
  if (verb == "list") {
    v1::ListEnrollmentTokensRequest request;
    v1::ListEnrollmentTokensResponse response;
    auto context = AdminContext();
    if (grpc::Status status = (*stub)->ListEnrollmentTokens(context.get(), request, &response);
        !status.ok()) {
      return Fail(status);
    }
    if (json) {
      std::printf("%s\n", Json(response).c_str());
      return 0;
    }
    std::printf("%-16s  %-24s  %-8s  %s\n", "TOKEN ID", "CLIENT", "STATE", "EXPIRES");
    for (const auto& token : response.tokens()) {
      std::string state = v1::EnrollmentTokenInfo::State_Name(token.state()).substr(6);
      std::printf("%-16s  %-24s  %-8s  %s\n", token.token_id().c_str(), token.client_id().c_str(),
                  absl::AsciiStrToLower(state).c_str(), Time(token.expires_at()).c_str());
    }
    return 0;
  }
  if (verb == "revoke") {
    if (flags->positional().size() != 1) {
      return Fail(absl::InvalidArgumentError("token revoke needs exactly one TOKEN_ID"));
    }
    v1::RevokeEnrollmentTokenRequest request;
    request.set_token_id(flags->positional()[0]);
    v1::RevokeEnrollmentTokenResponse response;
    auto context = AdminContext();
    if (grpc::Status status = (*stub)->RevokeEnrollmentToken(context.get(), request, &response);
        !status.ok()) {
      return Fail(status);
    }
    std::printf("token %s revoked\n", response.token().token_id().c_str());
    return 0;
  }
  return Fail(absl::InvalidArgumentError(absl::StrCat("unknown token command '", verb, "'")));
}

int ClientsCommand(const std::vector<std::string>& args) {
  if (args.empty()) return Fail(absl::InvalidArgumentError("clients needs list or revoke"));
  const std::string& verb = args[0];
  const std::vector<std::string> rest(args.begin() + 1, args.end());
  auto flags = CommandLine::Parse(
      rest, {"reason", "state-dir", "config", "admin-dir", "coordinator"}, {"json", "all"});
  if (!flags.ok()) return Fail(flags.status());
  auto stub = DialAdmin(*flags);
  if (!stub.ok()) return Fail(stub.status());

  if (verb == "list") {
    v1::ListClientsResponse all;
    v1::ListClientsRequest request;
    request.set_include_revoked(flags->Has("all"));
    do {
      v1::ListClientsResponse page;
      auto context = AdminContext();
      if (grpc::Status status = (*stub)->ListClients(context.get(), request, &page); !status.ok()) {
        return Fail(status);
      }
      all.mutable_clients()->MergeFrom(page.clients());
      request.mutable_page()->set_page_token(page.page().next_page_token());
    } while (!request.page().page_token().empty());
    if (flags->Has("json")) {
      std::printf("%s\n", Json(all).c_str());
      return 0;
    }
    std::printf("%-24s  %-8s  %-7s  %-20s  %-20s  %s\n", "CLIENT", "STATE", "ONLINE", "LAST SEEN",
                "CERT EXPIRES", "ROUNDS");
    for (const auto& client : all.clients()) {
      std::printf("%-24s  %-8s  %-7s  %-20s  %-20s  %llu\n", client.client_id().c_str(),
                  client.state() == v1::ClientInfo::STATE_REVOKED ? "revoked" : "active",
                  client.online() ? "yes" : "no", Time(client.last_seen_at()).c_str(),
                  Time(client.certificate_not_after()).c_str(),
                  static_cast<unsigned long long>(client.rounds_participated()));
    }
    std::printf("%d client(s)\n", all.clients_size());
    return 0;
  }
  if (verb == "revoke") {
    if (flags->positional().size() != 1) {
      return Fail(absl::InvalidArgumentError("clients revoke needs exactly one CLIENT_ID"));
    }
    v1::RevokeClientRequest request;
    request.set_client_id(flags->positional()[0]);
    request.set_reason(flags->GetOr("reason", ""));
    v1::RevokeClientResponse response;
    auto context = AdminContext();
    if (grpc::Status status = (*stub)->RevokeClient(context.get(), request, &response);
        !status.ok()) {
      return Fail(status);
    }
    std::printf("client '%s' revoked at %s; its next call is refused\n",
                response.client().client_id().c_str(),
                Time(response.client().revoked_at()).c_str());
    return 0;
  }
  return Fail(absl::InvalidArgumentError(absl::StrCat("unknown clients command '", verb, "'")));
}

int AdminsCommand(const std::vector<std::string>& args) {
  if (args.empty()) return Fail(absl::InvalidArgumentError("admins needs add, list or revoke"));
  const std::string& verb = args[0];
  const std::vector<std::string> rest(args.begin() + 1, args.end());
  auto flags = CommandLine::Parse(
      rest, {"reason", "out", "state-dir", "config", "admin-dir", "coordinator"}, {"json"});
  if (!flags.ok()) return Fail(flags.status());
  auto stub = DialAdmin(*flags);
  if (!stub.ok()) return Fail(stub.status());
  if (verb == "add") return AddAdmin(*flags, **stub);
  if (verb == "list") {
    v1::ListAdminsResponse response;
    auto context = AdminContext();
    if (grpc::Status status = (*stub)->ListAdmins(context.get(), {}, &response); !status.ok()) {
      return Fail(status);
    }
    if (flags->Has("json")) {
      std::printf("%s\n", Json(response).c_str());
    } else {
      PrintAdmins(response);
    }
    return 0;
  }
  if (verb == "revoke") {
    if (flags->positional().size() != 1) {
      return Fail(absl::InvalidArgumentError("admins revoke needs exactly one NAME"));
    }
    v1::RevokeAdminRequest request;
    request.set_name(flags->positional()[0]);
    request.set_reason(flags->GetOr("reason", ""));
    v1::RevokeAdminResponse response;
    auto context = AdminContext();
    if (grpc::Status status = (*stub)->RevokeAdmin(context.get(), request, &response);
        !status.ok()) {
      return Fail(status);
    }
    std::printf("admin '%s' revoked at %s; its next call is refused\n",
                response.admin().name().c_str(), Time(response.admin().revoked_at()).c_str());
    return 0;
  }
  return Fail(absl::InvalidArgumentError(absl::StrCat("unknown admins command '", verb, "'")));
}

}  // namespace fedmoe::coordinator::cli
