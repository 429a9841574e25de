// SHA-256 (OpenSSL EVP): the one wrapper that every digest in stip goes
// through -- transfer digests (common/rpc/file_transfer.h), model
// fingerprints (common/keys/model_keys.h), token key ids, enrolment token
// hashes. Throws kInternal if OpenSSL fails.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

namespace stip {

class Sha256 {
 public:
  static constexpr size_t kBytes = 32;

  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void Update(const void* data, size_t n);
  void Update(std::string_view bytes) { Update(bytes.data(), bytes.size()); }
  // Finishes the digest (Update may not be called afterwards).
  std::array<uint8_t, kBytes> Finish();
  std::string HexDigest();  // Finish() as 64 lowercase hex digits

 private:
  struct Ctx;
  std::unique_ptr<Ctx> ctx_;
};

// Lowercase hex of `bytes` (two digits per byte).
std::string HexBytes(const uint8_t* bytes, size_t n);
// The SHA-256 of `bytes`, as 64 lowercase hex digits.
std::string Sha256Hex(std::string_view bytes);

}  // namespace stip
