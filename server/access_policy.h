// Who may open a session on which model instance. Access control proper comes
// with the developer's registry (per-user tokens); until then the server
// accepts any non-empty token. Policies must never log or echo the token.
#pragma once

#include <grpcpp/support/status.h>

#include <memory>
#include <string>

namespace stip::server {

class AccessPolicy {
 public:
  virtual ~AccessPolicy() = default;
  // OK to let the session open; else UNAUTHENTICATED (no or bad credentials)
  // or PERMISSION_DENIED (valid credentials, not for this instance).
  virtual grpc::Status Authorize(const std::string& instance_id,
                                 const std::string& access_token) const = 0;
};

// Any non-empty token opens a session on any stored model.
class AnyTokenPolicy : public AccessPolicy {
 public:
  grpc::Status Authorize(const std::string& instance_id,
                         const std::string& access_token) const override;
};

std::shared_ptr<const AccessPolicy> DefaultAccessPolicy();

}  // namespace stip::server
