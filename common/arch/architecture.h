// Architectures as data (after llama.cpp's llama-arch): each model family
// declares, in one file, how to read its config and a table of its tensors:
// name pattern, role, storage layout, and when the tensor is present. What a
// role is (its axes, scope, shape) is in the role table (common/arch/roles.h);
// the engine loads weights by role, and the STIP transform derives every
// tensor's row/column permutations from its role's axes (common/transform),
// so a new family needs a new table, not new engine or transform code.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "common/arch/model_config.h"
#include "common/arch/roles.h"

namespace stip {

class JsonConfig;  // common/arch/json_config.h

// How a tensor is stored, relative to its role's shape (roles.h, nn.Linear
// [out, in] for matrices, [n] for vectors):
//   kLinear: as the role's shape;
//   kConv1D: GPT-2's Conv1D, a matrix stored transposed [in, out];
//   kConv2D: ViT's patch projection [d, C, P, P] (the role's [d, C*P*P]);
//   kBatched: with a leading dimension of 1 ([1, n, d] for [n, d]).
enum class Layout { kLinear, kConv1D, kConv2D, kBatched };

struct TensorSpec {
  TensorSpec(std::string pattern_, Role role_, Layout layout_ = Layout::kLinear,
             std::function<bool(const ModelConfig&)> present_ = nullptr)
      : pattern(std::move(pattern_)), role(role_), layout(layout_), present(std::move(present_)) {}
  // Name with "{L}" for the layer index, "{E}" for the expert index and "{P}"
  // for the config's weight_prefix.
  std::string pattern;
  Role role;
  Layout layout = Layout::kLinear;
  // When the tensor exists for a config (nullptr: always). Roles tied to the
  // embedding (roles.h) are left out of tied checkpoints without a predicate.
  std::function<bool(const ModelConfig&)> present;
};

struct Architecture {
  std::string name;                      // "llama"
  std::vector<std::string> model_types;  // config.json model_type values it handles
  std::function<void(const JsonConfig&, ModelConfig*)> parse_config;
  std::vector<TensorSpec> tensors;
  // Optional: reads more of a model directory than config.json (e.g. the
  // sentence-transformers modules of a BERT model); called by LoadModelConfig.
  std::function<void(const std::string& dir, ModelConfig*)> read_model_dir = nullptr;
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

// The shape a tensor of `role` is stored with in `layout`.
std::vector<int64_t> StoredShape(Role role, Layout layout, const ModelConfig& config);

// All registered architectures (gpt2, llama family, mixtral, bert, vit).
const std::vector<const Architecture*>& Architectures();
// Throws kUnimplemented naming the model_type and the supported ones.
const Architecture& FindArchitecture(const std::string& model_type);

// The tensors a checkpoint of this config holds, with their expected shapes,
// in a stable order (globals first, then layer by layer).
std::vector<TensorEntry> ExpectedTensors(const ModelConfig& config);
// The name of the tensor of `role` in this config's family (layer/expert if
// per layer/expert); throws kNotFound if the family has no such role.
std::string TensorName(const ModelConfig& config, Role role, int layer = -1, int expert = -1);
// Whether this config's checkpoint stores a tensor of `role` (a tied head is
// not stored).
bool HasRole(const ModelConfig& config, Role role);

}  // namespace stip
