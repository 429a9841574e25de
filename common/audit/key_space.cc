#include "common/audit/key_space.h"

#include <cmath>

namespace stip {

double Log2Factorial(int64_t n) {
  if (n < 2) return 0;
  return std::lgamma(static_cast<double>(n) + 1.0) / std::log(2.0);
}

KeySpace MeasureKeySpace(const ModelConfig& c) {
  KeySpace ks;
  const int64_t layers = c.num_layers;
  auto add = [&](std::string name, std::string holder, int64_t count, int64_t size) {
    KeySpaceComponent k{std::move(name), std::move(holder), count, size,
                        static_cast<double>(count) * Log2Factorial(size)};
    ks.total_bits += k.bits;
    ks.components.push_back(std::move(k));
  };
  add("p (hidden)", "developer + users", 1, c.hidden_size);
  add("p_c (vocabulary)", "developer + users", 1, c.vocab_size);
  ks.client_share_bits = ks.total_bits;
  const int64_t n_kv = c.num_kv_heads;
  add("attention: KV heads", "developer only", layers, n_kv);
  add("attention: query heads within a KV group", "developer only", layers * n_kv, c.group_size());
  // Under RoPE the q/k features within a head stay in place (model_keys.h).
  add(c.positions == PositionKind::kRope ? "attention: q/k within a head (identity: RoPE)"
                                         : "attention: q/k within a head",
      "developer only", layers * n_kv, c.positions == PositionKind::kRope ? 1 : c.head_dim);
  add("attention: v within a head", "developer only", layers * n_kv, c.head_dim);
  if (c.ffn == FfnKind::kMoe) {
    add("moe: expert order", "developer only", layers, c.num_experts);
    add("moe: ffn within each expert", "developer only", layers * c.num_experts,
        c.intermediate_size);
  } else {
    add("ffn (p_f)", "developer only", layers, c.intermediate_size);
  }
  ks.paper_bits = 3.0 * static_cast<double>(layers) * Log2Factorial(c.hidden_size);
  return ks;
}

nlohmann::ordered_json KeySpaceJson(const KeySpace& ks) {
  nlohmann::ordered_json comps = nlohmann::ordered_json::array();
  for (const auto& k : ks.components) {
    comps.push_back({{"component", k.name},
                     {"held_by", k.holder},
                     {"count", k.count},
                     {"size", k.size},
                     {"bits", k.bits}});
  }
  return {{"attacker_knowledge",
           "none: counts the keys a brute-force search over the layouts stip draws would face"},
          {"paper_bits_(d!)^(3L)", ks.paper_bits},
          {"total_bits", ks.total_bits},
          {"client_share_bits", ks.client_share_bits},
          {"developer_only_bits", ks.total_bits - ks.client_share_bits},
          {"components", comps}};
}

}  // namespace stip
