// Mixtral: the LLaMA layout with a sparse mixture of SwiGLU experts (top-k
// routing with renormalized weights) in place of the MLP.
#include "common/arch/architecture.h"
#include "common/arch/llama_common.h"

namespace stip {

namespace {

void ParseMixtral(const JsonConfig& cfg, ModelConfig* c) {
  ParseLlamaCommon(cfg, c, 1e6);
  ParseWindows(cfg, c, /*window_needs_flag=*/false);
  c->ffn = FfnKind::kMoe;
  c->num_experts = cfg.Int("num_local_experts");
  c->experts_per_token = cfg.Int("num_experts_per_tok");
}

}  // namespace

const Architecture& MixtralArchitecture() {
  static const Architecture kArch{
      "mixtral",
      {"mixtral"},
      ParseMixtral,
      {
          {"model.embed_tokens.weight", Role::kTokenEmbedding},
          {"model.layers.{L}.input_layernorm.weight", Role::kAttnNormWeight},
          {"model.layers.{L}.self_attn.q_proj.weight", Role::kQ},
          {"model.layers.{L}.self_attn.k_proj.weight", Role::kK},
          {"model.layers.{L}.self_attn.v_proj.weight", Role::kV},
          {"model.layers.{L}.self_attn.o_proj.weight", Role::kO},
          {"model.layers.{L}.post_attention_layernorm.weight", Role::kFfnNormWeight},
          {"model.layers.{L}.block_sparse_moe.gate.weight", Role::kRouter},
          {"model.layers.{L}.block_sparse_moe.experts.{E}.w1.weight", Role::kExpertGate},
          {"model.layers.{L}.block_sparse_moe.experts.{E}.w3.weight", Role::kExpertUp},
          {"model.layers.{L}.block_sparse_moe.experts.{E}.w2.weight", Role::kExpertDown},
          {"model.norm.weight", Role::kFinalNormWeight},
          {"lm_head.weight", Role::kLmHead},
      },
  };
  return kArch;
}

}  // namespace stip
