// ParaTrans: the STIP parameter transformation, tensor by tensor
// (docs/transform.md). Every tensor's row and column permutations
// follow from its role in the architecture table; nothing here is specific
// to one model family.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "common/arch/architecture.h"
#include "common/engine/model_weights.h"
#include "common/keys/model_keys.h"

namespace stip {

// One tensor of the transformed (server) checkpoint.
struct TransformedTensor {
  std::string name;         // in the output checkpoint
  std::string source_name;  // in the plaintext checkpoint
  Role role;
  Layout layout;
  int layer = -1;
  int expert = -1;  // index in the transformed model (source expert = expert_order[expert])
  std::vector<int64_t> shape;
};

// Permutations of a matrix in nn.Linear layout [out, in] (rows = out) or of a
// vector (rows only). Empty = not permuted.
struct AxisPermutations {
  Permutation rows;
  Permutation cols;
};

// The config of the transformed checkpoint: untied head, the instance id.
ModelConfig TransformedConfig(const ModelConfig& plain, const std::string& instance_id);
// config.json text for it (the original text with tie_word_embeddings=false
// and a "stip" record {instance, format}; no key material).
std::string TransformedConfigJson(const std::string& plain_json, const std::string& instance_id);

// Every server tensor of the transformed model, in a stable order; the LM
// head is always present (from the token embedding when the model is tied).
std::vector<TransformedTensor> PlanServerTensors(const ModelConfig& plain);

// The permutation of one axis kind (roles.h) for tensor `t` (its layer and
// expert pick the per-layer keys): hidden -> p, outputs -> p_c, ffn -> p_f, ...
Permutation AxisPermutation(Axis axis, const TransformedTensor& t, const ModelConfig& plain,
                            const ModelKeys& keys);
// {rows, cols} = the permutations of the role's row and column axes.
AxisPermutations PermutationsFor(const TransformedTensor& t, const ModelConfig& plain,
                                 const ModelKeys& keys);

// The plaintext tensor that `t` is made from (for MoE experts, the expert that
// the keys' expert order moves into slot t.expert).
std::string SourceTensorName(const TransformedTensor& t, const ModelConfig& plain,
                             const ModelKeys& keys);

// W' = W[rows][:, cols] in Linear layout; Conv1D ([in, out]) gets W[cols][:, rows];
// vectors b[rows]. Works in any dtype (a gather is exact).
at::Tensor PermuteTensor(const at::Tensor& w, Layout layout, const AxisPermutations& perms);

// The same permutation produced in slices of about `chunk_bytes` of output
// (whole rows of the stored layout), handed to `sink` in order: the streaming
// transform never holds a whole permuted copy of a large tensor.
void PermuteTensorChunked(const at::Tensor& w, Layout layout, const AxisPermutations& perms,
                          size_t chunk_bytes,
                          const std::function<void(const void* data, size_t nbytes)>& sink);

// The server half of the transformed model, in memory (verification, tests).
std::map<std::string, at::Tensor> TransformInMemory(const ModelConfig& plain,
                                                    const TensorSource& source,
                                                    const ModelKeys& keys);

}  // namespace stip
