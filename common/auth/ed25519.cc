#include "common/auth/ed25519.h"

#include <fcntl.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "common/error.h"
#include "common/util/files.h"
#include "common/util/sha256.h"

namespace stip::auth {

namespace {

std::shared_ptr<EVP_PKEY> Own(EVP_PKEY* key) {
  return std::shared_ptr<EVP_PKEY>(key, [](EVP_PKEY* k) { EVP_PKEY_free(k); });
}

std::string BioContents(BIO* bio) {
  char* data = nullptr;
  long n = BIO_get_mem_data(bio, &data);
  return n > 0 ? std::string(data, static_cast<size_t>(n)) : std::string();
}

std::unique_ptr<BIO, int (*)(BIO*)> MemBio(const std::string& text) {
  if (text.size() > (1u << 20)) throw InvalidArgument("key PEM is too large");
  return {BIO_new_mem_buf(text.data(), static_cast<int>(text.size())), BIO_free};
}

std::string PublicPem(EVP_PKEY* key) {
  std::unique_ptr<BIO, int (*)(BIO*)> bio(BIO_new(BIO_s_mem()), BIO_free);
  if (!bio || PEM_write_bio_PUBKEY(bio.get(), key) != 1) {
    throw Internal("cannot encode an Ed25519 public key");
  }
  return BioContents(bio.get());
}

std::string KeyId(EVP_PKEY* key) {
  unsigned char raw[64];
  size_t len = sizeof raw;
  if (EVP_PKEY_get_raw_public_key(key, raw, &len) != 1) {
    throw Internal("cannot read an Ed25519 public key");
  }
  Sha256 sha;
  sha.Update(raw, len);
  return HexBytes(sha.Finish().data(), 16);
}

std::string Errno() { return std::strerror(errno); }

}  // namespace

// ---- PublicKey ------------------------------------------------------------------

PublicKey::PublicKey(std::shared_ptr<EVP_PKEY> key) : key_(std::move(key)) {
  pem_ = PublicPem(key_.get());
  key_id_ = KeyId(key_.get());
}

PublicKey PublicKey::FromPem(const std::string& pem) {
  auto bio = MemBio(pem);
  EVP_PKEY* raw = bio ? PEM_read_bio_PUBKEY(bio.get(), nullptr, nullptr, nullptr) : nullptr;
  if (!raw) throw InvalidArgument("not a PEM public key");
  std::shared_ptr<EVP_PKEY> key = Own(raw);
  if (EVP_PKEY_id(key.get()) != EVP_PKEY_ED25519) {
    throw InvalidArgument("the public key is not an Ed25519 key");
  }
  return PublicKey(std::move(key));
}

bool PublicKey::Verify(std::string_view message, std::string_view signature) const {
  if (signature.size() != 64) return false;
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  if (!ctx || EVP_DigestVerifyInit(ctx.get(), nullptr, nullptr, nullptr, key_.get()) != 1) {
    return false;
  }
  return EVP_DigestVerify(ctx.get(), reinterpret_cast<const unsigned char*>(signature.data()),
                          signature.size(), reinterpret_cast<const unsigned char*>(message.data()),
                          message.size()) == 1;
}

// ---- SigningKey -----------------------------------------------------------------

SigningKey::SigningKey(std::shared_ptr<EVP_PKEY> key) : key_(key), public_(key) {}

SigningKey SigningKey::Generate() {
  EVP_PKEY* raw = nullptr;
  std::unique_ptr<EVP_PKEY_CTX, void (*)(EVP_PKEY_CTX*)> ctx(
      EVP_PKEY_CTX_new_id(EVP_PKEY_ED25519, nullptr), EVP_PKEY_CTX_free);
  if (!ctx || EVP_PKEY_keygen_init(ctx.get()) != 1 || EVP_PKEY_keygen(ctx.get(), &raw) != 1) {
    throw Internal("Ed25519 key generation failed");
  }
  return SigningKey(Own(raw));
}

SigningKey SigningKey::FromPem(const std::string& pem) {
  auto bio = MemBio(pem);
  EVP_PKEY* raw = bio ? PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr) : nullptr;
  if (!raw) throw InvalidArgument("not a PEM private key");
  std::shared_ptr<EVP_PKEY> key = Own(raw);
  if (EVP_PKEY_id(key.get()) != EVP_PKEY_ED25519) {
    throw InvalidArgument("the private key is not an Ed25519 key");
  }
  return SigningKey(std::move(key));
}

std::string SigningKey::PrivatePem() const {
  std::unique_ptr<BIO, int (*)(BIO*)> bio(BIO_new(BIO_s_mem()), BIO_free);
  if (!bio ||
      PEM_write_bio_PrivateKey(bio.get(), key_.get(), nullptr, nullptr, 0, nullptr, nullptr) != 1) {
    throw Internal("cannot encode an Ed25519 private key");
  }
  return BioContents(bio.get());
}

std::string SigningKey::Sign(std::string_view message) const {
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  std::string sig(64, '\0');
  size_t len = sig.size();
  if (!ctx || EVP_DigestSignInit(ctx.get(), nullptr, nullptr, nullptr, key_.get()) != 1 ||
      EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(sig.data()), &len,
                     reinterpret_cast<const unsigned char*>(message.data()), message.size()) != 1 ||
      len != 64) {
    throw Internal("Ed25519 signing failed");
  }
  return sig;
}

SigningKey SigningKey::LoadOrCreate(const std::string& path, bool* created) {
  if (created) *created = false;
  for (int attempt = 0; attempt < 2; ++attempt) {
    struct stat st;
    if (stat(path.c_str(), &st) == 0) {
      if (st.st_mode & 077) {
        throw FailedPrecondition(path +
                                 ": the token signing key is readable by others; chmod 600 it");
      }
      try {
        return FromPem(ReadFile(path));
      } catch (const Error& e) {
        throw DataLoss(path + ": not a token signing key (" + e.what() + ")");
      }
    }
    SigningKey key = Generate();
    const std::string pem = key.PrivatePem();
    std::string tmp = path + ".tmp-XXXXXX";
    std::vector<char> buf(tmp.begin(), tmp.end());
    buf.push_back('\0');
    int fd = mkstemp(buf.data());  // mode 0600
    if (fd < 0) throw Internal(path + ": cannot create a temporary file (" + Errno() + ")");
    tmp = buf.data();
    bool ok = fchmod(fd, 0600) == 0;
    size_t done = 0;
    while (ok && done < pem.size()) {
      ssize_t n = write(fd, pem.data() + done, pem.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) ok = false;
      if (n > 0) done += static_cast<size_t>(n);
    }
    ok = ok && fsync(fd) == 0;
    close(fd);
    // link(2) fails if another process put its key in place first: use that one.
    const bool linked = ok && link(tmp.c_str(), path.c_str()) == 0;
    const int err = errno;
    unlink(tmp.c_str());
    if (linked) {
      const size_t slash = path.find_last_of('/');
      SyncDirectory(slash == std::string::npos ? "." : path.substr(0, slash == 0 ? 1 : slash));
      if (created) *created = true;
      return key;
    }
    if (!ok || err != EEXIST) {
      throw Internal(path + ": cannot write the token signing key (" + std::strerror(err) + ")");
    }
  }
  throw Internal(path + ": cannot create or read the token signing key");
}

}  // namespace stip::auth
