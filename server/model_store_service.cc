#include "server/model_store_service.h"

#include <spdlog/spdlog.h>

#include <cctype>

#include "common/rpc/status.h"
#include "server/model_store.h"

namespace stip::server {

namespace {

// An id from the wire, safe to log.
std::string Printable(const std::string& id) {
  std::string out = id.substr(0, 64);
  for (char& c : out) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '-') c = '?';
  }
  return out;
}

// Call inside a catch block.
grpc::Status HandledStatus(const std::string& what) {
  grpc::Status status;
  try {
    throw;
  } catch (const AlreadyExistsError& e) {
    status = grpc::Status(grpc::StatusCode::ALREADY_EXISTS, e.what());
  } catch (...) {
    status = CurrentExceptionToStatus();
  }
  spdlog::warn("{}: {}", what, status.error_message());
  return status;
}

}  // namespace

grpc::Status ModelStoreService::Upload(grpc::ServerContext* context,
                                       grpc::ServerReader<v1::UploadRequest>* reader,
                                       v1::ModelInfo* response) {
  v1::UploadRequest request;
  if (!reader->Read(&request)) {
    return context->IsCancelled()
               ? grpc::Status(grpc::StatusCode::CANCELLED, "upload cancelled")
               : grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "upload: empty stream");
  }
  if (!request.has_header()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "upload: the first message must be the header");
  }
  const std::string id = Printable(request.header().instance_id());
  try {
    std::unique_ptr<PendingUpload> upload = store_.BeginUpload(request.header());
    spdlog::info("upload of model {} from {}: {} file(s)", id, context->peer(),
                 request.header().files_size());
    while (reader->Read(&request)) {
      switch (request.part_case()) {
        case v1::UploadRequest::kChunk:
          upload->Accept(request.chunk());
          break;
        case v1::UploadRequest::kTrailer:
          *response = store_.FinishUpload(std::move(upload), request.trailer().sha256());
          return grpc::Status::OK;
        default:
          return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                              "upload: a second header or an empty message; nothing was stored");
      }
    }
    const uint64_t got = upload->bytes_received();
    upload.reset();  // removes what was received
    if (context->IsCancelled()) {
      spdlog::warn("upload of model {}: cancelled by the sender after {} bytes; nothing stored", id,
                   got);
      return grpc::Status(grpc::StatusCode::CANCELLED, "upload cancelled; nothing was stored");
    }
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "upload ended without a trailer; nothing was stored");
  } catch (...) {
    return HandledStatus("upload of model " + id);
  }
}

grpc::Status ModelStoreService::List(grpc::ServerContext*, const v1::ListModelsRequest*,
                                     v1::ListModelsResponse* response) {
  try {
    for (v1::ModelInfo& info : store_.List()) *response->add_models() = std::move(info);
    return grpc::Status::OK;
  } catch (...) {
    return HandledStatus("list");
  }
}

grpc::Status ModelStoreService::Load(grpc::ServerContext*, const v1::ModelRef* request,
                                     v1::ModelInfo* response) {
  try {
    *response = store_.Load(request->instance_id());
    return grpc::Status::OK;
  } catch (...) {
    return HandledStatus("load " + Printable(request->instance_id()));
  }
}

grpc::Status ModelStoreService::Unload(grpc::ServerContext*, const v1::ModelRef* request,
                                       v1::ModelInfo* response) {
  try {
    *response = store_.Unload(request->instance_id());
    return grpc::Status::OK;
  } catch (...) {
    return HandledStatus("unload " + Printable(request->instance_id()));
  }
}

grpc::Status ModelStoreService::Delete(grpc::ServerContext*, const v1::ModelRef* request,
                                       v1::DeleteModelResponse*) {
  try {
    store_.Delete(request->instance_id());
    return grpc::Status::OK;
  } catch (...) {
    return HandledStatus("delete " + Printable(request->instance_id()));
  }
}

}  // namespace stip::server
