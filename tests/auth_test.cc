// Access tokens (common/auth): base64url, Ed25519 keys, issuing and verifying
// signed tokens, each refusal with its verdict. Torch-free, gRPC-free.
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>
#include <set>

#include "common/auth/access_token.h"
#include "common/error.h"
#include "tests/temp_dir.h"

namespace stip::auth {
namespace {

const std::string kInstance = "00112233445566778899aabbccddeeff";

TokenClaims Claims(int64_t expires_in = 3600) {
  TokenClaims c;
  c.user = "alice";
  c.instance = kInstance;
  c.token_id = NewTokenId();
  c.issued_at = NowUnix() - 10;
  c.expires_at = NowUnix() + expires_in;
  return c;
}

TEST(Base64Url, RoundTripsAndRejectsWhatIsNotBase64Url) {
  for (const std::string s :
       {"", "f", "fo", "foo", "foob", "fooba", "foobar", "\xff\xfe\x00\x01"}) {
    std::string enc = Base64UrlEncode(s);
    EXPECT_EQ(enc.find('='), std::string::npos);
    EXPECT_EQ(enc.find('+'), std::string::npos);
    EXPECT_EQ(enc.find('/'), std::string::npos);
    EXPECT_EQ(Base64UrlDecode(enc), s) << enc;
  }
  EXPECT_EQ(Base64UrlEncode("\xfb\xff"), "-_8");
  EXPECT_FALSE(Base64UrlDecode("Zm9v=").has_value());  // padding
  EXPECT_FALSE(Base64UrlDecode("Zm+v").has_value());   // standard alphabet
  EXPECT_FALSE(Base64UrlDecode("Z").has_value());      // impossible length
  EXPECT_FALSE(Base64UrlDecode("Zh").has_value());     // stray bits
}

TEST(Keys, PemRoundTripAndOnlyEd25519) {
  SigningKey key = SigningKey::Generate();
  SigningKey again = SigningKey::FromPem(key.PrivatePem());
  EXPECT_EQ(again.public_key().key_id(), key.public_key().key_id());
  EXPECT_EQ(key.public_key().key_id().size(), 32u);
  PublicKey pub = PublicKey::FromPem(key.public_key().pem());
  EXPECT_EQ(pub.key_id(), key.public_key().key_id());
  EXPECT_TRUE(pub.Verify("message", key.Sign("message")));
  EXPECT_FALSE(pub.Verify("massage", key.Sign("message")));
  EXPECT_FALSE(pub.Verify("message", "short"));
  EXPECT_NE(SigningKey::Generate().public_key().key_id(), pub.key_id());
  EXPECT_THROW(PublicKey::FromPem("garbage"), Error);
  EXPECT_THROW(PublicKey::FromPem(key.PrivatePem()), Error);
  EXPECT_THROW(SigningKey::FromPem(key.public_key().pem()), Error);

  // An EC P-256 key is not accepted as a token key.
  EVP_PKEY* ec = EVP_EC_gen("P-256");
  ASSERT_NE(ec, nullptr);
  BIO* bio = BIO_new(BIO_s_mem());
  PEM_write_bio_PUBKEY(bio, ec);
  char* data = nullptr;
  long n = BIO_get_mem_data(bio, &data);
  std::string ec_pem(data, static_cast<size_t>(n));
  BIO_free(bio);
  EVP_PKEY_free(ec);
  try {
    PublicKey::FromPem(ec_pem);
    ADD_FAILURE() << "an EC key was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("Ed25519"), std::string::npos) << e.what();
  }
}

TEST(Tokens, IssuedTokensVerifyAndCarryTheirClaims) {
  SigningKey key = SigningKey::Generate();
  TokenClaims c = Claims();
  std::string token = IssueToken(key, c);
  EXPECT_EQ(token.rfind("stip1.", 0), 0u);
  EXPECT_LT(token.size(), kMaxTokenBytes);
  TokenCheck check = VerifyToken(key.public_key(), token, kInstance, NowUnix());
  ASSERT_TRUE(check.ok()) << check.message;
  EXPECT_EQ(check.claims.user, c.user);
  EXPECT_EQ(check.claims.instance, c.instance);
  EXPECT_EQ(check.claims.token_id, c.token_id);
  EXPECT_EQ(check.claims.expires_at, c.expires_at);
  EXPECT_EQ(check.claims.issued_at, c.issued_at);
  EXPECT_EQ(check.claims.key_id, key.public_key().key_id());
  EXPECT_TRUE(VerifyToken(key.public_key(), token, "", NowUnix()).ok());  // any instance
  // The payload is plain JSON under base64url.
  const size_t a = token.find('.'), b = token.rfind('.');
  nlohmann::json j = nlohmann::json::parse(*Base64UrlDecode(token.substr(a + 1, b - a - 1)));
  EXPECT_EQ(j["v"], 1);
  EXPECT_EQ(j["sub"], "alice");
  EXPECT_EQ(j["ins"], kInstance);
  EXPECT_EQ(j["jti"], c.token_id);

  TokenClaims bad = Claims();
  bad.expires_at = bad.issued_at;
  EXPECT_THROW(IssueToken(key, bad), Error);
  bad = Claims();
  bad.token_id = "x";
  EXPECT_THROW(IssueToken(key, bad), Error);
  std::set<std::string> ids;
  for (int i = 0; i < 100; ++i) ids.insert(NewTokenId());
  EXPECT_EQ(ids.size(), 100u);
  for (const std::string& id : ids) EXPECT_TRUE(IsValidTokenId(id));
}

TEST(Tokens, EveryRefusalHasItsVerdict) {
  SigningKey key = SigningKey::Generate();
  const PublicKey& pub = key.public_key();
  const int64_t now = NowUnix();
  TokenClaims c = Claims();
  const std::string token = IssueToken(key, c);
  auto verdict = [&](const std::string& t, const std::string& instance = kInstance,
                     int64_t at = NowUnix()) { return VerifyToken(pub, t, instance, at).verdict; };

  EXPECT_EQ(verdict(""), TokenVerdict::kMalformed);
  EXPECT_EQ(verdict("stip1"), TokenVerdict::kMalformed);
  EXPECT_EQ(verdict("stip2" + token.substr(5)), TokenVerdict::kMalformed);
  EXPECT_EQ(verdict(token + "."), TokenVerdict::kMalformed);
  EXPECT_EQ(verdict(std::string(kMaxTokenBytes + 1, 'a')), TokenVerdict::kMalformed);
  // Another key's signature; a flipped signature byte; a changed payload.
  EXPECT_EQ(verdict(IssueToken(SigningKey::Generate(), c)), TokenVerdict::kBadSignature);
  const size_t a = token.find('.'), b = token.rfind('.');
  std::string sig = *Base64UrlDecode(token.substr(b + 1));
  sig[10] ^= 1;
  EXPECT_EQ(verdict(token.substr(0, b + 1) + Base64UrlEncode(sig)), TokenVerdict::kBadSignature);
  std::string payload = *Base64UrlDecode(token.substr(a + 1, b - a - 1));
  payload.replace(payload.find(kInstance), kInstance.size(), std::string(32, 'f'));
  EXPECT_EQ(verdict(token.substr(0, a + 1) + Base64UrlEncode(payload) + token.substr(b)),
            TokenVerdict::kBadSignature);
  // A validly signed payload that is not a token payload.
  const std::string signed_part = "stip1." + Base64UrlEncode("{\"v\":2}");
  EXPECT_EQ(verdict(signed_part + "." + Base64UrlEncode(key.Sign(signed_part))),
            TokenVerdict::kMalformed);
  // Expiry is exact: valid up to the second before exp.
  EXPECT_EQ(verdict(token, kInstance, c.expires_at - 1), TokenVerdict::kOk);
  TokenCheck expired = VerifyToken(pub, token, kInstance, c.expires_at);
  EXPECT_EQ(expired.verdict, TokenVerdict::kExpired);
  EXPECT_NE(expired.message.find("expired"), std::string::npos);
  EXPECT_EQ(verdict(token, std::string(32, 'f'), now), TokenVerdict::kWrongInstance);
  TokenCheck revoked = VerifyToken(pub, token, kInstance, now,
                                   [&](const std::string& id) { return id == c.token_id; });
  EXPECT_EQ(revoked.verdict, TokenVerdict::kRevoked);
  // Messages never quote the token.
  for (const TokenCheck& t : {expired, revoked, VerifyToken(pub, token + "x", kInstance, now)}) {
    EXPECT_EQ(t.message.find(token.substr(a + 1, 20)), std::string::npos) << t.message;
  }
}

// After a rotation of the signing key, a verifier takes the previous key's
// tokens until its accepted_until, and says why once it does not.
TEST(Tokens, PreviousKeysVerifyUntilTheirTime) {
  SigningKey old_key = SigningKey::Generate(), new_key = SigningKey::Generate();
  const int64_t now = NowUnix();
  TokenClaims c = Claims();
  const std::string old_token = IssueToken(old_key, c), new_token = IssueToken(new_key, c);
  const std::vector<PreviousTokenKey> previous = {{old_key.public_key(), now + 60}};
  auto check = [&](const std::string& t, const std::vector<PreviousTokenKey>& p, int64_t at,
                   std::function<bool(const std::string&)> revoked = {}) {
    return VerifyTokenWithKeys(new_key.public_key(), p, t, kInstance, at, revoked);
  };
  EXPECT_TRUE(check(new_token, previous, now).ok());
  EXPECT_TRUE(check(new_token, {}, now).ok());
  TokenCheck t = check(old_token, previous, now);
  ASSERT_TRUE(t.ok()) << t.message;
  EXPECT_EQ(t.claims.key_id, old_key.public_key().key_id());
  // Revocation and instance checks still apply to the previous key's tokens.
  EXPECT_EQ(check(old_token, previous, now, [&](const std::string& id) { return id == c.token_id; })
                .verdict,
            TokenVerdict::kRevoked);
  EXPECT_EQ(
      VerifyTokenWithKeys(new_key.public_key(), previous, old_token, std::string(32, 'f'), now)
          .verdict,
      TokenVerdict::kWrongInstance);
  // From accepted_until on: refused, saying the key was replaced.
  t = check(old_token, previous, now + 60);
  EXPECT_EQ(t.verdict, TokenVerdict::kBadSignature);
  EXPECT_NE(t.message.find("which the developer replaced"), std::string::npos) << t.message;
  EXPECT_EQ(check(old_token, previous, now + 59).verdict, TokenVerdict::kOk);
  // Not listed at all (e.g. after --revoke-previous): an unknown signature.
  EXPECT_EQ(check(old_token, {}, now).verdict, TokenVerdict::kBadSignature);
  // A token that names the previous key's id but was signed by another key.
  TokenClaims forged_claims = c;
  std::string forged = IssueToken(SigningKey::Generate(), forged_claims);
  const size_t a = forged.find('.'), b = forged.rfind('.');
  std::string payload = *Base64UrlDecode(forged.substr(a + 1, b - a - 1));
  nlohmann::json j = nlohmann::json::parse(payload);
  j["kid"] = old_key.public_key().key_id();
  forged = forged.substr(0, a + 1) + Base64UrlEncode(j.dump()) + forged.substr(b);
  EXPECT_EQ(check(forged, previous, now).verdict, TokenVerdict::kBadSignature);
}

TEST(Keys, LoadOrCreateMakesOnePrivateKeyFile) {
  test::TempDir dir("stip-auth-test");
  const std::string path = dir / "key.pem";
  bool created = false;
  SigningKey a = SigningKey::LoadOrCreate(path, &created);
  EXPECT_TRUE(created);
  struct stat st;
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  SigningKey b = SigningKey::LoadOrCreate(path, &created);
  EXPECT_FALSE(created);
  EXPECT_EQ(a.public_key().key_id(), b.public_key().key_id());
  chmod(path.c_str(), 0640);
  EXPECT_THROW(SigningKey::LoadOrCreate(path), Error);
}

}  // namespace
}  // namespace stip::auth
