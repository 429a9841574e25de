// The key material Π of one model instance (docs/transform.md):
//
//   p    [d]      hidden-state permutation      developer + users
//   p_c  [vocab]  logit permutation             developer + users
//                 (labels for a classifier; empty for an encoder without a head)
//   p_h  [d]      masked-LM head's inner space  developer only (BERT MLM)
//   per layer     attention layout (heads mapped to heads; within-head
//                 permutations, identity for Q/K under RoPE), FFN p_f, and
//                 for MoE the expert order p_e and one p_f per expert
//                                               developer only
//
// Stored as a versioned safetensors file of int64 vectors (mode 0600, written
// atomically) whose metadata holds the instance id and the fingerprint of the
// plaintext checkpoint the keys belong to. Loading validates every size and
// that every vector is a permutation. Error messages never contain key values.
// Torch-free.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/arch/model_config.h"
#include "common/keys/permutation.h"

namespace stip {

struct AttentionKey {
  Permutation kv_heads;                 // hk: [n_kv]; new KV slot m holds original KV head hk[m]
  std::vector<Permutation> q_in_group;  // r_m: n_kv x [G]; query slot m*G+t holds hk[m]*G + r_m[t]
  std::vector<Permutation> qk_within;   // w_qk: n_kv x [d_h] (identity under RoPE)
  std::vector<Permutation> v_within;    // w_v: n_kv x [d_h]
};

struct LayerKey {
  AttentionKey attention;
  Permutation ffn;                      // p_f [m] (dense FFN)
  Permutation expert_order;             // p_e [n_experts]: new expert e holds old expert p_e[e]
  std::vector<Permutation> expert_ffn;  // n_experts x [m]: p_f of new expert e
};

struct ModelKeys {
  static constexpr int kVersion = 1;
  std::string instance_id;        // random, 128 bits, hex
  std::string model_fingerprint;  // hex SHA-256 of the plaintext checkpoint (FingerprintModel)
  std::string model_type;
  Permutation p;    // [hidden]
  Permutation p_c;  // [outputs]: the vocabulary, or the labels of a classifier
  Permutation p_h;  // [hidden]: a masked-LM head's inner space; empty for other models
  std::vector<LayerKey> layers;

  // Full index permutations of one layer's projections, derived from the layout:
  //   q [n_h*d_h], k/v [n_kv*d_h], o (input side of o_proj) [n_h*d_h].
  Permutation QPerm(const ModelConfig& c, int layer) const;
  Permutation KPerm(const ModelConfig& c, int layer) const;
  Permutation VPerm(const ModelConfig& c, int layer) const;
  Permutation OPerm(const ModelConfig& c, int layer) const;
};

// The user's share: p and p_c only.
struct ClientKeys {
  std::string instance_id;
  std::string model_fingerprint;
  Permutation p;
  Permutation p_c;
};

// Fresh keys for `config` from the CSPRNG.
ModelKeys GenerateKeys(const ModelConfig& config, const std::string& model_fingerprint);
// Throws kInvalidArgument naming the vector (never its values) if any size is
// wrong for `config` or a vector is not a permutation.
void ValidateKeys(const ModelKeys& keys, const ModelConfig& config);
ClientKeys ClientShare(const ModelKeys& keys);

void SaveKeys(const std::string& path, const ModelKeys& keys);  // 0600, atomic
ModelKeys LoadKeys(const std::string& path);                    // structural checks only
void SaveClientKeys(const std::string& path, const ClientKeys& keys);
ClientKeys LoadClientKeys(const std::string& path);

// SHA-256 over config.json's model-defining content and every tensor's name,
// dtype, shape and bytes, in name order: binds keys to one plaintext model.
std::string FingerprintModel(const std::string& model_dir);

// 128 random bits as 32 hex characters.
std::string NewInstanceId();

}  // namespace stip
