// A Hugging Face model directory's weights: `model.safetensors`, or shards
// listed in `model.safetensors.index.json` ({"weight_map": {tensor: file}}).
// Every shard is memory-mapped; the index is validated (files inside the
// directory, every mapped tensor present in its shard, no tensor in two
// shards). Torch-free.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/format/safetensors.h"

namespace stip {

struct TensorRef {
  const TensorInfo* info = nullptr;
  const uint8_t* data = nullptr;
  const SafetensorsFile* file = nullptr;
};

class Checkpoint {
 public:
  // Throws kNotFound if the directory holds neither file, kDataLoss/kInvalidArgument
  // for a corrupt index or shard.
  static Checkpoint Open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  // All tensor names, sorted.
  std::vector<std::string> Names() const;
  bool Has(std::string_view name) const;
  // Throws kNotFound naming the tensor and the directory.
  TensorRef Get(std::string_view name) const;
  // Shard files in order (one for an unsharded checkpoint).
  const std::vector<std::shared_ptr<const SafetensorsFile>>& shards() const { return shards_; }
  bool sharded() const { return sharded_; }

 private:
  std::string dir_;
  bool sharded_ = false;
  std::vector<std::shared_ptr<const SafetensorsFile>> shards_;
  std::vector<std::pair<std::string, size_t>> index_;  // sorted by name -> shard
};

}  // namespace stip
