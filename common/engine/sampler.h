// Next-token selection from logits on the user's device: greedy, or sampling
// with temperature, top-k, top-p (nucleus) and a repetition penalty, from a
// seeded generator (reproducible runs).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "common/engine/sampling_options.h"

namespace stip {

class Sampler {
 public:
  explicit Sampler(SamplingOptions options);
  // logits: [vocab] (fp32). `history`: ids already in the context (for the
  // repetition penalty). Throws kInvalidArgument for bad options.
  int64_t Next(const at::Tensor& logits, const std::vector<int64_t>& history);

 private:
  SamplingOptions options_;
  at::Generator gen_;
};

}  // namespace stip
