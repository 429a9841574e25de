// ViT: the client turns pixels into patch embeddings (a Conv2d with stride =
// kernel = patch), prepends the CLS token and adds position embeddings; the
// server runs pre-LayerNorm bidirectional layers and the final LayerNorm, then
// the classifier on [CLS] (ViTForImageClassification) or returns the hidden
// states (ViTModel).
#include "common/arch/architecture.h"
#include "common/arch/encoder_common.h"
#include "common/arch/json_config.h"
#include "common/error.h"

namespace stip {

namespace {

bool Classifier(const ModelConfig& c) { return c.head == HeadKind::kClassifier; }
bool QkvBias(const ModelConfig& c) { return c.qkv_bias; }

void ParseVit(const JsonConfig& cfg, ModelConfig* c) {
  c->vocab_size = 0;  // images, not tokens
  ParseEncoderSizes(cfg, c);
  c->image_size = cfg.Int("image_size", 224);
  c->patch_size = cfg.Int("patch_size", 16);
  c->num_channels = cfg.Int("num_channels", 3);
  if (c->patch_size <= 0 || c->image_size <= 0 || c->image_size % c->patch_size != 0) {
    cfg.Fail("patch_size", "must be positive and divide image_size");
  }
  const int64_t side = c->image_size / c->patch_size;
  c->max_positions = side * side + 1;  // patches + CLS
  c->norm = NormKind::kLayerNorm;
  c->norm_eps = cfg.Number("layer_norm_eps", 1e-12);
  c->activation = ParseActivation(cfg, "hidden_act", "gelu");
  c->ffn = FfnKind::kMlp;
  c->positions = PositionKind::kLearned;
  c->qkv_bias = cfg.Bool("qkv_bias", true);
  c->o_bias = c->mlp_bias = true;
  c->encoder = true;
  c->post_norm = false;
  c->tie_word_embeddings = false;
  const std::string& a = c->architecture;
  if (a == "ViTForImageClassification") {
    c->head = HeadKind::kClassifier;
    c->weight_prefix = "vit.";
    ParseLabels(cfg, c);
  } else if (a.empty() || a == "ViTModel") {
    c->head = HeadKind::kNone;
    c->weight_prefix = "";
  } else {
    throw Unimplemented(cfg.source() + ": architecture \"" + a +
                        "\" (supported: ViTModel, ViTForImageClassification)");
  }
}

}  // namespace

const Architecture& VitArchitecture() {
  static const Architecture kArch{
      "vit",
      {"vit"},
      ParseVit,
      {
          {"{P}embeddings.cls_token", Role::kClsToken, Layout::kBatched},
          {"{P}embeddings.position_embeddings", Role::kPositionEmbedding, Layout::kBatched},
          {"{P}embeddings.patch_embeddings.projection.weight", Role::kPatchEmbedding,
           Layout::kConv2D},
          {"{P}embeddings.patch_embeddings.projection.bias", Role::kPatchEmbeddingBias},
          {"{P}encoder.layer.{L}.layernorm_before.weight", Role::kAttnNormWeight},
          {"{P}encoder.layer.{L}.layernorm_before.bias", Role::kAttnNormBias},
          {"{P}encoder.layer.{L}.attention.attention.query.weight", Role::kQ},
          {"{P}encoder.layer.{L}.attention.attention.query.bias", Role::kQBias, Layout::kLinear,
           QkvBias},
          {"{P}encoder.layer.{L}.attention.attention.key.weight", Role::kK},
          {"{P}encoder.layer.{L}.attention.attention.key.bias", Role::kKBias, Layout::kLinear,
           QkvBias},
          {"{P}encoder.layer.{L}.attention.attention.value.weight", Role::kV},
          {"{P}encoder.layer.{L}.attention.attention.value.bias", Role::kVBias, Layout::kLinear,
           QkvBias},
          {"{P}encoder.layer.{L}.attention.output.dense.weight", Role::kO},
          {"{P}encoder.layer.{L}.attention.output.dense.bias", Role::kOBias},
          {"{P}encoder.layer.{L}.layernorm_after.weight", Role::kFfnNormWeight},
          {"{P}encoder.layer.{L}.layernorm_after.bias", Role::kFfnNormBias},
          {"{P}encoder.layer.{L}.intermediate.dense.weight", Role::kFfnUp},
          {"{P}encoder.layer.{L}.intermediate.dense.bias", Role::kFfnUpBias},
          {"{P}encoder.layer.{L}.output.dense.weight", Role::kFfnDown},
          {"{P}encoder.layer.{L}.output.dense.bias", Role::kFfnDownBias},
          {"{P}layernorm.weight", Role::kFinalNormWeight},
          {"{P}layernorm.bias", Role::kFinalNormBias},
          {"classifier.weight", Role::kClassifier, Layout::kLinear, Classifier},
          {"classifier.bias", Role::kClassifierBias, Layout::kLinear, Classifier},
      },
  };
  return kArch;
}

}  // namespace stip
