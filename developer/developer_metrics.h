// stip-developer serve's metrics (--metrics-listen): registrations, bundles
// served (at registration and by FetchBundle after a rotation), token
// renewals, each by outcome (a gRPC status code name), and model pushes to
// the servers. Never a user name, token or key in a label.
#pragma once

#include <grpcpp/grpcpp.h>

#include "stip/v1/stip.grpc.pb.h"

namespace prometheus {
class Counter;
template <typename T>
class Family;
}  // namespace prometheus

namespace stip {

class MetricsEndpoint;

class DeveloperMetrics {
 public:
  explicit DeveloperMetrics(MetricsEndpoint& endpoint);
  void Registration(const grpc::Status& status);
  void BundleServed(const char* rpc, const grpc::Status& status);  // rpc: "register" | "fetch"
  void Renewal(const grpc::Status& status);
  void Push(bool already_stored);

 private:
  prometheus::Family<prometheus::Counter>& registrations_;
  prometheus::Family<prometheus::Counter>& fetches_;
  prometheus::Family<prometheus::Counter>& renewals_;
  prometheus::Family<prometheus::Counter>& pushes_;
};

// The Registry service with its calls counted (forwards to `inner`).
class MeteredRegistry final : public v1::Registry::Service {
 public:
  MeteredRegistry(v1::Registry::Service* inner, DeveloperMetrics* metrics)
      : inner_(inner), metrics_(metrics) {}
  grpc::Status Register(grpc::ServerContext* context, const v1::RegisterRequest* request,
                        grpc::ServerWriter<v1::BundleChunk>* writer) override;
  grpc::Status FetchBundle(grpc::ServerContext* context, const v1::FetchBundleRequest* request,
                           grpc::ServerWriter<v1::BundleChunk>* writer) override;
  grpc::Status RenewToken(grpc::ServerContext* context, const v1::RenewTokenRequest* request,
                          v1::RenewTokenResponse* response) override;

 private:
  v1::Registry::Service* inner_;
  DeveloperMetrics* metrics_;
};

}  // namespace stip
