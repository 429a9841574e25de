// The whole daemon in one object (used by main.cc and by the tests): the
// model store, the ModelStore and Inference services, and two gRPC servers
// with TLS, health checking and reflection: the public one (Inference, for
// clients; TLS without client certificates unless tls.require_client_cert)
// and the admin one (ModelStore, for the developer; mutual TLS with
// certificates of admin.ca_file). Without admin.listen the store cannot be
// changed remotely.
#pragma once

#include <grpcpp/server.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "common/rpc/tls.h"
#include "server/inference_service.h"
#include "server/model_store.h"

namespace stip {

class ModelStoreService;

struct AdminOptions {
  std::string listen;   // host:port of the ModelStore ("" = not served; port 0: pick one)
  std::string ca_file;  // CA of the developer's client certificate (required with TLS)
  std::vector<std::string> allowed_common_names;  // client certificate CNs (empty: any)
};

struct ServerOptions {
  std::string listen = "0.0.0.0:7070";  // host:port (port 0: pick a free one)
  TlsOptions tls;                       // the public port's; the admin port uses its cert/key
  AdminOptions admin;
  ModelStoreOptions store;
  InferenceOptions inference;
};

class StipServer {
 public:
  // Opens (and loads) the store, then starts serving. Throws stip::Error.
  explicit StipServer(ServerOptions options);
  ~StipServer();  // shuts down at once if Shutdown() was not called
  StipServer(const StipServer&) = delete;
  StipServer& operator=(const StipServer&) = delete;

  int port() const { return port_; }
  // The listen address with the bound port ("0.0.0.0:7070").
  std::string address() const;
  int admin_port() const { return admin_port_; }  // 0: no admin port
  std::string admin_address() const;              // "" without an admin port

  // Stops accepting calls; calls still running after `grace` are cancelled.
  // Returns once every call has ended.
  void Shutdown(std::chrono::milliseconds grace);

  ModelStore& store() { return *store_; }
  InferenceService& inference() { return *inference_; }
  const SchedulerCounters& counters() const { return *counters_; }

 private:
  ServerOptions options_;
  std::shared_ptr<SchedulerCounters> counters_;
  std::unique_ptr<ModelStore> store_;
  std::unique_ptr<ModelStoreService> store_service_;
  std::unique_ptr<InferenceService> inference_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<grpc::Server> admin_server_;
  int port_ = 0;
  int admin_port_ = 0;
  bool shut_down_ = false;
};

}  // namespace stip
