#include "developer/registry_service.h"

#include <spdlog/spdlog.h>

#include <chrono>

#include "common/error.h"
#include "common/rpc/file_transfer.h"
#include "common/rpc/status.h"
#include "developer/instance_groups.h"
#include "developer/state_store.h"
#include "developer/user_registry.h"

namespace stip {

namespace {

// A user name from the wire, fit for a log line.
std::string ForLog(const std::string& name) {
  return IsValidUserName(name) ? "\"" + name + "\"" : "(malformed name)";
}

std::string Peer(grpc::ServerContext* context) { return context ? context->peer() : "?"; }

}  // namespace

RegistryService::RegistryService(StateStore* state, UserRegistry* users, RegistryConfig config)
    : state_(state), users_(users), config_(std::move(config)), key_(config_.signing_key) {
  if (!key_) key_ = std::make_shared<const auth::SigningKey>(state_->TokenSigningKey());
}

RegistryService::Bundle RegistryService::BundleFor(const UserRecord& user) const {
  Bundle b;
  b.instance = InstanceGroups(*state_).InstanceFor(user.instance, user.group);
  if (!state_->HasInstance(b.instance)) {
    throw NotFound("instance " + b.instance + " is not in the developer's state");
  }
  b.files = ListFilesForTransfer(state_->ClientDir(b.instance));
  if (b.files.empty()) throw DataLoss("the client bundle of instance " + b.instance + " is empty");
  return b;
}

grpc::Status RegistryService::Register(grpc::ServerContext* context,
                                       const v1::RegisterRequest* request,
                                       grpc::ServerWriter<v1::BundleChunk>* writer) {
  try {
    // Locate the bundle before the token is consumed.
    std::optional<UserRecord> known = users_->Find(request->user());
    std::optional<Bundle> bundle;
    grpc::Status unavailable;
    if (known) {
      try {
        bundle = BundleFor(*known);
      } catch (...) {
        unavailable = CurrentExceptionToStatus();
      }
    }
    if (!bundle) {
      if (known && users_->CheckEnrolmentToken(request->user(), request->enrolment_token())) {
        spdlog::error("registration of user {}: no bundle to send: {}", ForLog(request->user()),
                      unavailable.error_message());
        return unavailable;  // the token stays valid
      }
      spdlog::warn("registration refused for user {} from {}: bad or used enrolment token",
                   ForLog(request->user()), Peer(context));
      return ToStatus(Unauthenticated(kBadEnrolmentMessage));
    }
    TokenIssue issue{key_.get(), config_.token_ttl_s};
    std::optional<UserRegistry::Enrolment> e =
        users_->Enrol(request->user(), request->enrolment_token(), issue);
    if (!e) {
      spdlog::warn("registration refused for user {} from {}: bad or used enrolment token",
                   ForLog(request->user()), Peer(context));
      return ToStatus(Unauthenticated(kBadEnrolmentMessage));
    }
    spdlog::info("user {} enrolled from {}", ForLog(e->user.name), Peer(context));
    if (e->instance != bundle->instance) bundle = BundleFor(e->user);  // moved meanwhile
    return SendBundle(context, e->user.name, *bundle, e->access_token, writer);
  } catch (...) {
    grpc::Status s = CurrentExceptionToStatus();
    spdlog::error("Register for user {}: {}", ForLog(request->user()), s.error_message());
    return s;
  }
}

grpc::Status RegistryService::FetchBundle(grpc::ServerContext* context,
                                          const v1::FetchBundleRequest* request,
                                          grpc::ServerWriter<v1::BundleChunk>* writer) {
  try {
    UserRegistry::AccessCheck check;
    grpc::Status refused =
        CheckAccess(context, request->user(), request->access_token(), "bundle", &check);
    if (!refused.ok()) return refused;
    Bundle bundle = BundleFor(check.user);
    std::string token = request->access_token();
    if (bundle.instance != check.claims.instance) {
      // The user moved to another instance: a token for that one.
      TokenIssue issue{key_.get(), config_.token_ttl_s};
      std::optional<UserRegistry::Enrolment> renewed =
          users_->RenewAccessToken(check.user.name, check.claims.token_id, issue);
      if (!renewed) return ToStatus(Unauthenticated(kBadAccessMessage));
      if (renewed->instance != bundle.instance) bundle = BundleFor(renewed->user);
      token = renewed->access_token;
      spdlog::info("user {} moved to instance {}: new access token issued", ForLog(check.user.name),
                   bundle.instance);
    }
    return SendBundle(context, check.user.name, bundle, token, writer);
  } catch (...) {
    grpc::Status s = CurrentExceptionToStatus();
    spdlog::error("FetchBundle for user {}: {}", ForLog(request->user()), s.error_message());
    return s;
  }
}

grpc::Status RegistryService::CheckAccess(grpc::ServerContext* context, const std::string& user,
                                          const std::string& access_token, const char* what,
                                          UserRegistry::AccessCheck* check) const {
  *check = users_->Authenticate(user, access_token, key_->public_key(),
                                state_->PreviousTokenKeys(auth::NowUnix()));
  switch (check->outcome) {
    case UserRegistry::AccessCheck::kOk:
      return grpc::Status::OK;
    case UserRegistry::AccessCheck::kRevoked:
      spdlog::warn("{} refused for user {} from {}: access revoked", what, ForLog(user),
                   Peer(context));
      return ToStatus(PermissionDenied(kRevokedAccessMessage));
    case UserRegistry::AccessCheck::kExpired:
      spdlog::warn("{} refused for user {} from {}: access token expired", what, ForLog(user),
                   Peer(context));
      return ToStatus(Unauthenticated(check->message + " (an expired token cannot be renewed)"));
    case UserRegistry::AccessCheck::kInvalid:
      break;
  }
  spdlog::warn("{} refused for user {} from {}: bad access token", what, ForLog(user),
               Peer(context));
  return ToStatus(Unauthenticated(kBadAccessMessage));
}

grpc::Status RegistryService::RenewToken(grpc::ServerContext* context,
                                         const v1::RenewTokenRequest* request,
                                         v1::RenewTokenResponse* response) {
  try {
    UserRegistry::AccessCheck check;
    grpc::Status refused =
        CheckAccess(context, request->user(), request->access_token(), "token renewal", &check);
    if (!refused.ok()) return refused;
    // The user's instance must be servable before the old token is replaced.
    (void)BundleFor(check.user);
    TokenIssue issue{key_.get(), config_.token_ttl_s};
    std::optional<UserRegistry::Enrolment> renewed =
        users_->RenewAccessToken(check.user.name, check.claims.token_id, issue);
    if (!renewed) return ToStatus(Unauthenticated(kBadAccessMessage));
    response->set_access_token(renewed->access_token);
    response->set_instance_id(renewed->instance);
    response->set_expires_at(renewed->expires_at);
    spdlog::info("user {}: access token renewed for instance {} (expires {})",
                 ForLog(check.user.name), renewed->instance,
                 auth::FormatUnixUtc(renewed->expires_at));
    return grpc::Status::OK;
  } catch (...) {
    grpc::Status s = CurrentExceptionToStatus();
    spdlog::error("RenewToken for user {}: {}", ForLog(request->user()), s.error_message());
    return s;
  }
}

grpc::Status RegistryService::SendBundle(grpc::ServerContext* context, const std::string& user,
                                         const Bundle& bundle, const std::string& access_token,
                                         grpc::ServerWriter<v1::BundleChunk>* writer) {
  auto start = std::chrono::steady_clock::now();
  const std::string& instance = bundle.instance;
  const std::vector<OutgoingFile>& files = bundle.files;

  v1::BundleChunk header;
  v1::BundleHeader* h = header.mutable_header();
  h->set_user(user);
  h->set_instance_id(instance);
  h->set_server_address(config_.server_address);
  h->set_access_token(access_token);
  FillEntries(files, h->mutable_files());
  h->set_server_ca_pem(config_.server_ca_pem);
  if (!writer->Write(header)) return ToStatus(Cancelled("client went away"));

  uint64_t bytes = 0;
  std::string digest;
  try {
    digest = StreamFiles(files, config_.chunk_bytes, [&](const v1::FileChunk& chunk) {
      if (context && context->IsCancelled()) return false;
      v1::BundleChunk msg;
      *msg.mutable_chunk() = chunk;
      bytes += chunk.data().size();
      return writer->Write(msg);
    });
  } catch (const Error& e) {
    if (e.code() != ErrorCode::kInternal) throw;
    spdlog::warn("bundle for user {} broken off after {} bytes", ForLog(user), bytes);
    return ToStatus(Cancelled("bundle stream broken off"));
  }
  v1::BundleChunk trailer;
  trailer.mutable_trailer()->set_sha256(digest);
  if (!writer->Write(trailer)) {
    return ToStatus(Cancelled("client went away"));
  }
  users_->RecordBundle(user, instance);
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  spdlog::info("sent bundle of instance {} to user {}: {} files, {:.1f} MiB in {:.2f} s", instance,
               ForLog(user), files.size(), bytes / 1048576.0, s);
  return grpc::Status::OK;
}

}  // namespace stip
