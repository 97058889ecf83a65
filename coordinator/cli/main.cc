// fedmoe-coordinator: the federation's operator CLI and server.
//
// Exit status: 0 success, 1 the operation failed (the message says why), 2 bad usage.
#include <cstdio>

#include "config/command_line.h"
#include "coordinator/cli/commands.h"
#include "logging/grpc_log.h"
#include "pki/tls_policy.h"

namespace fedmoe::coordinator::cli {
namespace {

constexpr char kUsage[] = R"(usage: fedmoe-coordinator COMMAND [FLAGS]

  init --federation NAME --state-dir DIR [--san HOST ...] [--listen HOST:PORT]
       [--enroll-listen HOST:PORT] [--advertise HOST:PORT] [--ca-cert PEM --ca-key PEM]
      Create a federation: CA, server and admin certificates, store, coordinator.yaml. With
      --ca-cert and --ca-key, an existing federation CA is used instead of a new one.
  serve --config FILE
      Run the coordinator until SIGTERM or SIGINT; SIGHUP re-reads log_level.
  certificates renew --state-dir DIR [--san HOST ...]
      Issue the server and admin certificates again (new keys, full lifetimes) from the
      federation CA; the server's names stay unless --san is given. Restart to serve it.
  ca status --state-dir DIR [--json]
  ca begin --state-dir DIR [--ca-cert PEM --ca-key PEM] [--validity 87600h]
  ca switch --state-dir DIR [--force]
  ca retire --state-dir DIR [--force]
      Rotate the federation CA in three steps, each followed by a restart: begin trusts a new
      CA beside the old one; switch makes it issue once every client holds it; retire drops
      the old CA once every client uses a certificate from the new one. switch and retire
      name the clients that have not moved and refuse, unless --force cuts them off.
  backup --state-dir DIR --out NEW_DIR
      Copy the state directory (store snapshot, CA and keys, config, model versions) into
      NEW_DIR, consistently, while the coordinator runs or not.
  restore --backup DIR --state-dir NEW_DIR
      Restore a backup into NEW_DIR and point its coordinator.yaml there; then serve it.
  --check-config FILE
      Validate a coordinator.yaml without starting anything: prints "FILE: ok", or each
      problem as FILE:LINE: KEY: what is wrong, and exits 1.
  token create --client-id ID [--ttl 24h] [--json]
      Create a one-time enrollment token; prints it and the CA fingerprint to pin.
  token list [--json]
  token revoke TOKEN_ID
  clients list [--all] [--json]
  clients revoke CLIENT_ID [--reason TEXT]
  admins add NAME --out DIR
      Issue an admin certificate for another operator: a new key, the certificate, the CAs to
      trust and the coordinator's address go to DIR (the key 0600). That operator runs admin
      commands with --admin-dir DIR.
  admins list [--json]
  admins revoke NAME [--reason TEXT]
      Refuse every certificate of operator NAME from its next call on, for good. An admin
      cannot revoke itself.
  status [--json]
  rounds list [--limit N] [--json]
      Rounds, newest first: stage, cohort, survivors, duration, ε after.
  privacy report [--json]
      The privacy ledger: each committed round's mechanism, noise and ε after, and the total.
  privacy epsilon --noise-multiplier Z --sampling-rate Q --rounds R --delta D
      Print {"epsilon":…, "order":…}: the (ε, δ) of R rounds of the Poisson-subsampled
      Gaussian mechanism, by RDP accounting. Needs no running coordinator.
  privacy noise --target-epsilon E --sampling-rate Q --rounds R --delta D
      Print {"noise_multiplier":…}: the smallest Z that keeps R rounds within ε = E.
      Both take --mode distributed|central --clients N --values V to price the rounds as the
      ledger will: N clients, all surviving, updates of V values (the update_values of a
      round_started log line), and [--mechanism discrete_gaussian|skellam] [--ring-bits B]
      [--clip-norm C] [--rounding-beta BETA] as in the coordinator's config (its defaults).
      With --config FILE (a coordinator.yaml), every setting comes from that federation's
      config, the update's values from its initial model, so that the answer is what its
      ledger will say after R rounds of N clients; flags still override.

Admin commands talk to the running coordinator over mTLS with an admin certificate. They find
it with --state-dir DIR (on the coordinator's host), or --config FILE, or --admin-dir DIR (from
`admins add`), and --coordinator HOST:PORT overrides the address.
)";

int Main(int argc, char** argv) {
  pki::LeaveOpenSslCleanupToProcessExit();
  pki::RequireTls13ForGrpc();
  RouteGrpcLogsToJson();
  return config::RunSubcommands("fedmoe-coordinator", kUsage, argc, argv,
                                {{"init", Init},
                                 {"serve", Serve},
                                 {"--check-config", CheckConfig},
                                 {"certificates", CertificatesCommand},
                                 {"ca", CaCommand},
                                 {"backup", Backup},
                                 {"restore", Restore},
                                 {"token", TokenCommand},
                                 {"clients", ClientsCommand},
                                 {"admins", AdminsCommand},
                                 {"status", Status},
                                 {"rounds", RoundsCommand},
                                 {"privacy", PrivacyCommand}});
}

}  // namespace
}  // namespace fedmoe::coordinator::cli

int main(int argc, char** argv) { return fedmoe::coordinator::cli::Main(argc, argv); }
