// GPT-2: learned positions, pre-LayerNorm, fused q|k|v, GELU(tanh) MLP,
// Conv1D ([in, out]) weights, LM head tied to the token embedding.
#include "common/arch/architecture.h"
#include "common/arch/json_config.h"
#include "common/error.h"

namespace stip {

namespace {

void ParseGpt2(const JsonConfig& cfg, ModelConfig* c) {
  c->vocab_size = cfg.Int("vocab_size");
  c->hidden_size = cfg.Int("n_embd");
  c->num_layers = cfg.Int("n_layer");
  c->num_heads = cfg.Int("n_head");
  c->num_kv_heads = c->num_heads;
  if (c->num_heads <= 0 || c->hidden_size % c->num_heads != 0) {
    cfg.Fail("n_head", "must divide n_embd");
  }
  c->head_dim = c->hidden_size / c->num_heads;
  c->intermediate_size = cfg.Int("n_inner", 4 * c->hidden_size);
  c->max_positions = cfg.Int("n_positions");
  c->norm = NormKind::kLayerNorm;
  c->norm_eps = cfg.Number("layer_norm_epsilon", 1e-5);
  c->activation = ParseActivation(cfg, "activation_function", "gelu_new");
  c->ffn = FfnKind::kMlp;
  c->positions = PositionKind::kLearned;
  c->qkv_bias = c->o_bias = c->mlp_bias = true;
  c->tie_word_embeddings = cfg.Bool("tie_word_embeddings", true);
  if (!cfg.Bool("scale_attn_weights", true)) {
    throw Unimplemented(cfg.source() + ": scale_attn_weights=false is not supported");
  }
  c->scale_attn_by_inverse_layer_idx = cfg.Bool("scale_attn_by_inverse_layer_idx", false);
  if (cfg.Bool("add_cross_attention", false)) {
    throw Unimplemented(cfg.source() + ": add_cross_attention=true (encoder-decoder GPT-2)");
  }
}

}  // namespace

const Architecture& Gpt2Architecture() {
  static const Architecture kArch{
      "gpt2",
      {"gpt2"},
      ParseGpt2,
      {
          {"transformer.wte.weight", Role::kTokenEmbedding},
          {"transformer.wpe.weight", Role::kPositionEmbedding},
          {"transformer.h.{L}.ln_1.weight", Role::kAttnNormWeight},
          {"transformer.h.{L}.ln_1.bias", Role::kAttnNormBias},
          {"transformer.h.{L}.attn.c_attn.weight", Role::kQkv, Layout::kConv1D},
          {"transformer.h.{L}.attn.c_attn.bias", Role::kQkvBias},
          {"transformer.h.{L}.attn.c_proj.weight", Role::kO, Layout::kConv1D},
          {"transformer.h.{L}.attn.c_proj.bias", Role::kOBias},
          {"transformer.h.{L}.ln_2.weight", Role::kFfnNormWeight},
          {"transformer.h.{L}.ln_2.bias", Role::kFfnNormBias},
          {"transformer.h.{L}.mlp.c_fc.weight", Role::kFfnUp, Layout::kConv1D},
          {"transformer.h.{L}.mlp.c_fc.bias", Role::kFfnUpBias},
          {"transformer.h.{L}.mlp.c_proj.weight", Role::kFfnDown, Layout::kConv1D},
          {"transformer.h.{L}.mlp.c_proj.bias", Role::kFfnDownBias},
          {"transformer.ln_f.weight", Role::kFinalNormWeight},
          {"transformer.ln_f.bias", Role::kFinalNormBias},
          {"lm_head.weight", Role::kLmHead},
      },
  };
  return kArch;
}

}  // namespace stip
