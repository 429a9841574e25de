// The developer's Registry service (stip.v1.Registry), for clients:
//
//   Register{user, enrolment_token}  checks the one-time token (its hash, in
//     constant time), marks it used and issues a signed access token for the
//     user's instance (its id persisted before anything is sent), then streams
//     the bundle. The bundle is located first: if there is none to send (no
//     instance), a valid token is not consumed and the caller gets the error.
//   FetchBundle{user, access_token}  checks the access token (signature, the
//     user's latest, not expired, not revoked) and streams the bundle of the
//     user's current instance, with the same token -- or a fresh one if the
//     user's instance has changed since it was issued.
//   RenewToken{user, access_token}  checks the access token likewise and
//     issues a fresh one for the user's current instance (the presented one
//     is revoked): clients renew at half their token's lifetime. An expired
//     token is not renewed.
//
// The user's instance: the pinned one, else the group's (instance_groups.h);
// while a new group's first instance is being deployed, FAILED_PRECONDITION
// (and an enrolment token is not consumed).
//
// The bundle stream: header {user, instance_id, server_address, access_token,
// files (the instance's client/ directory, modes kept), server_ca_pem},
// chunks of at most chunk_bytes, trailer {sha256} (common/rpc/file_transfer.h).
//
// Any credential failure, including an unknown user, is UNAUTHENTICATED with
// one fixed message, so that callers learn neither who exists nor which part
// was wrong -- except, for a token that verifies, "expired" (UNAUTHENTICATED)
// and "revoked" (PERMISSION_DENIED).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "common/auth/ed25519.h"
#include "common/rpc/file_transfer.h"
#include "developer/user_registry.h"
#include "stip/v1/stip.grpc.pb.h"

namespace stip {

class StateStore;

struct RegistryConfig {
  std::string server_address;  // host:port of the stip-server clients use
  std::string server_ca_pem;   // CA of the server's certificate ("" = system roots)
  size_t chunk_bytes = size_t{1} << 20;
  int64_t token_ttl_s = int64_t{720} * 3600;  // lifetime of the access tokens issued
  // Signs access tokens; null: the state's key (made on first use).
  std::shared_ptr<const auth::SigningKey> signing_key;
};

inline constexpr char kBadEnrolmentMessage[] = "enrolment token is invalid or already used";
inline constexpr char kBadAccessMessage[] = "access token is invalid";
inline constexpr char kRevokedAccessMessage[] = "access has been revoked by the developer";

class RegistryService final : public v1::Registry::Service {
 public:
  RegistryService(StateStore* state, UserRegistry* users, RegistryConfig config);

  grpc::Status Register(grpc::ServerContext* context, const v1::RegisterRequest* request,
                        grpc::ServerWriter<v1::BundleChunk>* writer) override;
  grpc::Status FetchBundle(grpc::ServerContext* context, const v1::FetchBundleRequest* request,
                           grpc::ServerWriter<v1::BundleChunk>* writer) override;
  grpc::Status RenewToken(grpc::ServerContext* context, const v1::RenewTokenRequest* request,
                          v1::RenewTokenResponse* response) override;

 private:
  struct Bundle {
    std::string instance;
    std::vector<OutgoingFile> files;
  };
  // What a user is served: the client directory of the user's instance.
  // Throws (kFailedPrecondition, kNotFound, kDataLoss) when there is nothing
  // to send.
  Bundle BundleFor(const UserRecord& user) const;
  // Checks an access token (UserRegistry::Authenticate); a refusal is
  // returned as the status to send, and logged.
  grpc::Status CheckAccess(grpc::ServerContext* context, const std::string& user,
                           const std::string& access_token, const char* what,
                           UserRegistry::AccessCheck* check) const;
  grpc::Status SendBundle(grpc::ServerContext* context, const std::string& user,
                          const Bundle& bundle, const std::string& access_token,
                          grpc::ServerWriter<v1::BundleChunk>* writer);

  StateStore* state_;
  UserRegistry* users_;
  RegistryConfig config_;
  std::shared_ptr<const auth::SigningKey> key_;
};

}  // namespace stip
