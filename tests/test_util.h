// Helpers shared by the torch-based tests: fixture paths and reference tensors
// saved by Hugging Face transformers (tests/data/hf-reference, models/*).
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "common/engine/tensor_util.h"
#include "common/format/safetensors.h"

namespace stip::test {

inline std::string FixtureDir(const std::string& arch) {
  return std::string(STIP_TEST_DATA_DIR) + "/hf-reference/" + arch;
}
inline std::string ModelDir(const std::string& name) {
  return std::string(STIP_MODELS_DIR) + "/" + name;
}

// A tensor of a reference.safetensors file, as saved by transformers.
inline at::Tensor Reference(const std::string& dir, const std::string& name) {
  auto file = SafetensorsFile::Open(dir + "/reference.safetensors");
  const TensorInfo& info = file->Get(name);
  return LoadTensor(TensorRef{&info, file->Data(info), file.get()});
}

inline std::vector<int64_t> ToIds(const at::Tensor& t) {
  at::Tensor c = t.to(at::kLong).contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

inline double MaxAbsDiff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

}  // namespace stip::test
