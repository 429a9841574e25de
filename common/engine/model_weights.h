// Weights by role, loaded from any tensor source (a checkpoint on disk, or
// tensors in memory such as a freshly transformed model), validated against
// the architecture's table, converted to the engine's canonical layout:
// nn.Linear [out, in] matrices; GPT-2's fused q|k|v split; Conv1D transposed.
#pragma once

#include <ATen/ATen.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/arch/architecture.h"
#include "common/format/checkpoint.h"

namespace stip {

// Where weights come from, by checkpoint tensor name.
class TensorSource {
 public:
  virtual ~TensorSource() = default;
  virtual bool Has(const std::string& name) const = 0;
  // Shape as stored (for validation before anything is copied).
  virtual std::vector<int64_t> Shape(const std::string& name) const = 0;
  // The tensor converted to `type` on `device`.
  virtual at::Tensor Load(const std::string& name, at::ScalarType type,
                          at::Device device) const = 0;
  virtual std::string Describe() const = 0;  // for error messages
};

class CheckpointSource : public TensorSource {
 public:
  explicit CheckpointSource(const Checkpoint& checkpoint) : ckpt_(checkpoint) {}
  bool Has(const std::string& name) const override;
  std::vector<int64_t> Shape(const std::string& name) const override;
  at::Tensor Load(const std::string& name, at::ScalarType type, at::Device device) const override;
  std::string Describe() const override;

 private:
  const Checkpoint& ckpt_;
};

class MapSource : public TensorSource {
 public:
  explicit MapSource(const std::map<std::string, at::Tensor>& tensors, std::string what = "memory")
      : tensors_(tensors), what_(std::move(what)) {}
  bool Has(const std::string& name) const override;
  std::vector<int64_t> Shape(const std::string& name) const override;
  at::Tensor Load(const std::string& name, at::ScalarType type, at::Device device) const override;
  std::string Describe() const override { return what_; }

 private:
  const std::map<std::string, at::Tensor>& tensors_;
  std::string what_;
};

struct LoadOptions {
  at::ScalarType dtype = at::kFloat;
  at::Device device = at::kCPU;
  // CUDA: decode steps of pooled sequences replay captured CUDA graphs
  // (common/engine/decode_graphs.h); also off with STIP_CUDA_GRAPHS=0.
  bool cuda_graphs = true;
};

// Every tensor in the engine's layout: the role's shape (roles.h), i.e.
// nn.Linear [out, in] matrices and [n] vectors. Undefined where the family has
// no such role.
struct ClientWeights {
  at::Tensor token_embedding;       // [vocab, d]
  at::Tensor position_embedding;    // [max_positions, d]
  at::Tensor token_type_embedding;  // [type_vocab, d]
  at::Tensor embed_norm_w, embed_norm_b;
  at::Tensor patch_w, patch_b;  // [d, C*P*P], [d]
  at::Tensor cls_token;         // [1, d]
};

struct ExpertWeights {
  at::Tensor gate, up, down;
};

struct LayerWeights {
  at::Tensor attn_norm_w, attn_norm_b;
  at::Tensor wq, bq, wk, bk, wv, bv, wo, bo;  // Linear layout; biases may be undefined
  at::Tensor ffn_norm_w, ffn_norm_b;
  at::Tensor w_up, b_up, w_gate, b_gate, w_down, b_down;
  at::Tensor router;
  std::vector<ExpertWeights> experts;
};

struct ServerWeights {
  std::vector<LayerWeights> layers;
  at::Tensor final_norm_w, final_norm_b;
  at::Tensor lm_head_w, lm_head_b;
  // Encoder heads (common/engine/encoder.h).
  at::Tensor mlm_dense_w, mlm_dense_b, mlm_norm_w, mlm_norm_b, mlm_decoder_w, mlm_decoder_b;
  at::Tensor pooler_w, pooler_b, classifier_w, classifier_b;
};

// Throws stip::Error naming the missing tensor or the mismatching shape.
ClientWeights LoadClientWeights(const ModelConfig& config, const TensorSource& source,
                                const LoadOptions& options);
// For a tied model, a head tied to the embedding (roles.h) is the token embedding.
ServerWeights LoadServerWeights(const ModelConfig& config, const TensorSource& source,
                                const LoadOptions& options);

// Checks that every tensor the config implies is present with the right shape
// (server-only checkpoints may lack the client tensors when `server_only`).
void ValidateTensors(const ModelConfig& config, const TensorSource& source, bool server_only);

}  // namespace stip
