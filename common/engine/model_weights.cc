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

  at::Tensor Get(const TensorEntry& e) const {
    at::Tensor t = s_.Load(e.name, o_.dtype, o_.device);
    if (e.layout == Layout::kConv1D) t = t.t().contiguous();
    return t;
  }

 private:
  const TensorSource& s_;
  const LoadOptions& o_;
};

void Assign(const ModelConfig& c, const TensorEntry& e, at::Tensor t, ServerWeights* w) {
  if (e.layer < 0) {
    switch (e.role) {
      case Role::kFinalNormWeight:
        w->final_norm_w = t;
        return;
      case Role::kFinalNormBias:
        w->final_norm_b = t;
        return;
      case Role::kLmHead:
        w->lm_head_w = t;
        return;
      case Role::kLmHeadBias:
        w->lm_head_b = t;
        return;
      default:
        return;
    }
  }
  LayerWeights& L = w->layers[static_cast<size_t>(e.layer)];
  const int64_t q = c.q_size(), kv = c.kv_size();
  switch (e.role) {
    case Role::kAttnNormWeight:
      L.attn_norm_w = t;
      break;
    case Role::kAttnNormBias:
      L.attn_norm_b = t;
      break;
    case Role::kQ:
      L.wq = t;
      break;
    case Role::kQBias:
      L.bq = t;
      break;
    case Role::kK:
      L.wk = t;
      break;
    case Role::kKBias:
      L.bk = t;
      break;
    case Role::kV:
      L.wv = t;
      break;
    case Role::kVBias:
      L.bv = t;
      break;
    case Role::kQkv: {
      auto parts = t.split_with_sizes({q, kv, kv}, 0);
      L.wq = parts[0].contiguous();
      L.wk = parts[1].contiguous();
      L.wv = parts[2].contiguous();
      break;
    }
    case Role::kQkvBias: {
      auto parts = t.split_with_sizes({q, kv, kv}, 0);
      L.bq = parts[0].contiguous();
      L.bk = parts[1].contiguous();
      L.bv = parts[2].contiguous();
      break;
    }
    case Role::kO:
      L.wo = t;
      break;
    case Role::kOBias:
      L.bo = t;
      break;
    case Role::kFfnNormWeight:
      L.ffn_norm_w = t;
      break;
    case Role::kFfnNormBias:
      L.ffn_norm_b = t;
      break;
    case Role::kFfnUp:
      L.w_up = t;
      break;
    case Role::kFfnUpBias:
      L.b_up = t;
      break;
    case Role::kFfnGate:
      L.w_gate = t;
      break;
    case Role::kFfnGateBias:
      L.b_gate = t;
      break;
    case Role::kFfnDown:
      L.w_down = t;
      break;
    case Role::kFfnDownBias:
      L.b_down = t;
      break;
    case Role::kRouter:
      L.router = t;
      break;
    case Role::kExpertGate:
      L.experts[static_cast<size_t>(e.expert)].gate = t;
      break;
    case Role::kExpertUp:
      L.experts[static_cast<size_t>(e.expert)].up = t;
      break;
    case Role::kExpertDown:
      L.experts[static_cast<size_t>(e.expert)].down = t;
      break;
    default:
      break;
  }
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
    (e.role == Role::kTokenEmbedding ? w.token_embedding : w.position_embedding) = load.Get(e);
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
  bool head_seen = false;
  for (const TensorEntry& e : ExpectedTensors(config)) {
    if (IsClientRole(e.role)) continue;
    if (e.role == Role::kLmHead) head_seen = true;
    Assign(config, e, load.Get(e), &w);
  }
  if (!head_seen) {
    // The family's table lists lm_head only when untied: a tied head reads the embedding.
    w.lm_head_w =
        source.Load(TensorName(config, Role::kTokenEmbedding), options.dtype, options.device);
  }
  return w;
}

}  // namespace stip
