#include "server/access_policy.h"

#include "common/auth/access_token.h"
#include "common/error.h"
#include "server/model_store.h"

namespace stip {

AccessGrant SignedTokenPolicy::Authorize(const std::string& instance_id,
                                         const std::string& access_token) const {
  if (access_token.empty()) {
    throw Unauthenticated("open: an access token is required (from the client bundle)");
  }
  std::shared_ptr<const InstanceAccess> access = store_.Access(instance_id);
  if (!access) {
    throw FailedPrecondition("open: model instance " + instance_id +
                             " has no registered token key; the developer registers it when it "
                             "pushes the model");
  }
  const auth::TokenCheck check = auth::VerifyTokenWithKeys(
      *access->key, access->previous, access_token, instance_id, auth::NowUnix(),
      [&](const std::string& id) { return access->IsRevoked(id); });
  switch (check.verdict) {
    case auth::TokenVerdict::kOk:
      return AccessGrant{check.claims.user, check.claims.token_id};
    case auth::TokenVerdict::kWrongInstance:
    case auth::TokenVerdict::kRevoked:
      throw PermissionDenied("open: " + check.message);
    case auth::TokenVerdict::kExpired:
    case auth::TokenVerdict::kMalformed:
    case auth::TokenVerdict::kBadSignature:
      break;
  }
  throw Unauthenticated("open: " + check.message);
}

}  // namespace stip
