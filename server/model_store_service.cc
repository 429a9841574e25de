#include "server/model_store_service.h"

#include <spdlog/spdlog.h>

#include <cctype>

#include "common/error.h"
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

grpc::Status ModelStoreService::CheckPeer(grpc::ServerContext* context, const char* method) const {
  if (admin_.insecure) return grpc::Status::OK;
  std::shared_ptr<const grpc::AuthContext> auth = context->auth_context();
  if (!auth || !auth->IsPeerAuthenticated()) {
    spdlog::warn("ModelStore.{} refused for {}: no verified client certificate", method,
                 context->peer());
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "the model store requires the developer's client certificate (mutual "
                        "TLS)");
  }
  if (admin_.allowed_common_names.empty()) return grpc::Status::OK;
  std::string presented;
  for (const grpc::string_ref& cn : auth->FindPropertyValues("x509_common_name")) {
    const std::string name(cn.data(), cn.size());
    for (const std::string& allowed : admin_.allowed_common_names) {
      if (name == allowed) return grpc::Status::OK;
    }
    presented = name;
  }
  const std::string shown = QuoteForMessage(presented);
  spdlog::warn("ModelStore.{} refused for {}: client certificate CN {} is not allowed", method,
               context->peer(), shown);
  return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                      "client certificate CN " + shown + " may not use the model store");
}

grpc::Status ModelStoreService::Upload(grpc::ServerContext* context,
                                       grpc::ServerReader<v1::UploadRequest>* reader,
                                       v1::ModelInfo* response) {
  if (grpc::Status peer = CheckPeer(context, "Upload"); !peer.ok()) return peer;
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

grpc::Status ModelStoreService::List(grpc::ServerContext* context, const v1::ListModelsRequest*,
                                     v1::ListModelsResponse* response) {
  if (grpc::Status peer = CheckPeer(context, "List"); !peer.ok()) return peer;
  try {
    for (v1::ModelInfo& info : store_.List()) *response->add_models() = std::move(info);
    return grpc::Status::OK;
  } catch (...) {
    return HandledStatus("list");
  }
}

grpc::Status ModelStoreService::Load(grpc::ServerContext* context, const v1::ModelRef* request,
                                     v1::ModelInfo* response) {
  if (grpc::Status peer = CheckPeer(context, "Load"); !peer.ok()) return peer;
  try {
    *response = store_.Load(request->instance_id());
    return grpc::Status::OK;
  } catch (...) {
    return HandledStatus("load " + Printable(request->instance_id()));
  }
}

grpc::Status ModelStoreService::Unload(grpc::ServerContext* context, const v1::ModelRef* request,
                                       v1::ModelInfo* response) {
  if (grpc::Status peer = CheckPeer(context, "Unload"); !peer.ok()) return peer;
  try {
    *response = store_.Unload(request->instance_id());
    return grpc::Status::OK;
  } catch (...) {
    return HandledStatus("unload " + Printable(request->instance_id()));
  }
}

grpc::Status ModelStoreService::Delete(grpc::ServerContext* context, const v1::ModelRef* request,
                                       v1::DeleteModelResponse*) {
  if (grpc::Status peer = CheckPeer(context, "Delete"); !peer.ok()) return peer;
  try {
    store_.Delete(request->instance_id());
    return grpc::Status::OK;
  } catch (...) {
    return HandledStatus("delete " + Printable(request->instance_id()));
  }
}

grpc::Status ModelStoreService::SetAccess(grpc::ServerContext* context,
                                          const v1::SetAccessRequest* request,
                                          v1::AccessInfo* response) {
  if (grpc::Status peer = CheckPeer(context, "SetAccess"); !peer.ok()) return peer;
  try {
    std::vector<auth::RevokedToken> revoked;
    revoked.reserve(static_cast<size_t>(request->revoked_size()));
    for (const v1::RevokedToken& r : request->revoked()) {
      revoked.push_back({r.token_id(), r.expires_at()});
    }
    if (static_cast<size_t>(request->previous_token_keys_size()) > kMaxPreviousTokenKeys) {
      throw InvalidArgument(std::to_string(request->previous_token_keys_size()) +
                            " previous token keys, at most " +
                            std::to_string(kMaxPreviousTokenKeys));
    }
    std::vector<auth::PreviousTokenKey> previous;
    for (int i = 0; i < request->previous_token_keys_size(); ++i) {
      const v1::PreviousTokenKey& p = request->previous_token_keys(i);
      try {
        previous.push_back({auth::PublicKey::FromPem(p.pem()), p.accepted_until()});
      } catch (const Error& e) {
        throw InvalidArgument("previous token key " + std::to_string(i) + ": " + e.what());
      }
    }
    *response =
        store_.SetAccess(request->instance_id(), request->token_key_pem(), revoked, previous);
    return grpc::Status::OK;
  } catch (...) {
    return HandledStatus("set access of " + Printable(request->instance_id()));
  }
}

grpc::Status ModelStoreService::Retire(grpc::ServerContext* context,
                                       const v1::RetireRequest* request, v1::ModelInfo* response) {
  if (grpc::Status peer = CheckPeer(context, "Retire"); !peer.ok()) return peer;
  try {
    *response = store_.Retire(request->instance_id(), request->drain_seconds());
    return grpc::Status::OK;
  } catch (...) {
    return HandledStatus("retire " + Printable(request->instance_id()));
  }
}

}  // namespace stip::server
