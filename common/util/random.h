// Random identifiers and secrets from OpenSSL's CSPRNG.
#pragma once

#include <cstddef>
#include <string>

namespace stip {

// `bytes` random bytes as 2 * bytes lowercase hex characters. The raw bytes
// are wiped after use. Throws kInternal if the CSPRNG fails.
std::string RandomHex(size_t bytes);

}  // namespace stip
