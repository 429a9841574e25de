#include "common/arch/architecture.h"

#include "common/arch/json_config.h"
#include "common/error.h"

namespace stip {

// Defined in the family files.
const Architecture& Gpt2Architecture();
const Architecture& LlamaArchitecture();
const Architecture& MixtralArchitecture();
const Architecture& BertArchitecture();
const Architecture& VitArchitecture();

const std::vector<const Architecture*>& Architectures() {
  static const std::vector<const Architecture*> kAll = {
      &Gpt2Architecture(), &LlamaArchitecture(), &MixtralArchitecture(),
      &BertArchitecture(), &VitArchitecture(),
  };
  return kAll;
}

const Architecture& FindArchitecture(const std::string& model_type) {
  std::string supported;
  for (const Architecture* a : Architectures()) {
    for (const std::string& t : a->model_types) {
      if (t == model_type) return *a;
      supported += (supported.empty() ? "" : ", ") + t;
    }
  }
  throw Unimplemented("unsupported model_type \"" + model_type + "\" (supported: " + supported +
                      ")");
}

namespace {

bool Stored(const TensorSpec& s, const ModelConfig& c) {
  if (s.present && !s.present(c)) return false;
  return !(Info(s.role).tied_to_embedding && c.tie_word_embeddings);
}

std::string Expand(const std::string& pattern, const ModelConfig& c, int layer, int expert) {
  std::string out;
  for (size_t i = 0; i < pattern.size(); ++i) {
    if (pattern.compare(i, 3, "{P}") == 0) {
      out += c.weight_prefix;
      i += 2;
    } else if (pattern.compare(i, 3, "{L}") == 0) {
      out += std::to_string(layer);
      i += 2;
    } else if (pattern.compare(i, 3, "{E}") == 0) {
      out += std::to_string(expert);
      i += 2;
    } else {
      out += pattern[i];
    }
  }
  return out;
}

const TensorSpec* FindSpec(const ModelConfig& config, Role role) {
  for (const TensorSpec& s : FindArchitecture(config.model_type).tensors) {
    if (s.role == role && (!s.present || s.present(config))) return &s;
  }
  return nullptr;
}

}  // namespace

std::vector<int64_t> StoredShape(Role role, Layout layout, const ModelConfig& config) {
  std::vector<int64_t> shape = RoleShape(role, config);
  switch (layout) {
    case Layout::kLinear:
      break;
    case Layout::kConv1D:
      if (shape.size() == 2) std::swap(shape[0], shape[1]);
      break;
    case Layout::kConv2D:
      shape = {shape[0], config.num_channels, config.patch_size, config.patch_size};
      break;
    case Layout::kBatched:
      shape.insert(shape.begin(), 1);
      break;
  }
  return shape;
}

std::vector<TensorEntry> ExpectedTensors(const ModelConfig& config) {
  const Architecture& arch = FindArchitecture(config.model_type);
  std::vector<TensorEntry> globals, layers;
  for (const TensorSpec& s : arch.tensors) {
    if (!Stored(s, config) || IsPerLayer(s.role)) continue;
    globals.push_back({Expand(s.pattern, config, -1, -1), s.role, s.layout, -1, -1,
                       StoredShape(s.role, s.layout, config)});
  }
  for (int l = 0; l < config.num_layers; ++l) {
    for (const TensorSpec& s : arch.tensors) {
      if (!IsPerLayer(s.role) || !Stored(s, config)) continue;
      std::vector<int64_t> shape = StoredShape(s.role, s.layout, config);
      int n = IsPerExpert(s.role) ? static_cast<int>(config.num_experts) : 1;
      for (int e = 0; e < n; ++e) {
        int expert = IsPerExpert(s.role) ? e : -1;
        layers.push_back(
            {Expand(s.pattern, config, l, expert), s.role, s.layout, l, expert, shape});
      }
    }
  }
  globals.insert(globals.end(), layers.begin(), layers.end());
  return globals;
}

std::string TensorName(const ModelConfig& config, Role role, int layer, int expert) {
  const TensorSpec* s = FindSpec(config, role);
  if (!s) {
    throw NotFound(std::string("model_type \"") + config.model_type + "\" has no tensor of role " +
                   RoleName(role));
  }
  return Expand(s->pattern, config, layer, expert);
}

bool HasRole(const ModelConfig& config, Role role) {
  const TensorSpec* s = FindSpec(config, role);
  return s != nullptr && Stored(*s, config);
}

}  // namespace stip
