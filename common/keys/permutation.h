// Secret permutations: drawn from OpenSSL's CSPRNG (RAND_bytes) with a
// Fisher-Yates shuffle and rejection sampling (no modulo bias). Never
// std::rand or mt19937. Torch-free.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

namespace stip {

using Permutation = std::vector<int64_t>;

// A uniformly random permutation of [0, n). Throws kInternal if the CSPRNG fails.
Permutation RandomPermutation(int64_t n);
Permutation IdentityPermutation(int64_t n);
// True iff `p` holds each of 0..n-1 exactly once.
bool IsPermutation(const Permutation& p, int64_t n);
// inv[p[i]] = i (the paper's transpose; torch's argsort(p)).
Permutation InversePermutation(const Permutation& p);
// Uniform integer in [0, bound) from the CSPRNG, by rejection sampling.
uint64_t SecureUniform(uint64_t bound);

}  // namespace stip
