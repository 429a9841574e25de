#include "server/access_policy.h"

namespace stip::server {

grpc::Status AnyTokenPolicy::Authorize(const std::string& /*instance_id*/,
                                       const std::string& access_token) const {
  if (access_token.empty()) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "open: an access token is required (from the client bundle)");
  }
  return grpc::Status::OK;
}

std::shared_ptr<const AccessPolicy> DefaultAccessPolicy() {
  return std::make_shared<AnyTokenPolicy>();
}

}  // namespace stip::server
