// Attack 2: the key space, in bits, of the layouts stip actually draws
// (common/keys/model_keys.h), next to the paper's (d!)^{3L}.
//
// Under grouped-query attention heads are permuted as whole heads within the
// KV structure, and under RoPE the query/key features within a head cannot be
// permuted at all; the paper's figure counts a full d! permutation for every
// one of 3L matrices. The bits of independent components add up only against
// brute force: the attacks of this audit recover components one at a time.
// Torch-free.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/arch/model_config.h"

namespace stip {

// log2(n!).
double Log2Factorial(int64_t n);

struct KeySpaceComponent {
  std::string name;    // "p", "p_c", "attention kv_heads", ...
  std::string holder;  // "developer + users" or "developer only"
  int64_t count = 0;   // how many such permutations (e.g. layers x heads)
  int64_t size = 0;    // each one permutes this many indices
  double bits = 0;     // count * log2(size!)
};

struct KeySpace {
  std::vector<KeySpaceComponent> components;
  double total_bits = 0;         // everything the developer holds
  double client_share_bits = 0;  // p and p_c: what every user (and a server posing as one) holds
  double paper_bits = 0;         // 3L * log2(d!)
};

KeySpace MeasureKeySpace(const ModelConfig& config);
nlohmann::ordered_json KeySpaceJson(const KeySpace& ks);

}  // namespace stip
