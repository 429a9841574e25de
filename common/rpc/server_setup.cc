#include "common/rpc/server_setup.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <spdlog/spdlog.h>

#include "common/error.h"

namespace stip {

std::unique_ptr<grpc::Server> StartServer(const ServerSetup& setup,
                                          const std::vector<grpc::Service*>& services,
                                          int* bound_port,
                                          const std::vector<std::string>& service_names) {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(setup.address, MakeServerCredentials(setup.tls, setup.name), &port);
  builder.SetMaxReceiveMessageSize(kMaxMessageBytes);
  builder.SetMaxSendMessageSize(kMaxMessageBytes);
  for (grpc::Service* s : services) builder.RegisterService(s);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) {
    throw FailedPrecondition(setup.name + ": cannot listen on " + setup.address);
  }
  if (auto* health = server->GetHealthCheckService()) {
    health->SetServingStatus("", true);
    for (const std::string& name : service_names) health->SetServingStatus(name, true);
  }
  if (bound_port) *bound_port = port;
  return server;
}

}  // namespace stip
