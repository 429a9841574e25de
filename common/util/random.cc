#include "common/util/random.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <vector>

#include "common/error.h"

namespace stip {

std::string RandomHex(size_t bytes) {
  std::vector<unsigned char> buf(bytes);
  if (bytes > 0 && RAND_bytes(buf.data(), static_cast<int>(buf.size())) != 1) {
    throw Internal("CSPRNG failure: OpenSSL RAND_bytes did not return random bytes");
  }
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(2 * bytes);
  for (unsigned char c : buf) {
    out += kHex[c >> 4];
    out += kHex[c & 15];
  }
  OPENSSL_cleanse(buf.data(), buf.size());
  return out;
}

}  // namespace stip
