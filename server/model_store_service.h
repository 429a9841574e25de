// ModelStore, for the developer: chunked client-streaming upload of a
// transformed model (header, chunks in order, trailer with the SHA-256),
// verified and validated before it becomes visible; list, load, unload,
// delete. Synchronous gRPC handlers (administrative, rare).
//
// Status codes: INVALID_ARGUMENT (bad header, file names, chunk order, a
// checkpoint that is not a transformed server checkpoint -- including one
// that carries an embedding table), ALREADY_EXISTS (instance stored),
// DATA_LOSS (digest mismatch), CANCELLED (stream interrupted), NOT_FOUND
// (unknown instance), FAILED_PRECONDITION (open sessions; upload of the same
// instance in progress), RESOURCE_EXHAUSTED (size limits).
#pragma once

#include <grpcpp/grpcpp.h>

#include "stip/v1/stip.grpc.pb.h"

namespace stip::server {

class ModelStore;

class ModelStoreService final : public v1::ModelStore::Service {
 public:
  explicit ModelStoreService(ModelStore& store) : store_(store) {}

  grpc::Status Upload(grpc::ServerContext* context, grpc::ServerReader<v1::UploadRequest>* reader,
                      v1::ModelInfo* response) override;
  grpc::Status List(grpc::ServerContext* context, const v1::ListModelsRequest* request,
                    v1::ListModelsResponse* response) override;
  grpc::Status Load(grpc::ServerContext* context, const v1::ModelRef* request,
                    v1::ModelInfo* response) override;
  grpc::Status Unload(grpc::ServerContext* context, const v1::ModelRef* request,
                      v1::ModelInfo* response) override;
  grpc::Status Delete(grpc::ServerContext* context, const v1::ModelRef* request,
                      v1::DeleteModelResponse* response) override;

 private:
  ModelStore& store_;
};

}  // namespace stip::server
