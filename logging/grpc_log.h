// gRPC's own log lines (a failed TLS handshake, a failed accept) as JSON events in the
// program's log, instead of gRPC's plain text on stderr: event "grpc", with its severity, its
// source location and the message made printable. A peer can make gRPC log once per
// connection, so each source location is logged at most once per 10 seconds, with the number
// of lines not logged since (logging/log_throttle.h).
#ifndef FEDMOE_LOGGING_GRPC_LOG_H_
#define FEDMOE_LOGGING_GRPC_LOG_H_

namespace fedmoe {

// Installs the route; call once, before the first gRPC object is created.
void RouteGrpcLogsToJson();

}  // namespace fedmoe

#endif  // FEDMOE_LOGGING_GRPC_LOG_H_
