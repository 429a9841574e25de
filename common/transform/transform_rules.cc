#include "common/transform/transform_rules.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "common/error.h"

namespace stip {

namespace {

at::Tensor Index(const Permutation& p, at::Device device) {
  return at::tensor(at::ArrayRef<int64_t>(p), at::kLong).to(device);
}

Permutation Offset(const Permutation& p, int64_t offset) {
  Permutation out(p.size());
  for (size_t i = 0; i < p.size(); ++i) out[i] = p[i] + offset;
  return out;
}

Permutation Concat(std::initializer_list<Permutation> parts) {
  Permutation out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

}  // namespace

ModelConfig TransformedConfig(const ModelConfig& plain, const std::string& instance_id) {
  ModelConfig c = plain;
  c.tie_word_embeddings = false;
  c.stip_instance = instance_id;
  return c;
}

std::string TransformedConfigJson(const std::string& plain_json, const std::string& instance_id) {
  nlohmann::json overrides = {
      {"tie_word_embeddings", false},
      {"stip", {{"format", "stip-server-v1"}, {"instance", instance_id}}},
  };
  return PatchConfigJson(plain_json, overrides.dump());
}

std::vector<TransformedTensor> PlanServerTensors(const ModelConfig& plain) {
  std::vector<TransformedTensor> plan;
  for (const TensorEntry& e : ExpectedTensors(plain)) {
    if (IsClientRole(e.role)) continue;
    plan.push_back({e.name, e.name, e.role, e.layout, e.layer, e.expert, e.shape});
  }
  if (plain.tie_word_embeddings) {
    // A head tied to the embedding: the server gets its own untied copy
    // (lm_head = E[p_c][:, p]) and never the embedding itself. It goes where
    // transformers puts it, after the final norm (the end of the globals).
    ModelConfig untied = plain;
    untied.tie_word_embeddings = false;
    for (const RoleInfo& r : AllRoles()) {
      if (!r.tied_to_embedding || !HasRole(untied, r.role)) continue;
      plan.push_back({TensorName(untied, r.role), TensorName(plain, Role::kTokenEmbedding), r.role,
                      Layout::kLinear, -1, -1, RoleShape(r.role, plain)});
    }
  }
  return plan;
}

Permutation AxisPermutation(Axis axis, const TransformedTensor& t, const ModelConfig& c,
                            const ModelKeys& keys) {
  const LayerKey* lk = t.layer >= 0 ? &keys.layers[static_cast<size_t>(t.layer)] : nullptr;
  auto layer_key = [&]() -> const LayerKey& {
    if (!lk) throw Internal(std::string("axis ") + AxisName(axis) + " outside a layer");
    return *lk;
  };
  switch (axis) {
    case Axis::kNone:
      return {};
    case Axis::kHidden:
      return keys.p;
    case Axis::kHeadHidden:
      if (keys.p_h.empty()) throw InvalidArgument("keys have no head permutation p_h");
      return keys.p_h;
    case Axis::kQ:
      return keys.QPerm(c, t.layer);
    case Axis::kK:
      return keys.KPerm(c, t.layer);
    case Axis::kV:
      return keys.VPerm(c, t.layer);
    case Axis::kAttnOut:
      return keys.OPerm(c, t.layer);
    case Axis::kQkv:
      // A fused q|k|v: concat(p_q, q + p_k, q + kv + p_v).
      return Concat({keys.QPerm(c, t.layer), Offset(keys.KPerm(c, t.layer), c.q_size()),
                     Offset(keys.VPerm(c, t.layer), c.q_size() + c.kv_size())});
    case Axis::kFfn:
      return layer_key().ffn;
    case Axis::kExpertFfn:
      return layer_key().expert_ffn.at(static_cast<size_t>(t.expert));
    case Axis::kExperts:
      return layer_key().expert_order;
    case Axis::kOutputs:
      return keys.p_c;
    case Axis::kOne:
    case Axis::kVocab:
    case Axis::kPositions:
    case Axis::kTokenTypes:
    case Axis::kPatch:
      break;  // client-side axes: the server never sees them
  }
  throw Internal(std::string("no permutation for axis ") + AxisName(axis) + " (role " +
                 RoleName(t.role) + ")");
}

AxisPermutations PermutationsFor(const TransformedTensor& t, const ModelConfig& c,
                                 const ModelKeys& keys) {
  if (t.layer >= static_cast<int>(keys.layers.size())) {
    throw InvalidArgument("keys have fewer layers than the model");
  }
  const RoleInfo& r = Info(t.role);
  if (r.scope == Scope::kClient) {
    throw Internal(std::string("no transformation rule for client role ") + r.name);
  }
  return {AxisPermutation(r.rows, t, c, keys), AxisPermutation(r.cols, t, c, keys)};
}

std::string SourceTensorName(const TransformedTensor& t, const ModelConfig& plain,
                             const ModelKeys& keys) {
  if (t.expert < 0) return t.source_name;
  // New expert e is old expert expert_order[e].
  const LayerKey& lk = keys.layers[static_cast<size_t>(t.layer)];
  return TensorName(plain, t.role, t.layer,
                    static_cast<int>(lk.expert_order[static_cast<size_t>(t.expert)]));
}

at::Tensor PermuteTensor(const at::Tensor& w, Layout layout, const AxisPermutations& perms) {
  at::Tensor out = w;
  const bool conv = layout == Layout::kConv1D;
  // Linear [out, in]: rows on dim 0, cols on dim 1. Conv1D [in, out]: swapped.
  const int64_t row_dim = conv ? 1 : 0, col_dim = conv ? 0 : 1;
  if (!perms.rows.empty()) {
    if (w.size(row_dim) != static_cast<int64_t>(perms.rows.size())) {
      throw InvalidArgument("permutation size does not match tensor of shape " +
                            ShapeString(w.sizes().vec()));
    }
    out = out.index_select(row_dim, Index(perms.rows, w.device()));
  }
  if (!perms.cols.empty()) {
    if (w.dim() != 2 || w.size(col_dim) != static_cast<int64_t>(perms.cols.size())) {
      throw InvalidArgument("permutation size does not match tensor of shape " +
                            ShapeString(w.sizes().vec()));
    }
    out = out.index_select(col_dim, Index(perms.cols, w.device()));
  }
  return out.contiguous();
}

void PermuteTensorChunked(const at::Tensor& w, Layout layout, const AxisPermutations& perms,
                          size_t chunk_bytes,
                          const std::function<void(const void* data, size_t nbytes)>& sink) {
  if (w.dim() < 2 || w.size(0) == 0) {
    at::Tensor out = PermuteTensor(w, layout, perms);
    sink(out.data_ptr(), static_cast<size_t>(out.nbytes()));
    return;
  }
  // Stored dim 0 takes rows (Linear) or cols (Conv1D); dim 1 the other.
  const bool conv = layout == Layout::kConv1D;
  const Permutation& p0 = conv ? perms.cols : perms.rows;
  const Permutation& p1 = conv ? perms.rows : perms.cols;
  for (const auto* p : {&p0, &p1}) {
    int64_t dim = p == &p0 ? 0 : 1;
    if (!p->empty() && w.size(dim) != static_cast<int64_t>(p->size())) {
      throw InvalidArgument("permutation size does not match tensor of shape " +
                            ShapeString(w.sizes().vec()));
    }
  }
  const int64_t rows = w.size(0);
  const int64_t row_bytes = w.numel() / rows * static_cast<int64_t>(w.element_size());
  const int64_t step =
      std::max<int64_t>(1, static_cast<int64_t>(chunk_bytes) / std::max<int64_t>(1, row_bytes));
  at::Tensor idx0 = p0.empty() ? at::Tensor() : Index(p0, w.device());
  at::Tensor idx1 = p1.empty() ? at::Tensor() : Index(p1, w.device());
  for (int64_t begin = 0; begin < rows; begin += step) {
    const int64_t n = std::min(step, rows - begin);
    at::Tensor part =
        idx0.defined() ? w.index_select(0, idx0.narrow(0, begin, n)) : w.narrow(0, begin, n);
    if (idx1.defined()) part = part.index_select(1, idx1);
    part = part.contiguous();
    sink(part.data_ptr(), static_cast<size_t>(part.nbytes()));
  }
}

std::map<std::string, at::Tensor> TransformInMemory(const ModelConfig& plain,
                                                    const TensorSource& source,
                                                    const ModelKeys& keys) {
  ValidateKeys(keys, plain);
  std::map<std::string, at::Tensor> out;
  for (const TransformedTensor& t : PlanServerTensors(plain)) {
    at::Tensor w = source.Load(SourceTensorName(t, plain, keys), at::kFloat, at::kCPU);
    out[t.name] = PermuteTensor(w, t.layout, PermutationsFor(t, plain, keys));
  }
  return out;
}

}  // namespace stip
