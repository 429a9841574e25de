#include "common/util/sha256.h"

#include <openssl/evp.h>

#include "common/error.h"

namespace stip {

struct Sha256::Ctx {
  EVP_MD_CTX* md = nullptr;
  ~Ctx() { EVP_MD_CTX_free(md); }
};

Sha256::Sha256() : ctx_(std::make_unique<Ctx>()) {
  ctx_->md = EVP_MD_CTX_new();
  if (!ctx_->md || EVP_DigestInit_ex(ctx_->md, EVP_sha256(), nullptr) != 1) {
    throw Internal("cannot initialize SHA-256 (OpenSSL EVP)");
  }
}

Sha256::~Sha256() = default;

void Sha256::Update(const void* data, size_t n) {
  if (n > 0 && EVP_DigestUpdate(ctx_->md, data, n) != 1) {
    throw Internal("SHA-256 update failed (OpenSSL EVP)");
  }
}

std::array<uint8_t, Sha256::kBytes> Sha256::Finish() {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_DigestFinal_ex(ctx_->md, md, &len) != 1 || len != kBytes) {
    throw Internal("SHA-256 finalization failed (OpenSSL EVP)");
  }
  std::array<uint8_t, kBytes> out;
  for (size_t i = 0; i < kBytes; ++i) out[i] = md[i];
  return out;
}

std::string Sha256::HexDigest() {
  const std::array<uint8_t, kBytes> d = Finish();
  return HexBytes(d.data(), d.size());
}

std::string HexBytes(const uint8_t* bytes, size_t n) {
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(2 * n);
  for (size_t i = 0; i < n; ++i) {
    out += kHex[bytes[i] >> 4];
    out += kHex[bytes[i] & 15];
  }
  return out;
}

std::string Sha256Hex(std::string_view bytes) {
  Sha256 h;
  h.Update(bytes);
  return h.HexDigest();
}

}  // namespace stip
