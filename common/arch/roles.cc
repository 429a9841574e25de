#include "common/arch/roles.h"

#include <string>

#include "common/arch/model_config.h"
#include "common/error.h"

namespace stip {

namespace {

using A = Axis;
using S = Scope;

// The table. Order = the Role enum's (checked when it is first used).
const std::vector<RoleInfo> kRoles = {
    // Client.
    {Role::kTokenEmbedding, "token_embedding", S::kClient, A::kVocab, A::kHidden},
    {Role::kPositionEmbedding, "position_embedding", S::kClient, A::kPositions, A::kHidden},
    {Role::kTokenTypeEmbedding, "token_type_embedding", S::kClient, A::kTokenTypes, A::kHidden},
    {Role::kEmbedNormWeight, "embed_norm.weight", S::kClient, A::kHidden, A::kNone},
    {Role::kEmbedNormBias, "embed_norm.bias", S::kClient, A::kHidden, A::kNone},
    {Role::kPatchEmbedding, "patch_embedding", S::kClient, A::kHidden, A::kPatch},
    {Role::kPatchEmbeddingBias, "patch_embedding.bias", S::kClient, A::kHidden, A::kNone},
    {Role::kClsToken, "cls_token", S::kClient, A::kOne, A::kHidden},
    // Per layer.
    {Role::kAttnNormWeight, "attn_norm.weight", S::kLayer, A::kHidden, A::kNone},
    {Role::kAttnNormBias, "attn_norm.bias", S::kLayer, A::kHidden, A::kNone},
    {Role::kQ, "attn_q", S::kLayer, A::kQ, A::kHidden},
    {Role::kQBias, "attn_q.bias", S::kLayer, A::kQ, A::kNone},
    {Role::kK, "attn_k", S::kLayer, A::kK, A::kHidden},
    {Role::kKBias, "attn_k.bias", S::kLayer, A::kK, A::kNone},
    {Role::kV, "attn_v", S::kLayer, A::kV, A::kHidden},
    {Role::kVBias, "attn_v.bias", S::kLayer, A::kV, A::kNone},
    {Role::kQkv, "attn_qkv", S::kLayer, A::kQkv, A::kHidden},
    {Role::kQkvBias, "attn_qkv.bias", S::kLayer, A::kQkv, A::kNone},
    {Role::kO, "attn_output", S::kLayer, A::kHidden, A::kAttnOut},
    {Role::kOBias, "attn_output.bias", S::kLayer, A::kHidden, A::kNone},
    {Role::kFfnNormWeight, "ffn_norm.weight", S::kLayer, A::kHidden, A::kNone},
    {Role::kFfnNormBias, "ffn_norm.bias", S::kLayer, A::kHidden, A::kNone},
    {Role::kFfnUp, "ffn_up", S::kLayer, A::kFfn, A::kHidden},
    {Role::kFfnUpBias, "ffn_up.bias", S::kLayer, A::kFfn, A::kNone},
    {Role::kFfnGate, "ffn_gate", S::kLayer, A::kFfn, A::kHidden},
    {Role::kFfnGateBias, "ffn_gate.bias", S::kLayer, A::kFfn, A::kNone},
    {Role::kFfnDown, "ffn_down", S::kLayer, A::kHidden, A::kFfn},
    {Role::kFfnDownBias, "ffn_down.bias", S::kLayer, A::kHidden, A::kNone},
    {Role::kRouter, "moe_router", S::kLayer, A::kExperts, A::kHidden},
    {Role::kExpertGate, "expert_gate", S::kExpert, A::kExpertFfn, A::kHidden},
    {Role::kExpertUp, "expert_up", S::kExpert, A::kExpertFfn, A::kHidden},
    {Role::kExpertDown, "expert_down", S::kExpert, A::kHidden, A::kExpertFfn},
    // Server head.
    {Role::kFinalNormWeight, "output_norm.weight", S::kGlobal, A::kHidden, A::kNone},
    {Role::kFinalNormBias, "output_norm.bias", S::kGlobal, A::kHidden, A::kNone},
    {Role::kLmHead, "lm_head", S::kGlobal, A::kOutputs, A::kHidden, /*tied=*/true},
    {Role::kLmHeadBias, "lm_head.bias", S::kGlobal, A::kOutputs, A::kNone},
    {Role::kMlmDense, "mlm_dense", S::kGlobal, A::kHeadHidden, A::kHidden},
    {Role::kMlmDenseBias, "mlm_dense.bias", S::kGlobal, A::kHeadHidden, A::kNone},
    {Role::kMlmNormWeight, "mlm_norm.weight", S::kGlobal, A::kHeadHidden, A::kNone},
    {Role::kMlmNormBias, "mlm_norm.bias", S::kGlobal, A::kHeadHidden, A::kNone},
    {Role::kMlmDecoder, "mlm_decoder", S::kGlobal, A::kOutputs, A::kHeadHidden, /*tied=*/true},
    {Role::kMlmDecoderBias, "mlm_decoder.bias", S::kGlobal, A::kOutputs, A::kNone},
    {Role::kPoolerDense, "pooler", S::kGlobal, A::kHidden, A::kHidden},
    {Role::kPoolerBias, "pooler.bias", S::kGlobal, A::kHidden, A::kNone},
    {Role::kClassifier, "classifier", S::kGlobal, A::kOutputs, A::kHidden},
    {Role::kClassifierBias, "classifier.bias", S::kGlobal, A::kOutputs, A::kNone},
};

const std::vector<RoleInfo>& Checked() {
  static const bool ok = [] {
    for (size_t i = 0; i < kRoles.size(); ++i) {
      if (static_cast<size_t>(kRoles[i].role) != i) {
        throw Internal(std::string("role table out of order at ") + kRoles[i].name);
      }
    }
    return true;
  }();
  (void)ok;
  return kRoles;
}

}  // namespace

const std::vector<RoleInfo>& AllRoles() { return Checked(); }

const RoleInfo& Info(Role role) {
  const auto& t = Checked();
  const size_t i = static_cast<size_t>(role);
  if (i >= t.size()) throw Internal("role " + std::to_string(i) + " has no row in the table");
  return t[i];
}

const char* RoleName(Role role) { return Info(role).name; }
bool IsClientRole(Role role) { return Info(role).scope == Scope::kClient; }
bool IsPerLayer(Role role) {
  const Scope s = Info(role).scope;
  return s == Scope::kLayer || s == Scope::kExpert;
}
bool IsPerExpert(Role role) { return Info(role).scope == Scope::kExpert; }

const char* AxisName(Axis axis) {
  switch (axis) {
    case Axis::kNone:
      return "none";
    case Axis::kOne:
      return "one";
    case Axis::kHidden:
      return "hidden";
    case Axis::kHeadHidden:
      return "head_hidden";
    case Axis::kQ:
      return "q_heads";
    case Axis::kK:
      return "k_heads";
    case Axis::kV:
      return "v_heads";
    case Axis::kAttnOut:
      return "attn_out";
    case Axis::kQkv:
      return "qkv";
    case Axis::kFfn:
      return "ffn";
    case Axis::kExpertFfn:
      return "expert_ffn";
    case Axis::kExperts:
      return "experts";
    case Axis::kVocab:
      return "vocab";
    case Axis::kOutputs:
      return "outputs";
    case Axis::kPositions:
      return "positions";
    case Axis::kTokenTypes:
      return "token_types";
    case Axis::kPatch:
      return "patch";
  }
  return "?";
}

int64_t AxisSize(Axis axis, const ModelConfig& c) {
  switch (axis) {
    case Axis::kNone:
      return 0;
    case Axis::kOne:
      return 1;
    case Axis::kHidden:
    case Axis::kHeadHidden:
      return c.hidden_size;
    case Axis::kQ:
    case Axis::kAttnOut:
      return c.q_size();
    case Axis::kK:
    case Axis::kV:
      return c.kv_size();
    case Axis::kQkv:
      return c.q_size() + 2 * c.kv_size();
    case Axis::kFfn:
    case Axis::kExpertFfn:
      return c.intermediate_size;
    case Axis::kExperts:
      return c.num_experts;
    case Axis::kVocab:
      return c.vocab_size;
    case Axis::kOutputs:
      return c.output_size();
    case Axis::kPositions:
      return c.max_positions;
    case Axis::kTokenTypes:
      return c.type_vocab_size;
    case Axis::kPatch:
      return c.num_channels * c.patch_size * c.patch_size;
  }
  return 0;
}

std::vector<int64_t> RoleShape(Role role, const ModelConfig& config) {
  const RoleInfo& r = Info(role);
  if (r.cols == Axis::kNone) return {AxisSize(r.rows, config)};
  return {AxisSize(r.rows, config), AxisSize(r.cols, config)};
}

}  // namespace stip
