// Signed access tokens: what a user presents to open sessions on a model
// instance. The developer issues them (Registry); servers verify them with the
// developer's public key, registered per instance (ModelStore.SetAccess).
//
//   stip1.<base64url(payload)>.<base64url(signature)>
//
// payload: compact JSON {"v":1,"sub":USER,"ins":INSTANCE,"iat":UNIX,"exp":UNIX,
// "jti":TOKEN_ID,"kid":KEY_ID}; signature: Ed25519 over the ASCII bytes
// "stip1." + base64url(payload) (base64url without padding, RFC 4648 §5).
// The token id (32 hex digits, random) is what revocation lists name; only
// ids (never tokens) are stored by the developer and the servers.
//
// Verification order: size and shape, signature (UNAUTHENTICATED on the
// wire), payload fields, expiry (UNAUTHENTICATED, "expired"), instance
// (PERMISSION_DENIED), revocation (PERMISSION_DENIED). Messages never
// contain the token. Torch-free, gRPC-free.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/auth/ed25519.h"

namespace stip::auth {

inline constexpr char kTokenPrefix[] = "stip1";
inline constexpr size_t kMaxTokenBytes = 4096;

std::string Base64UrlEncode(std::string_view bytes);
// nullopt unless `text` is unpadded base64url with no stray bits.
std::optional<std::string> Base64UrlDecode(std::string_view text);

struct TokenClaims {
  std::string user;
  std::string instance;
  std::string token_id;    // 32 lowercase hex digits
  std::string key_id;      // of the signing key
  int64_t issued_at = 0;   // unix seconds
  int64_t expires_at = 0;  // unix seconds; the token is refused from this second on
};

// 16 random bytes (OpenSSL RAND_bytes) as 32 lowercase hex digits.
std::string NewTokenId();
int64_t NowUnix();
// "2024-05-01T12:00:00Z".
std::string FormatUnixUtc(int64_t t);

// Signs `claims` (key_id is set from `key`). kInvalidArgument for empty
// fields or expires_at <= issued_at.
std::string IssueToken(const SigningKey& key, TokenClaims claims);

enum class TokenVerdict {
  kOk,
  kMalformed,      // not a stip1 token, bad encoding, bad payload
  kBadSignature,   // not signed by this key
  kExpired,        // now >= exp
  kWrongInstance,  // signed by this key, for another instance
  kRevoked,        // its id is revoked
};

struct TokenCheck {
  TokenVerdict verdict = TokenVerdict::kMalformed;
  TokenClaims claims;   // filled once the signature verified
  std::string message;  // for the caller (never the token itself)
  bool ok() const { return verdict == TokenVerdict::kOk; }
};

// Checks `token` against `key`; `instance` "" accepts any instance;
// `is_revoked` (may be empty) is asked about the token id.
TokenCheck VerifyToken(const PublicKey& key, std::string_view token, std::string_view instance,
                       int64_t now, const std::function<bool(const std::string&)>& is_revoked = {});

// After `stip-developer rotate-token-key`, tokens signed by the previous key
// are still accepted until `accepted_until`, so that users renew onto the new
// key (or, after a compromise, not at all: accepted_until = the rotation).
struct PreviousTokenKey {
  PublicKey key;
  int64_t accepted_until = 0;  // unix seconds; refused from this second on
};

// VerifyToken with `current`, else with the previous key that signed the
// token if it is still accepted at `now`. A token of a previous key no longer
// accepted is kBadSignature with a message that says so.
TokenCheck VerifyTokenWithKeys(const PublicKey& current,
                               const std::vector<PreviousTokenKey>& previous,
                               std::string_view token, std::string_view instance, int64_t now,
                               const std::function<bool(const std::string&)>& is_revoked = {});

// An entry of a revocation list: a token id and when that token expires
// anyway (after which the entry may be dropped).
struct RevokedToken {
  std::string token_id;
  int64_t expires_at = 0;
};

bool IsValidTokenId(std::string_view id);

// The claims of a token as its holder reads them, WITHOUT checking the
// signature (a client knows when its own token expires and renews it in
// time); nullopt if it is not a well-formed stip1 token. Never use it to
// decide access.
std::optional<TokenClaims> ReadClaimsUnverified(std::string_view token);

}  // namespace stip::auth
