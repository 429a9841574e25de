// What every stip daemon's gRPC server has: TLS credentials, message size
// limits, the standard health service and server reflection.
#pragma once

#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>

#include <memory>
#include <string>
#include <vector>

#include "common/rpc/tls.h"

namespace stip {

struct ServerSetup {
  std::string address;  // host:port (port 0: pick a free port)
  TlsOptions tls;
  std::string name;     // for logs
};

// Registers `services`, enables health checking (SERVING for "" and for each
// of `service_names`, e.g. stip.v1.Inference) and reflection, and starts the
// server. Returns the server; `*bound_port` gets the port actually bound.
std::unique_ptr<grpc::Server> StartServer(const ServerSetup& setup,
                                          const std::vector<grpc::Service*>& services,
                                          int* bound_port,
                                          const std::vector<std::string>& service_names = {});

}  // namespace stip
