#include "developer/developer_metrics.h"

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/registry.h>

#include "common/metrics/metrics.h"

namespace stip {

namespace {

const char* Outcome(const grpc::Status& s) {
  return s.ok() ? "ok" : GrpcCodeName(static_cast<int>(s.error_code()));
}

}  // namespace

DeveloperMetrics::DeveloperMetrics(MetricsEndpoint& endpoint)
    : registrations_(prometheus::BuildCounter()
                         .Name("stip_developer_registrations_total")
                         .Help("Register calls, by outcome")
                         .Register(endpoint.registry())),
      fetches_(prometheus::BuildCounter()
                   .Name("stip_developer_bundle_fetches_total")
                   .Help("client bundles served (rpc: register or fetch), by outcome")
                   .Register(endpoint.registry())),
      renewals_(prometheus::BuildCounter()
                    .Name("stip_developer_token_renewals_total")
                    .Help("RenewToken calls, by outcome")
                    .Register(endpoint.registry())),
      pushes_(prometheus::BuildCounter()
                  .Name("stip_developer_pushes_total")
                  .Help("model instances pushed to a server at start (result: pushed, or "
                        "already_stored)")
                  .Register(endpoint.registry())) {
  registrations_.Add({{"outcome", "ok"}});
  for (const char* rpc : {"register", "fetch"}) fetches_.Add({{"rpc", rpc}, {"outcome", "ok"}});
  renewals_.Add({{"outcome", "ok"}});
  pushes_.Add({{"result", "pushed"}});
  pushes_.Add({{"result", "already_stored"}});
}

void DeveloperMetrics::Registration(const grpc::Status& s) {
  registrations_.Add({{"outcome", Outcome(s)}}).Increment();
}

void DeveloperMetrics::BundleServed(const char* rpc, const grpc::Status& s) {
  fetches_.Add({{"rpc", rpc}, {"outcome", Outcome(s)}}).Increment();
}

void DeveloperMetrics::Renewal(const grpc::Status& s) {
  renewals_.Add({{"outcome", Outcome(s)}}).Increment();
}

void DeveloperMetrics::Push(bool already_stored) {
  pushes_.Add({{"result", already_stored ? "already_stored" : "pushed"}}).Increment();
}

grpc::Status MeteredRegistry::Register(grpc::ServerContext* context,
                                       const v1::RegisterRequest* request,
                                       grpc::ServerWriter<v1::BundleChunk>* writer) {
  grpc::Status s = inner_->Register(context, request, writer);
  metrics_->Registration(s);
  metrics_->BundleServed("register", s);
  return s;
}

grpc::Status MeteredRegistry::FetchBundle(grpc::ServerContext* context,
                                          const v1::FetchBundleRequest* request,
                                          grpc::ServerWriter<v1::BundleChunk>* writer) {
  grpc::Status s = inner_->FetchBundle(context, request, writer);
  metrics_->BundleServed("fetch", s);
  return s;
}

grpc::Status MeteredRegistry::RenewToken(grpc::ServerContext* context,
                                         const v1::RenewTokenRequest* request,
                                         v1::RenewTokenResponse* response) {
  grpc::Status s = inner_->RenewToken(context, request, response);
  metrics_->Renewal(s);
  return s;
}

}  // namespace stip
