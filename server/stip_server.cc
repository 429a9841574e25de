#include "server/stip_server.h"

#include <spdlog/spdlog.h>

#include "common/rpc/server_setup.h"
#include "server/batch_scheduler.h"
#include "server/model_store_service.h"

namespace stip::server {

StipServer::StipServer(ServerOptions options)
    : options_(std::move(options)), counters_(std::make_shared<SchedulerCounters>()) {
  options_.store.counters = counters_;
  store_ = std::make_unique<ModelStore>(options_.store);
  store_service_ = std::make_unique<ModelStoreService>(*store_);
  inference_ = std::make_unique<InferenceService>(*store_, options_.inference);
  ServerSetup setup;
  setup.address = options_.listen;
  setup.tls = options_.tls;
  setup.name = "stip-server";
  server_ = StartServer(setup, {store_service_.get(), inference_.get()}, &port_,
                        {v1::ModelStore::service_full_name(), v1::Inference::service_full_name()});
}

StipServer::~StipServer() {
  if (!shut_down_) Shutdown(std::chrono::milliseconds(0));
  // Services after the server, the store (and its schedulers) last.
  server_.reset();
  inference_.reset();
  store_service_.reset();
  store_.reset();
}

std::string StipServer::address() const {
  const std::string& listen = options_.listen;
  const size_t colon = listen.rfind(':');
  return (colon == std::string::npos ? listen : listen.substr(0, colon)) + ":" +
         std::to_string(port_);
}

void StipServer::Shutdown(std::chrono::milliseconds grace) {
  if (shut_down_) return;
  shut_down_ = true;
  if (auto* health = server_->GetHealthCheckService()) health->SetServingStatus(false);
  server_->Shutdown(std::chrono::system_clock::now() + grace);
  server_->Wait();
}

}  // namespace stip::server
