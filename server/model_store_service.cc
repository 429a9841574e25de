#include "server/model_store_service.h"

#include <spdlog/spdlog.h>

#include <cctype>

#include "common/error.h"
#include "common/rpc/file_transfer.h"
#include "common/rpc/status.h"
#include "server/model_store.h"

namespace stip {

namespace {

// An id from the wire, safe to log.
std::string Printable(const std::string& id) {
  std::string out = id.substr(0, 64);
  for (char& c : out) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '-') c = '?';
  }
  return out;
}

// ---- wire <-> store ------------------------------------------------------------

v1::ModelInfo ToProto(const ModelInfo& m) {
  v1::ModelInfo info;
  info.set_instance_id(m.instance_id);
  info.set_model_type(m.model_type);
  info.set_loaded(m.loaded);
  info.set_stored_bytes(m.stored_bytes);
  info.set_hidden_size(m.hidden_size);
  info.set_vocab_size(m.vocab_size);
  info.set_max_context(m.max_context);
  info.set_datatype(m.datatype);
  info.set_active_sessions(m.active_sessions);
  info.set_token_key_id(m.token_key_id);
  info.set_retired(m.retired);
  info.set_drain_deadline(m.drain_deadline);
  return info;
}

v1::AccessInfo ToProto(const AccessInfo& a) {
  v1::AccessInfo info;
  info.set_instance_id(a.instance_id);
  info.set_token_key_id(a.token_key_id);
  info.set_revoked_tokens(a.revoked_tokens);
  for (const std::string& id : a.previous_token_key_ids) info.add_previous_token_key_ids(id);
  return info;
}

UploadSpec FromProto(const v1::UploadHeader& header) {
  UploadSpec spec;
  spec.instance_id = header.instance_id();
  spec.files = TransferFilesFromProto(header.files());
  spec.load = header.load();
  return spec;
}

std::vector<auth::RevokedToken> RevokedFromProto(const v1::SetAccessRequest& request) {
  std::vector<auth::RevokedToken> revoked;
  revoked.reserve(static_cast<size_t>(request.revoked_size()));
  for (const v1::RevokedToken& r : request.revoked())
    revoked.push_back({r.token_id(), r.expires_at()});
  return revoked;
}

std::vector<auth::PreviousTokenKey> PreviousFromProto(const v1::SetAccessRequest& request) {
  if (static_cast<size_t>(request.previous_token_keys_size()) > kMaxPreviousTokenKeys) {
    throw InvalidArgument(std::to_string(request.previous_token_keys_size()) +
                          " previous token keys, at most " + std::to_string(kMaxPreviousTokenKeys));
  }
  std::vector<auth::PreviousTokenKey> previous;
  for (int i = 0; i < request.previous_token_keys_size(); ++i) {
    const v1::PreviousTokenKey& p = request.previous_token_keys(i);
    try {
      previous.push_back({auth::PublicKey::FromPem(p.pem()), p.accepted_until()});
    } catch (const Error& e) {
      throw InvalidArgument("previous token key " + std::to_string(i) + ": " + e.what());
    }
  }
  return previous;
}

}  // namespace

void ModelStoreService::CheckPeer(grpc::ServerContext* context, const char* method) const {
  if (admin_.insecure) return;
  std::shared_ptr<const grpc::AuthContext> auth = context->auth_context();
  if (!auth || !auth->IsPeerAuthenticated()) {
    spdlog::warn("ModelStore.{} refused for {}: no verified client certificate", method,
                 context->peer());
    throw Unauthenticated(
        "the model store requires the developer's client certificate (mutual TLS)");
  }
  if (admin_.allowed_common_names.empty()) return;
  std::string presented;
  for (const grpc::string_ref& cn : auth->FindPropertyValues("x509_common_name")) {
    const std::string name(cn.data(), cn.size());
    for (const std::string& allowed : admin_.allowed_common_names) {
      if (name == allowed) return;
    }
    presented = name;
  }
  const std::string shown = QuoteForMessage(presented);
  spdlog::warn("ModelStore.{} refused for {}: client certificate CN {} is not allowed", method,
               context->peer(), shown);
  throw PermissionDenied("client certificate CN " + shown + " may not use the model store");
}

grpc::Status ModelStoreService::Serve(grpc::ServerContext* context, const char* method,
                                      const std::function<std::string()>& what,
                                      const std::function<void()>& body) const {
  try {
    CheckPeer(context, method);
  } catch (...) {
    return CurrentExceptionToStatus(context);
  }
  try {
    body();
    return grpc::Status::OK;
  } catch (...) {
    grpc::Status status = CurrentExceptionToStatus(context);
    spdlog::warn("{}: {}", what(), status.error_message());
    return status;
  }
}

grpc::Status ModelStoreService::Upload(grpc::ServerContext* context,
                                       grpc::ServerReader<v1::UploadRequest>* reader,
                                       v1::ModelInfo* response) {
  std::string id = "?";
  return Serve(
      context, "Upload", [&] { return "upload of model " + id; },
      [&] {
        v1::UploadRequest request;
        if (!reader->Read(&request)) {
          if (context->IsCancelled()) throw Cancelled("upload cancelled");
          throw InvalidArgument("upload: empty stream");
        }
        if (!request.has_header()) {
          throw InvalidArgument("upload: the first message must be the header");
        }
        id = Printable(request.header().instance_id());
        std::unique_ptr<PendingUpload> upload = store_.BeginUpload(FromProto(request.header()));
        spdlog::info("upload of model {} from {}: {} file(s)", id, context->peer(),
                     request.header().files_size());
        while (reader->Read(&request)) {
          switch (request.part_case()) {
            case v1::UploadRequest::kChunk:
              upload->Accept(TransferChunkFromProto(request.chunk()));
              break;
            case v1::UploadRequest::kTrailer:
              *response =
                  ToProto(store_.FinishUpload(std::move(upload), request.trailer().sha256()));
              return;
            default:
              throw InvalidArgument(
                  "upload: a second header or an empty message; nothing was stored");
          }
        }
        const uint64_t got = upload->bytes_received();
        upload.reset();  // removes what was received
        if (context->IsCancelled()) {
          spdlog::warn("upload of model {}: cancelled by the sender after {} bytes; nothing stored",
                       id, got);
          throw Cancelled("upload cancelled; nothing was stored");
        }
        throw InvalidArgument("upload ended without a trailer; nothing was stored");
      });
}

grpc::Status ModelStoreService::List(grpc::ServerContext* context, const v1::ListModelsRequest*,
                                     v1::ListModelsResponse* response) {
  return Serve(
      context, "List", [] { return std::string("list"); },
      [&] {
        for (const ModelInfo& info : store_.List()) *response->add_models() = ToProto(info);
      });
}

grpc::Status ModelStoreService::Load(grpc::ServerContext* context, const v1::ModelRef* request,
                                     v1::ModelInfo* response) {
  return Serve(
      context, "Load", [&] { return "load " + Printable(request->instance_id()); },
      [&] { *response = ToProto(store_.Load(request->instance_id())); });
}

grpc::Status ModelStoreService::Unload(grpc::ServerContext* context, const v1::ModelRef* request,
                                       v1::ModelInfo* response) {
  return Serve(
      context, "Unload", [&] { return "unload " + Printable(request->instance_id()); },
      [&] { *response = ToProto(store_.Unload(request->instance_id())); });
}

grpc::Status ModelStoreService::Delete(grpc::ServerContext* context, const v1::ModelRef* request,
                                       v1::DeleteModelResponse*) {
  return Serve(
      context, "Delete", [&] { return "delete " + Printable(request->instance_id()); },
      [&] { store_.Delete(request->instance_id()); });
}

grpc::Status ModelStoreService::SetAccess(grpc::ServerContext* context,
                                          const v1::SetAccessRequest* request,
                                          v1::AccessInfo* response) {
  return Serve(
      context, "SetAccess", [&] { return "set access of " + Printable(request->instance_id()); },
      [&] {
        std::vector<auth::RevokedToken> revoked = RevokedFromProto(*request);
        std::vector<auth::PreviousTokenKey> previous = PreviousFromProto(*request);
        *response = ToProto(
            store_.SetAccess(request->instance_id(), request->token_key_pem(), revoked, previous));
      });
}

grpc::Status ModelStoreService::Retire(grpc::ServerContext* context,
                                       const v1::RetireRequest* request, v1::ModelInfo* response) {
  return Serve(
      context, "Retire", [&] { return "retire " + Printable(request->instance_id()); },
      [&] {
        *response = ToProto(store_.Retire(request->instance_id(), request->drain_seconds()));
      });
}

}  // namespace stip
