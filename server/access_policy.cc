#include "server/access_policy.h"

#include "common/auth/access_token.h"
#include "common/rpc/status.h"
#include "server/model_store.h"

namespace stip::server {

grpc::Status SignedTokenPolicy::Authorize(const std::string& instance_id,
                                          const std::string& access_token,
                                          AccessGrant* grant) const {
  if (access_token.empty()) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "open: an access token is required (from the client bundle)");
  }
  std::shared_ptr<const InstanceAccess> access;
  try {
    access = store_.Access(instance_id);
  } catch (...) {
    return CurrentExceptionToStatus();
  }
  if (!access) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        "open: model instance " + instance_id +
                            " has no registered token key; the developer registers it when it "
                            "pushes the model");
  }
  const auth::TokenCheck check = auth::VerifyTokenWithKeys(
      *access->key, access->previous, access_token, instance_id, auth::NowUnix(),
      [&](const std::string& id) { return access->IsRevoked(id); });
  switch (check.verdict) {
    case auth::TokenVerdict::kOk:
      if (grant) {
        grant->user = check.claims.user;
        grant->token_id = check.claims.token_id;
      }
      return grpc::Status::OK;
    case auth::TokenVerdict::kWrongInstance:
    case auth::TokenVerdict::kRevoked:
      return grpc::Status(grpc::StatusCode::PERMISSION_DENIED, "open: " + check.message);
    case auth::TokenVerdict::kExpired:
    case auth::TokenVerdict::kMalformed:
    case auth::TokenVerdict::kBadSignature:
      break;
  }
  return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "open: " + check.message);
}

}  // namespace stip::server
