// Who may open a session on which model instance. Sessions present an access
// token that the developer signed (common/auth/access_token.h); the server
// checks it with the token key the developer registered for the instance
// (ModelStore.SetAccess), before any work is done. Policies never log or echo
// the token.
#pragma once

#include <memory>
#include <string>

namespace stip {

class ModelStore;

// What an accepted token says (for logs).
struct AccessGrant {
  std::string user;
  std::string token_id;
};

class AccessPolicy {
 public:
  virtual ~AccessPolicy() = default;
  // The grant if the session may open; else throws stip::Error:
  //   kUnauthenticated     no token, malformed, forged, expired ("expired")
  //   kPermissionDenied    valid, but for another instance, or revoked
  //   kNotFound            unknown instance
  //   kFailedPrecondition  no token key registered for the instance
  virtual AccessGrant Authorize(const std::string& instance_id,
                                const std::string& access_token) const = 0;
};

// Tokens signed with the key registered for the instance in the store, not
// expired, for this instance, not revoked.
class SignedTokenPolicy : public AccessPolicy {
 public:
  explicit SignedTokenPolicy(const ModelStore& store) : store_(store) {}
  AccessGrant Authorize(const std::string& instance_id,
                        const std::string& access_token) const override;

 private:
  const ModelStore& store_;
};

}  // namespace stip
