#include "tools/random_model.h"

#include <ATen/ATen.h>

#include <functional>
#include <nlohmann/json.hpp>

#include "common/arch/architecture.h"
#include "common/error.h"

namespace stip {

ModelConfig PresetConfig(const std::string& preset) {
  nlohmann::json j;
  if (preset == "gpt2-124m") {
    j = {{"model_type", "gpt2"}, {"vocab_size", 50257}, {"n_embd", 768},
         {"n_layer", 12},        {"n_head", 12},        {"n_positions", 1024}};
  } else if (preset == "llama-7b") {
    j = {{"model_type", "llama"},     {"vocab_size", 32000},
         {"hidden_size", 4096},       {"intermediate_size", 11008},
         {"num_hidden_layers", 32},   {"num_attention_heads", 32},
         {"num_key_value_heads", 32}, {"max_position_embeddings", 4096}};
  } else if (preset == "small") {
    j = {{"model_type", "llama"},    {"vocab_size", 8000},
         {"hidden_size", 512},       {"intermediate_size", 1376},
         {"num_hidden_layers", 6},   {"num_attention_heads", 8},
         {"num_key_value_heads", 4}, {"max_position_embeddings", 2048}};
  } else if (preset == "tiny") {  // for the smoke test
    j = {{"model_type", "llama"},    {"vocab_size", 512},
         {"hidden_size", 64},        {"intermediate_size", 128},
         {"num_hidden_layers", 2},   {"num_attention_heads", 4},
         {"num_key_value_heads", 2}, {"max_position_embeddings", 256}};
  } else {
    throw InvalidArgument("unknown preset \"" + preset + "\" (tiny, small, gpt2-124m, llama-7b)");
  }
  return ParseModelConfig(j.dump(), "preset " + preset);
}

RandomSource::RandomSource(const ModelConfig& c) {
  for (const TensorEntry& e : ExpectedTensors(c)) shapes_[e.name] = e.shape;
}

bool RandomSource::Has(const std::string& name) const { return shapes_.count(name) != 0; }

std::vector<int64_t> RandomSource::Shape(const std::string& name) const {
  auto it = shapes_.find(name);
  if (it == shapes_.end()) throw NotFound("random source: no tensor \"" + name + "\"");
  return it->second;
}

at::Tensor RandomSource::Load(const std::string& name, at::ScalarType type,
                              at::Device device) const {
  auto opts = at::TensorOptions().dtype(type).device(device);
  const std::vector<int64_t> shape = Shape(name);
  if (shape.size() == 1) return at::ones(shape, opts);  // norm weights (and biases)
  // The same values every time a name is loaded (the STIP model is made from them).
  at::manual_seed(std::hash<std::string>()(name));
  return at::randn(shape, opts).mul_(0.02);
}

}  // namespace stip
