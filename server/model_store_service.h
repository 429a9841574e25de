// ModelStore, for the developer: the gRPC layer over server/model_store.h,
// which only translates (protos <-> the store's structs, stip::Error ->
// status). Chunked client-streaming upload of a
// transformed model (header, chunks in order, trailer with the SHA-256),
// verified and validated before it becomes visible; list, load, unload,
// delete; set access; retire (key rotation). Synchronous gRPC handlers (administrative, rare).
//
// Status codes: INVALID_ARGUMENT (bad header, file names, chunk order, a
// checkpoint that is not a transformed server checkpoint -- including one
// that carries an embedding table), ALREADY_EXISTS (instance stored),
// DATA_LOSS (digest mismatch), CANCELLED (stream interrupted), NOT_FOUND
// (unknown instance), FAILED_PRECONDITION (open sessions; upload of the same
// instance in progress), RESOURCE_EXHAUSTED (size limits).
//
// Only the developer may change the store: stip-server serves this service on
// its admin port alone, where TLS requires a client certificate signed by the
// admin CA. Every call also checks the peer here: with TLS, a verified client
// certificate (UNAUTHENTICATED otherwise) whose subject common name is one of
// `allowed_common_names` when that list is not empty (PERMISSION_DENIED).
#pragma once

#include <grpcpp/grpcpp.h>

#include <functional>
#include <string>
#include <vector>

#include "stip/v1/stip.grpc.pb.h"

namespace stip {

class ModelStore;

struct AdminAccess {
  bool insecure = false;  // plaintext admin port (--insecure): no peer checks
  std::vector<std::string> allowed_common_names;  // empty: any certificate the admin CA signed
};

class ModelStoreService final : public v1::ModelStore::Service {
 public:
  ModelStoreService(ModelStore& store, AdminAccess admin)
      : store_(store), admin_(std::move(admin)) {}

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
  grpc::Status SetAccess(grpc::ServerContext* context, const v1::SetAccessRequest* request,
                         v1::AccessInfo* response) override;
  grpc::Status Retire(grpc::ServerContext* context, const v1::RetireRequest* request,
                      v1::ModelInfo* response) override;

 private:
  // Throws kUnauthenticated / kPermissionDenied unless the peer may use the
  // model store (see above); logs refusals.
  void CheckPeer(grpc::ServerContext* context, const char* method) const;
  // Checks the peer, runs `body`, and turns what it throws into the call's
  // status (common/rpc/status.h), logging it with `what()` (the call's
  // object, for the log).
  grpc::Status Serve(grpc::ServerContext* context, const char* method,
                     const std::function<std::string()>& what,
                     const std::function<void()>& body) const;

  ModelStore& store_;
  const AdminAccess admin_;
};

}  // namespace stip
