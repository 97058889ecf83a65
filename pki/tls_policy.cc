#include "pki/tls_policy.h"

#include <cstdlib>

namespace fedmoe::pki {

void RequireTls13ForGrpc() { ::setenv("GRPC_SSL_CIPHER_SUITES", "PSK-AES256-GCM-SHA384", 1); }

}  // namespace fedmoe::pki
