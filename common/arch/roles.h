// The table of tensor roles: what a tensor is, independent of its name in a
// given family (after llama.cpp's llm_tensor_info). One row per role says
// which axis its rows and its columns live on and its scope. Everything else
// is derived from it:
//   - shapes: an axis kind has a size in a config (AxisSize);
//   - where a tensor lives: client (never sent to the server), global, per
//     layer, per expert;
//   - the STIP transform: an axis kind has a permutation in the keys
//     (common/transform/transform_rules.cc, AxisPermutation), so W' =
//     W[perm(rows)][:, perm(cols)] for every role (docs/transform.md).
// Families (common/arch/<family>.cc) only map their tensor names to roles.
// Torch-free.
#pragma once

#include <cstdint>
#include <vector>

namespace stip {

struct ModelConfig;

enum class Role {
  // Client (device) side: the embedding layer.
  kTokenEmbedding,      // [vocab, d]
  kPositionEmbedding,   // [max_positions, d] (learned positions: GPT-2, BERT, ViT)
  kTokenTypeEmbedding,  // [type_vocab, d] (BERT segments)
  kEmbedNormWeight,     // [d] (BERT's embedding LayerNorm)
  kEmbedNormBias,
  kPatchEmbedding,  // [d, channels * patch * patch] (ViT; stored as a Conv2d [d, C, P, P])
  kPatchEmbeddingBias,
  kClsToken,  // [1, d] (ViT)
  // Per layer.
  kAttnNormWeight,  // the attention block's norm (before it, or after it when post-LN)
  kAttnNormBias,
  kQ,  // [n_heads*d_h, d]
  kQBias,
  kK,  // [n_kv*d_h, d]
  kKBias,
  kV,  // [n_kv*d_h, d]
  kVBias,
  kQkv,  // fused q|k|v [(n_h+2 n_kv) d_h, d] (GPT-2 c_attn)
  kQkvBias,
  kO,  // [d, n_heads*d_h]
  kOBias,
  kFfnNormWeight,  // the feed-forward block's norm (before it, or after it when post-LN)
  kFfnNormBias,
  kFfnUp,  // [m, d] (fc for plain MLP; up for SwiGLU)
  kFfnUpBias,
  kFfnGate,  // [m, d]
  kFfnGateBias,
  kFfnDown,  // [d, m]
  kFfnDownBias,
  kRouter,      // [n_experts, d]
  kExpertGate,  // per expert [m, d]
  kExpertUp,    // per expert [m, d]
  kExpertDown,  // per expert [d, m]
  // Server, after the layers.
  kFinalNormWeight,
  kFinalNormBias,
  kLmHead,  // [vocab, d]; may be tied to the token embedding
  kLmHeadBias,
  kMlmDense,  // [d, d] masked-LM head transform (BERT cls.predictions.transform)
  kMlmDenseBias,
  kMlmNormWeight,
  kMlmNormBias,
  kMlmDecoder,  // [vocab, d]; may be tied to the token embedding
  kMlmDecoderBias,
  kPoolerDense,  // [d, d] (BERT pooler: tanh(dense(h[CLS])))
  kPoolerBias,
  kClassifier,  // [labels, d]
  kClassifierBias,
};

// What the rows or the columns of a tensor index.
enum class Axis {
  kNone,        // a vector has no columns
  kOne,         // a single row (ViT's CLS token)
  kHidden,      // the residual stream, d (permuted with p)
  kHeadHidden,  // the masked-LM head's inner space, d (permuted with p_h)
  kQ,           // query heads, n_h * d_h (p_q)
  kK,           // key heads, n_kv * d_h (p_k)
  kV,           // value heads, n_kv * d_h (p_v)
  kAttnOut,     // the attention output fed to o_proj, n_h * d_h (p_o)
  kQkv,         // fused q | k | v (concat(p_q, p_k, p_v) with offsets)
  kFfn,         // the FFN's inner width m (p_f)
  kExpertFfn,   // one expert's inner width m (that expert's p_f)
  kExperts,     // the experts, n_experts (p_e)
  kVocab,       // the input vocabulary (client side: never permuted)
  kOutputs,     // what the head scores: vocabulary or labels (p_c)
  kPositions,   // learned positions (client side)
  kTokenTypes,  // BERT segments (client side)
  kPatch,       // channels * patch * patch pixels (client side)
};

enum class Scope { kClient, kGlobal, kLayer, kExpert };

struct RoleInfo {
  Role role;
  const char* name;  // "attn_q", for messages and docs
  Scope scope;
  Axis rows;
  Axis cols;  // kNone for vectors
  // Absent from checkpoints whose config ties word embeddings: then it is
  // the token embedding (and the transform gives the server its own copy).
  bool tied_to_embedding = false;
};

// The row of `role`; every role has one.
const RoleInfo& Info(Role role);
const std::vector<RoleInfo>& AllRoles();

const char* RoleName(Role role);
const char* AxisName(Axis axis);
bool IsClientRole(Role role);  // embeddings: never sent to the server
bool IsPerLayer(Role role);    // per layer (and per expert)
bool IsPerExpert(Role role);

// The size of an axis in a config.
int64_t AxisSize(Axis axis, const ModelConfig& config);
// The shape in nn.Linear layout: [rows, cols], or [rows] for vectors.
std::vector<int64_t> RoleShape(Role role, const ModelConfig& config);

}  // namespace stip
