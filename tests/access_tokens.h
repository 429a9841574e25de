// Access tokens signed by a test developer key, for tests that open sessions
// on a stip server directly (server_test, hostile_input_test).
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>

#include "common/auth/access_token.h"

namespace stip::test {

// The test developer's token signing key (one per process).
inline const auth::SigningKey& DeveloperKey() {
  static const auth::SigningKey key = auth::SigningKey::Generate();
  return key;
}

struct TokenSpec {
  std::string user = "alice";
  int64_t ttl_s = 3600;                   // from now; negative: expired
  std::string token_id;                   // "" = fresh
  const auth::SigningKey* key = nullptr;  // null: DeveloperKey()
};

inline std::string TokenFor(const std::string& instance, const TokenSpec& spec = {}) {
  auth::TokenClaims c;
  c.user = spec.user;
  c.instance = instance;
  c.token_id = spec.token_id.empty() ? auth::NewTokenId() : spec.token_id;
  const int64_t now = auth::NowUnix();
  c.expires_at = now + spec.ttl_s;
  c.issued_at = std::min(now, c.expires_at - 1);
  return auth::IssueToken(spec.key ? *spec.key : DeveloperKey(), c);
}

}  // namespace stip::test
