#include "server/stip_server.h"

#include <spdlog/spdlog.h>

#include <thread>

#include "common/error.h"
#include "common/rpc/server_setup.h"
#include "server/batch_scheduler.h"
#include "server/model_store_service.h"

namespace stip {

StipServer::StipServer(ServerOptions options)
    : options_(std::move(options)), counters_(std::make_shared<SchedulerCounters>()) {
  options_.store.counters = counters_;
  const AdminOptions& admin = options_.admin;
  if (!admin.listen.empty() && !options_.tls.insecure && admin.ca_file.empty()) {
    throw InvalidArgument(
        "the admin port needs the CA of the developer's client certificate (--admin-ca)");
  }
  store_ = std::make_unique<ModelStore>(options_.store);
  AdminAccess access;
  access.insecure = options_.tls.insecure;
  access.allowed_common_names = admin.allowed_common_names;
  store_service_ = std::make_unique<ModelStoreService>(*store_, access);
  inference_ = std::make_unique<InferenceService>(*store_, options_.inference);
  if (!admin.listen.empty()) {
    ServerSetup a;
    a.address = admin.listen;
    a.tls.insecure = options_.tls.insecure;
    a.tls.cert_file = options_.tls.cert_file;
    a.tls.key_file = options_.tls.key_file;
    a.tls.ca_file = admin.ca_file;
    a.tls.require_client_cert = true;
    a.name = "stip-server (admin)";
    admin_server_ =
        StartServer(a, {store_service_.get()}, &admin_port_, {v1::ModelStore::service_full_name()});
  }
  ServerSetup setup;
  setup.address = options_.listen;
  setup.tls = options_.tls;
  setup.name = "stip-server";
  server_ = StartServer(setup, {inference_.get()}, &port_, {v1::Inference::service_full_name()});
}

StipServer::~StipServer() {
  if (!shut_down_) Shutdown(std::chrono::milliseconds(0));
  // Services after the servers, the store (and its schedulers) last.
  server_.reset();
  admin_server_.reset();
  inference_.reset();
  store_service_.reset();
  store_.reset();
}

namespace {
std::string WithPort(const std::string& listen, int port) {
  const size_t colon = listen.rfind(':');
  return (colon == std::string::npos ? listen : listen.substr(0, colon)) + ":" +
         std::to_string(port);
}
}  // namespace

std::string StipServer::address() const { return WithPort(options_.listen, port_); }

std::string StipServer::admin_address() const {
  return admin_server_ ? WithPort(options_.admin.listen, admin_port_) : "";
}

void StipServer::Shutdown(std::chrono::milliseconds grace) {
  if (shut_down_) return;
  shut_down_ = true;
  if (auto* health = server_->GetHealthCheckService()) health->SetServingStatus(false);
  if (admin_server_) {
    if (auto* health = admin_server_->GetHealthCheckService()) health->SetServingStatus(false);
  }
  const auto deadline = std::chrono::system_clock::now() + grace;
  std::thread admin([&] {
    if (admin_server_) admin_server_->Shutdown(deadline);
  });
  server_->Shutdown(deadline);
  admin.join();
  if (admin_server_) admin_server_->Wait();
  server_->Wait();
}

}  // namespace stip
