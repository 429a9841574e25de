#include "common/engine/model_weights.h"

#include "common/engine/tensor_util.h"
#include "common/error.h"

namespace stip {

// ---- sources ---------------------------------------------------------------

bool CheckpointSource::Has(const std::string& name) const { return ckpt_.Has(name); }
std::vector<int64_t> CheckpointSource::Shape(const std::string& name) const {
  return ckpt_.Get(name).info->shape;
}
at::Tensor CheckpointSource::Load(const std::string& name, at::ScalarType type,
                                  at::Device device) const {
  return LoadTensor(ckpt_.Get(name), type, device);
}
std::string CheckpointSource::Describe() const { return ckpt_.dir(); }

bool MapSource::Has(const std::string& name) const { return tensors_.count(name) != 0; }
std::vector<int64_t> MapSource::Shape(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) throw NotFound(what_ + ": no tensor \"" + name + "\"");
  return it->second.sizes().vec();
}
at::Tensor MapSource::Load(const std::string& name, at::ScalarType type, at::Device device) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) throw NotFound(what_ + ": no tensor \"" + name + "\"");
  return it->second.to(device, type, false, /*copy=*/true).contiguous();
}

// ---- validation ------------------------------------------------------------

void ValidateTensors(const ModelConfig& config, const TensorSource& source, bool server_only) {
  for (const TensorEntry& e : ExpectedTensors(config)) {
    // A server-only checkpoint needs no embeddings, unless the head is tied to them
    // (families list lm_head only for untied configs).
    if (server_only && IsClientRole(e.role) &&
        !(e.role == Role::kTokenEmbedding && config.tie_word_embeddings)) {
      continue;
    }
    if (!source.Has(e.name)) {
      throw NotFound(source.Describe() + ": missing tensor \"" + e.name + "\" (" +
                     RoleName(e.role) + ")");
    }
    std::vector<int64_t> shape = source.Shape(e.name);
    if (shape != e.shape) {
      throw InvalidArgument(source.Describe() + ": tensor \"" + e.name + "\" has shape " +
                            ShapeString(shape) + ", but the config implies " +
                            ShapeString(e.shape));
    }
  }
}

// ---- loading ---------------------------------------------------------------

namespace {

class Loader {
 public:
  Loader(const TensorSource& s, const LoadOptions& o) : s_(s), o_(o) {}

  // In the role's shape: Conv1D transposed, Conv2D and batched reshaped.
  at::Tensor Get(const TensorEntry& e) const {
    at::Tensor t = s_.Load(e.name, o_.dtype, o_.device);
    switch (e.layout) {
      case Layout::kLinear:
        return t;
      case Layout::kConv1D:
        return t.t().contiguous();
      case Layout::kConv2D:
        return t.reshape({t.size(0), -1});
      case Layout::kBatched:
        return t.reshape(at::IntArrayRef(t.sizes()).slice(1));
    }
    return t;
  }

 private:
  const TensorSource& s_;
  const LoadOptions& o_;
};

// Where each role goes. Shapes, scopes and axes are the role table's
// (common/arch/roles.h); this is only the field.
template <typename W>
using Field = at::Tensor W::*;

const std::map<Role, Field<ClientWeights>>& ClientFields() {
  static const std::map<Role, Field<ClientWeights>> kFields = {
      {Role::kTokenEmbedding, &ClientWeights::token_embedding},
      {Role::kPositionEmbedding, &ClientWeights::position_embedding},
      {Role::kTokenTypeEmbedding, &ClientWeights::token_type_embedding},
      {Role::kEmbedNormWeight, &ClientWeights::embed_norm_w},
      {Role::kEmbedNormBias, &ClientWeights::embed_norm_b},
      {Role::kPatchEmbedding, &ClientWeights::patch_w},
      {Role::kPatchEmbeddingBias, &ClientWeights::patch_b},
      {Role::kClsToken, &ClientWeights::cls_token},
  };
  return kFields;
}

const std::map<Role, Field<ServerWeights>>& GlobalFields() {
  static const std::map<Role, Field<ServerWeights>> kFields = {
      {Role::kFinalNormWeight, &ServerWeights::final_norm_w},
      {Role::kFinalNormBias, &ServerWeights::final_norm_b},
      {Role::kLmHead, &ServerWeights::lm_head_w},
      {Role::kLmHeadBias, &ServerWeights::lm_head_b},
      {Role::kMlmDense, &ServerWeights::mlm_dense_w},
      {Role::kMlmDenseBias, &ServerWeights::mlm_dense_b},
      {Role::kMlmNormWeight, &ServerWeights::mlm_norm_w},
      {Role::kMlmNormBias, &ServerWeights::mlm_norm_b},
      {Role::kMlmDecoder, &ServerWeights::mlm_decoder_w},
      {Role::kMlmDecoderBias, &ServerWeights::mlm_decoder_b},
      {Role::kPoolerDense, &ServerWeights::pooler_w},
      {Role::kPoolerBias, &ServerWeights::pooler_b},
      {Role::kClassifier, &ServerWeights::classifier_w},
      {Role::kClassifierBias, &ServerWeights::classifier_b},
  };
  return kFields;
}

const std::map<Role, Field<LayerWeights>>& LayerFields() {
  static const std::map<Role, Field<LayerWeights>> kFields = {
      {Role::kAttnNormWeight, &LayerWeights::attn_norm_w},
      {Role::kAttnNormBias, &LayerWeights::attn_norm_b},
      {Role::kQ, &LayerWeights::wq},
      {Role::kQBias, &LayerWeights::bq},
      {Role::kK, &LayerWeights::wk},
      {Role::kKBias, &LayerWeights::bk},
      {Role::kV, &LayerWeights::wv},
      {Role::kVBias, &LayerWeights::bv},
      {Role::kO, &LayerWeights::wo},
      {Role::kOBias, &LayerWeights::bo},
      {Role::kFfnNormWeight, &LayerWeights::ffn_norm_w},
      {Role::kFfnNormBias, &LayerWeights::ffn_norm_b},
      {Role::kFfnUp, &LayerWeights::w_up},
      {Role::kFfnUpBias, &LayerWeights::b_up},
      {Role::kFfnGate, &LayerWeights::w_gate},
      {Role::kFfnGateBias, &LayerWeights::b_gate},
      {Role::kFfnDown, &LayerWeights::w_down},
      {Role::kFfnDownBias, &LayerWeights::b_down},
      {Role::kRouter, &LayerWeights::router},
  };
  return kFields;
}

const std::map<Role, Field<ExpertWeights>>& ExpertFields() {
  static const std::map<Role, Field<ExpertWeights>> kFields = {
      {Role::kExpertGate, &ExpertWeights::gate},
      {Role::kExpertUp, &ExpertWeights::up},
      {Role::kExpertDown, &ExpertWeights::down},
  };
  return kFields;
}

template <typename W>
void Put(const std::map<Role, Field<W>>& fields, Role role, at::Tensor t, W* w) {
  auto it = fields.find(role);
  if (it == fields.end()) {
    throw Internal(std::string("the engine has no field for role ") + RoleName(role));
  }
  w->*(it->second) = std::move(t);
}

// Whether the family has `role` for this config when untied.
bool HasRoleUntied(const ModelConfig& config, Role role) {
  ModelConfig untied = config;
  untied.tie_word_embeddings = false;
  return HasRole(untied, role);
}

void Assign(const ModelConfig& c, const TensorEntry& e, at::Tensor t, ServerWeights* w) {
  switch (Info(e.role).scope) {
    case Scope::kClient:
      return;
    case Scope::kGlobal:
      return Put(GlobalFields(), e.role, std::move(t), w);
    case Scope::kExpert: {
      LayerWeights& L = w->layers[static_cast<size_t>(e.layer)];
      return Put(ExpertFields(), e.role, std::move(t), &L.experts[static_cast<size_t>(e.expert)]);
    }
    case Scope::kLayer:
      break;
  }
  LayerWeights& L = w->layers[static_cast<size_t>(e.layer)];
  if (e.role == Role::kQkv || e.role == Role::kQkvBias) {
    // The fused q|k|v splits along its rows into the kQ, kK, kV axes.
    auto parts = t.split_with_sizes(
        {AxisSize(Axis::kQ, c), AxisSize(Axis::kK, c), AxisSize(Axis::kV, c)}, 0);
    const bool bias = e.role == Role::kQkvBias;
    (bias ? L.bq : L.wq) = parts[0].contiguous();
    (bias ? L.bk : L.wk) = parts[1].contiguous();
    (bias ? L.bv : L.wv) = parts[2].contiguous();
    return;
  }
  Put(LayerFields(), e.role, std::move(t), &L);
}

}  // namespace

ClientWeights LoadClientWeights(const ModelConfig& config, const TensorSource& source,
                                const LoadOptions& options) {
  ClientWeights w;
  Loader load(source, options);
  for (const TensorEntry& e : ExpectedTensors(config)) {
    if (!IsClientRole(e.role)) continue;
    if (!source.Has(e.name)) {
      throw NotFound(source.Describe() + ": missing tensor \"" + e.name + "\" (" +
                     RoleName(e.role) + ")");
    }
    if (source.Shape(e.name) != e.shape) {
      throw InvalidArgument(source.Describe() + ": tensor \"" + e.name + "\" has shape " +
                            ShapeString(source.Shape(e.name)) + ", but the config implies " +
                            ShapeString(e.shape));
    }
    Put(ClientFields(), e.role, load.Get(e), &w);
  }
  return w;
}

ServerWeights LoadServerWeights(const ModelConfig& config, const TensorSource& source,
                                const LoadOptions& options) {
  ValidateTensors(config, source, /*server_only=*/true);
  ServerWeights w;
  w.layers.resize(static_cast<size_t>(config.num_layers));
  for (auto& l : w.layers) l.experts.resize(static_cast<size_t>(config.num_experts));
  Loader load(source, options);
  for (const TensorEntry& e : ExpectedTensors(config)) {
    if (IsClientRole(e.role)) continue;
    Assign(config, e, load.Get(e), &w);
  }
  if (config.tie_word_embeddings) {
    // Heads tied to the embedding are not stored: they read the token embedding.
    for (const RoleInfo& r : AllRoles()) {
      if (!r.tied_to_embedding || !HasRoleUntied(config, r.role)) continue;
      TensorEntry e{TensorName(config, Role::kTokenEmbedding),
                    r.role,
                    Layout::kLinear,
                    -1,
                    -1,
                    RoleShape(r.role, config)};
      Assign(config, e, load.Get(e), &w);
    }
  }
  return w;
}

}  // namespace stip
