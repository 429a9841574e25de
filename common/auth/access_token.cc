#include "common/auth/access_token.h"

#include <openssl/rand.h>

#include <algorithm>
#include <ctime>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/util/random.h"

namespace stip::auth {

namespace {

constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

int DecodeChar(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '-') return 62;
  if (c == '_') return 63;
  return -1;
}

TokenCheck Refuse(TokenVerdict verdict, std::string message) {
  TokenCheck c;
  c.verdict = verdict;
  c.message = std::move(message);
  return c;
}

bool IsPrintableName(const std::string& s, size_t max) {
  return !s.empty() && s.size() <= max &&
         std::all_of(s.begin(), s.end(), [](char c) { return c > 0x20 && c < 0x7f; });
}

std::optional<TokenClaims> ParsePayload(const std::string& payload) {
  TokenClaims c;
  try {
    nlohmann::json j = nlohmann::json::parse(payload);
    if (!j.is_object() || j.value("v", 0) != 1) return std::nullopt;
    c.user = j.at("sub").get<std::string>();
    c.instance = j.at("ins").get<std::string>();
    c.token_id = j.at("jti").get<std::string>();
    c.key_id = j.at("kid").get<std::string>();
    c.issued_at = j.at("iat").get<int64_t>();
    c.expires_at = j.at("exp").get<int64_t>();
  } catch (const std::exception&) {
    return std::nullopt;
  }
  return c;
}

}  // namespace

std::string Base64UrlEncode(std::string_view bytes) {
  std::string out;
  out.reserve((bytes.size() * 4 + 2) / 3);
  size_t i = 0;
  for (; i + 3 <= bytes.size(); i += 3) {
    const uint32_t v = (uint32_t(uint8_t(bytes[i])) << 16) |
                       (uint32_t(uint8_t(bytes[i + 1])) << 8) | uint8_t(bytes[i + 2]);
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += kAlphabet[(v >> 6) & 63];
    out += kAlphabet[v & 63];
  }
  const size_t rest = bytes.size() - i;
  if (rest == 1) {
    const uint32_t v = uint32_t(uint8_t(bytes[i])) << 16;
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
  } else if (rest == 2) {
    const uint32_t v = (uint32_t(uint8_t(bytes[i])) << 16) | (uint32_t(uint8_t(bytes[i + 1])) << 8);
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += kAlphabet[(v >> 6) & 63];
  }
  return out;
}

std::optional<std::string> Base64UrlDecode(std::string_view text) {
  if (text.size() % 4 == 1) return std::nullopt;
  std::string out;
  out.reserve(text.size() * 3 / 4);
  uint32_t acc = 0;
  int bits = 0;
  for (char c : text) {
    const int v = DecodeChar(c);
    if (v < 0) return std::nullopt;
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((acc >> bits) & 0xff);
    }
  }
  if (bits > 0 && (acc & ((1u << bits) - 1)) != 0) return std::nullopt;  // stray bits
  return out;
}

std::string NewTokenId() { return RandomHex(16); }

int64_t NowUnix() { return static_cast<int64_t>(std::time(nullptr)); }

std::string FormatUnixUtc(int64_t t) {
  std::time_t tt = static_cast<std::time_t>(t);
  std::tm tm{};
  if (!gmtime_r(&tt, &tm)) return std::to_string(t);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

bool IsValidTokenId(std::string_view id) {
  return id.size() == 32 && std::all_of(id.begin(), id.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

std::string IssueToken(const SigningKey& key, TokenClaims claims) {
  if (!IsPrintableName(claims.user, 256) || !IsPrintableName(claims.instance, 64) ||
      !IsValidTokenId(claims.token_id)) {
    throw InvalidArgument("token: user, instance and token id must be set");
  }
  if (claims.expires_at <= claims.issued_at) {
    throw InvalidArgument("token: it must expire after it is issued");
  }
  claims.key_id = key.public_key().key_id();
  nlohmann::json payload = {{"v", 1},
                            {"sub", claims.user},
                            {"ins", claims.instance},
                            {"iat", claims.issued_at},
                            {"exp", claims.expires_at},
                            {"jti", claims.token_id},
                            {"kid", claims.key_id}};
  const std::string signed_part = std::string(kTokenPrefix) + "." + Base64UrlEncode(payload.dump());
  return signed_part + "." + Base64UrlEncode(key.Sign(signed_part));
}

TokenCheck VerifyToken(const PublicKey& key, std::string_view token, std::string_view instance,
                       int64_t now, const std::function<bool(const std::string&)>& is_revoked) {
  if (token.empty()) return Refuse(TokenVerdict::kMalformed, "no access token");
  if (token.size() > kMaxTokenBytes) {
    return Refuse(TokenVerdict::kMalformed, "the access token is too long");
  }
  const size_t first = token.find('.');
  const size_t last = token.rfind('.');
  if (first == std::string_view::npos || first == last ||
      token.substr(0, first) != std::string_view(kTokenPrefix)) {
    return Refuse(TokenVerdict::kMalformed, "the access token is not a stip1 token");
  }
  const std::string_view signed_part = token.substr(0, last);
  std::optional<std::string> payload = Base64UrlDecode(token.substr(first + 1, last - first - 1));
  std::optional<std::string> signature = Base64UrlDecode(token.substr(last + 1));
  if (!payload || !signature) {
    return Refuse(TokenVerdict::kMalformed, "the access token is not validly encoded");
  }
  if (!key.Verify(signed_part, *signature)) {
    return Refuse(TokenVerdict::kBadSignature,
                  "the access token's signature does not verify (not issued by this model's "
                  "developer, or altered)");
  }
  std::optional<TokenClaims> parsed = ParsePayload(*payload);
  if (!parsed) return Refuse(TokenVerdict::kMalformed, "the access token's payload is not valid");
  TokenClaims c = *parsed;
  if (c.key_id != key.key_id() || !IsValidTokenId(c.token_id) || c.user.empty() ||
      c.instance.empty()) {
    return Refuse(TokenVerdict::kMalformed, "the access token's payload is not valid");
  }
  TokenCheck check;
  check.claims = c;
  if (now >= c.expires_at) {
    check.verdict = TokenVerdict::kExpired;
    check.message = "the access token expired at " + FormatUnixUtc(c.expires_at) +
                    "; ask the developer for a new one";
    return check;
  }
  if (!instance.empty() && c.instance != instance) {
    check.verdict = TokenVerdict::kWrongInstance;
    check.message = "the access token is for another model instance";
    return check;
  }
  if (is_revoked && is_revoked(c.token_id)) {
    check.verdict = TokenVerdict::kRevoked;
    check.message = "the access token has been revoked by the developer";
    return check;
  }
  check.verdict = TokenVerdict::kOk;
  return check;
}

TokenCheck VerifyTokenWithKeys(const PublicKey& current,
                               const std::vector<PreviousTokenKey>& previous,
                               std::string_view token, std::string_view instance, int64_t now,
                               const std::function<bool(const std::string&)>& is_revoked) {
  TokenCheck check = VerifyToken(current, token, instance, now, is_revoked);
  if (check.verdict != TokenVerdict::kBadSignature || previous.empty()) return check;
  // Only the key the token names can have signed it.
  std::optional<TokenClaims> claimed = ReadClaimsUnverified(token);
  if (!claimed) return check;
  for (const PreviousTokenKey& p : previous) {
    if (p.key.key_id() != claimed->key_id) continue;
    TokenCheck with_previous = VerifyToken(p.key, token, instance, now, is_revoked);
    // Why it is refused is said only to the holder of a genuine token.
    if (with_previous.verdict != TokenVerdict::kBadSignature && now >= p.accepted_until) {
      return Refuse(TokenVerdict::kBadSignature,
                    "the access token was signed by token key " + p.key.key_id() +
                        ", which the developer replaced (accepted until " +
                        FormatUnixUtc(p.accepted_until) + "); ask the developer for a new one");
    }
    return with_previous;
  }
  return check;
}

std::optional<TokenClaims> ReadClaimsUnverified(std::string_view token) {
  if (token.size() > kMaxTokenBytes) return std::nullopt;
  const size_t first = token.find('.');
  const size_t last = token.rfind('.');
  if (first == std::string_view::npos || first == last ||
      token.substr(0, first) != std::string_view(kTokenPrefix)) {
    return std::nullopt;
  }
  std::optional<std::string> payload = Base64UrlDecode(token.substr(first + 1, last - first - 1));
  if (!payload) return std::nullopt;
  return ParsePayload(*payload);
}

}  // namespace stip::auth
