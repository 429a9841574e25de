#include "common/keys/permutation.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <string>
#include <utility>

#include "common/error.h"

namespace stip {
namespace {

// Fills `out` with `nbytes` bytes from OpenSSL's CSPRNG; throws kInternal on failure.
void SecureBytes(void* out, size_t nbytes) {
  auto* p = static_cast<unsigned char*>(out);
  while (nbytes > 0) {
    const size_t chunk = std::min<size_t>(nbytes, 1 << 20);
    if (RAND_bytes(p, static_cast<int>(chunk)) != 1) {
      throw Internal("CSPRNG failure: OpenSSL RAND_bytes did not return random bytes");
    }
    p += chunk;
    nbytes -= chunk;
  }
}

// A buffer of CSPRNG words, refilled in batches so that drawing a large
// permutation costs a few RAND_bytes calls rather than one per element. The
// buffer is wiped when it is refilled and when it goes out of scope.
class RandomWords {
 public:
  RandomWords() = default;
  ~RandomWords() { OPENSSL_cleanse(words_, sizeof(words_)); }
  RandomWords(const RandomWords&) = delete;
  RandomWords& operator=(const RandomWords&) = delete;

  uint64_t Next() {
    if (next_ == kWords) {
      SecureBytes(words_, sizeof(words_));
      next_ = 0;
    }
    uint64_t v = words_[next_];
    words_[next_] = 0;
    ++next_;
    return v;
  }

  // Uniform in [0, bound), bound >= 1: draws 64-bit words and rejects those at
  // or above the largest multiple of `bound` that fits in 2^64, so that
  // `v % bound` has no modulo bias.
  uint64_t Uniform(uint64_t bound) {
    // 2^64 mod bound, computed without 128-bit arithmetic.
    const uint64_t excess = (std::numeric_limits<uint64_t>::max() % bound + 1) % bound;
    if (excess == 0) return Next() % bound;  // bound divides 2^64: every word is fine
    const uint64_t limit = 0 - excess;       // 2^64 - excess: the largest multiple of bound
    for (;;) {
      const uint64_t v = Next();
      if (v < limit) return v % bound;
    }
  }

 private:
  static constexpr size_t kWords = 512;  // 4 KiB per RAND_bytes call
  uint64_t words_[kWords] = {};
  size_t next_ = kWords;
};

}  // namespace

uint64_t SecureUniform(uint64_t bound) {
  if (bound == 0) throw InvalidArgument("SecureUniform: bound must be positive");
  if (bound == 1) return 0;
  const uint64_t excess = (std::numeric_limits<uint64_t>::max() % bound + 1) % bound;
  const uint64_t limit = 0 - excess;
  for (;;) {
    uint64_t v = 0;
    SecureBytes(&v, sizeof(v));
    if (excess == 0 || v < limit) {
      const uint64_t r = v % bound;
      OPENSSL_cleanse(&v, sizeof(v));
      return r;
    }
  }
}

Permutation RandomPermutation(int64_t n) {
  if (n < 0) {
    throw InvalidArgument("RandomPermutation: size " + std::to_string(n) + " is negative");
  }
  Permutation p = IdentityPermutation(n);
  RandomWords words;
  // Fisher-Yates: position i receives a uniformly chosen element of p[0..i].
  for (int64_t i = n - 1; i > 0; --i) {
    const auto j = static_cast<int64_t>(words.Uniform(static_cast<uint64_t>(i) + 1));
    std::swap(p[static_cast<size_t>(i)], p[static_cast<size_t>(j)]);
  }
  return p;
}

Permutation IdentityPermutation(int64_t n) {
  if (n < 0) {
    throw InvalidArgument("IdentityPermutation: size " + std::to_string(n) + " is negative");
  }
  Permutation p(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) p[static_cast<size_t>(i)] = i;
  return p;
}

bool IsPermutation(const Permutation& p, int64_t n) {
  if (n < 0 || p.size() != static_cast<size_t>(n)) return false;
  std::vector<bool> seen(static_cast<size_t>(n), false);
  for (int64_t v : p) {
    if (v < 0 || v >= n) return false;
    if (seen[static_cast<size_t>(v)]) return false;
    seen[static_cast<size_t>(v)] = true;
  }
  return true;
}

Permutation InversePermutation(const Permutation& p) {
  const auto n = static_cast<int64_t>(p.size());
  if (!IsPermutation(p, n)) {
    // No values in the message: `p` may be key material.
    throw InvalidArgument("InversePermutation: argument is not a permutation of " +
                          std::to_string(n));
  }
  Permutation inv(p.size());
  for (int64_t i = 0; i < n; ++i) inv[static_cast<size_t>(p[static_cast<size_t>(i)])] = i;
  return inv;
}

}  // namespace stip
