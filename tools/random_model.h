// Models of a named shape with random weights, for benchmarks and profiles:
// speed does not depend on the values, and a 7B model never has to exist on
// disk (or in fp32 on the host).
#pragma once

#include <map>
#include <string>
#include <vector>

#include "common/arch/model_config.h"
#include "common/engine/model_weights.h"

namespace stip {

// tiny, small (LLaMA-shaped), gpt2-124m, llama-7b; kInvalidArgument otherwise.
ModelConfig PresetConfig(const std::string& preset);

// Every tensor the config names, made on the device in the compute dtype
// (norm weights are ones, matrices N(0, 0.02^2)); the same values every time a
// name is loaded.
class RandomSource : public TensorSource {
 public:
  explicit RandomSource(const ModelConfig& c);
  bool Has(const std::string& name) const override;
  std::vector<int64_t> Shape(const std::string& name) const override;
  at::Tensor Load(const std::string& name, at::ScalarType type, at::Device device) const override;
  std::string Describe() const override { return "random weights"; }

 private:
  std::map<std::string, std::vector<int64_t>> shapes_;
};

}  // namespace stip
