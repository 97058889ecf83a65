#include "pki/tls_policy.h"

#include <openssl/crypto.h>

#include <cstdlib>

namespace fedmoe::pki {

void RequireTls13ForGrpc() { ::setenv("GRPC_SSL_CIPHER_SUITES", "PSK-AES256-GCM-SHA384", 1); }

void LeaveOpenSslCleanupToProcessExit() { OPENSSL_init_crypto(OPENSSL_INIT_NO_ATEXIT, nullptr); }

}  // namespace fedmoe::pki
