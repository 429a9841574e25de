// Architectures as data (after llama.cpp's llama-arch): each model family
// declares, in one file, how to read its config and a table of its tensors:
// name pattern, role, storage layout, and when the tensor is present. The
// engine loads weights by role, and the STIP transform derives every
// tensor's row/column permutations from its role (common/transform), so a new
// family needs a new table, not new engine or transform code.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "common/arch/model_config.h"

namespace stip {

class JsonConfig;  // common/arch/json_config.h

// What a tensor is, independent of its name in a given family.
enum class Role {
  // Client (device) side.
  kTokenEmbedding,     // [vocab, d]
  kPositionEmbedding,  // [max_positions, d] (learned positions, GPT-2)
  // Per layer.
  kAttnNormWeight,
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
  kFfnNormWeight,
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
  // Server head.
  kFinalNormWeight,
  kFinalNormBias,
  kLmHead,  // [vocab, d]
  kLmHeadBias,
};

const char* RoleName(Role role);
bool IsClientRole(Role role);  // embeddings: never sent to the server
bool IsPerLayer(Role role);
bool IsPerExpert(Role role);

// Storage layout of a matrix: nn.Linear [out, in] or GPT-2 Conv1D [in, out].
enum class Layout { kLinear, kConv1D, kVector };

struct TensorSpec {
  TensorSpec(std::string pattern_, Role role_, Layout layout_ = Layout::kLinear,
             std::function<bool(const ModelConfig&)> present_ = nullptr)
      : pattern(std::move(pattern_)), role(role_), layout(layout_), present(std::move(present_)) {}
  // Name with "{L}" for the layer index and "{E}" for the expert index.
  std::string pattern;
  Role role;
  Layout layout = Layout::kLinear;
  // When the tensor exists for a config (nullptr: always).
  std::function<bool(const ModelConfig&)> present;
};

struct Architecture {
  std::string name;                      // "llama"
  std::vector<std::string> model_types;  // config.json model_type values it handles
  std::function<void(const JsonConfig&, ModelConfig*)> parse_config;
  std::vector<TensorSpec> tensors;
};

// One concrete tensor of one model.
struct TensorEntry {
  std::string name;
  Role role;
  Layout layout;
  int layer = -1;              // -1 for global tensors
  int expert = -1;             // -1 unless per expert
  std::vector<int64_t> shape;  // as stored on disk (Conv1D: [in, out])
};

// All registered architectures (gpt2, llama family, mixtral).
const std::vector<const Architecture*>& Architectures();
// Throws kUnimplemented naming the model_type and the supported ones.
const Architecture& FindArchitecture(const std::string& model_type);

// The tensors a checkpoint of this config holds, with their expected shapes,
// in a stable order (globals first, then layer by layer).
std::vector<TensorEntry> ExpectedTensors(const ModelConfig& config);
// The name of the tensor of `role` in this config's family (layer/expert if
// per layer/expert); throws kNotFound if the family has no such role.
std::string TensorName(const ModelConfig& config, Role role, int layer = -1, int expert = -1);
bool HasRole(const ModelConfig& config, Role role);

}  // namespace stip
