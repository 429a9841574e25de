// Who may open a session on which model instance. Sessions present an access
// token that the developer signed (common/auth/access_token.h); the server
// checks it with the token key the developer registered for the instance
// (ModelStore.SetAccess), before any work is done. Policies never log or echo
// the token.
#pragma once

#include <grpcpp/support/status.h>

#include <memory>
#include <string>

namespace stip::server {

class ModelStore;

// What an accepted token says (for logs).
struct AccessGrant {
  std::string user;
  std::string token_id;
};

class AccessPolicy {
 public:
  virtual ~AccessPolicy() = default;
  // OK to let the session open (and `grant`, if given, filled); else
  //   UNAUTHENTICATED     no token, malformed, forged, expired ("expired")
  //   PERMISSION_DENIED   valid, but for another instance, or revoked
  //   NOT_FOUND           unknown instance
  //   FAILED_PRECONDITION no token key registered for the instance
  virtual grpc::Status Authorize(const std::string& instance_id, const std::string& access_token,
                                 AccessGrant* grant = nullptr) const = 0;
};

// Tokens signed with the key registered for the instance in the store, not
// expired, for this instance, not revoked.
class SignedTokenPolicy : public AccessPolicy {
 public:
  explicit SignedTokenPolicy(const ModelStore& store) : store_(store) {}
  grpc::Status Authorize(const std::string& instance_id, const std::string& access_token,
                         AccessGrant* grant = nullptr) const override;

 private:
  const ModelStore& store_;
};

}  // namespace stip::server
