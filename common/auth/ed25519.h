// Ed25519 keys (OpenSSL EVP) for signing and verifying access tokens.
//
// The developer holds one SigningKey (PKCS#8 PEM, mode 0600, in its state
// directory, made on first use); servers hold its PublicKey (SubjectPublicKeyInfo
// PEM), registered per model instance. Key ids are the first 16 bytes of the
// SHA-256 of the raw 32-byte public key, in hex. Error messages never contain
// key material. Torch-free, gRPC-free.
#pragma once

#include <memory>
#include <string>
#include <string_view>

typedef struct evp_pkey_st EVP_PKEY;

namespace stip::auth {

class PublicKey {
 public:
  // kInvalidArgument unless `pem` is one Ed25519 public key (SPKI PEM).
  static PublicKey FromPem(const std::string& pem);

  const std::string& pem() const { return pem_; }
  const std::string& key_id() const { return key_id_; }  // 32 hex digits
  // True iff `signature` is this key's Ed25519 signature of `message`.
  bool Verify(std::string_view message, std::string_view signature) const;

 private:
  friend class SigningKey;
  explicit PublicKey(std::shared_ptr<EVP_PKEY> key);
  std::shared_ptr<EVP_PKEY> key_;
  std::string pem_, key_id_;
};

class SigningKey {
 public:
  static SigningKey Generate();
  // kInvalidArgument unless `pem` is one Ed25519 private key (PKCS#8 PEM).
  static SigningKey FromPem(const std::string& pem);
  // Loads the key at `path`, or makes one and writes it there (0600) if there
  // is none. Two processes racing to make it end up with the same key (the
  // file is linked into place only if absent). Refuses (kFailedPrecondition) a
  // key file that others may read.
  static SigningKey LoadOrCreate(const std::string& path, bool* created = nullptr);

  std::string PrivatePem() const;  // secret
  const PublicKey& public_key() const { return public_; }
  std::string Sign(std::string_view message) const;  // 64 bytes

 private:
  explicit SigningKey(std::shared_ptr<EVP_PKEY> key);
  std::shared_ptr<EVP_PKEY> key_;
  PublicKey public_;
};

}  // namespace stip::auth
