// The settings of next-token selection (common/engine/sampler.h), torch-free
// so that configuration code (common/chat/generation_config.h) can fill them.
#pragma once

#include <cstdint>
#include <optional>

namespace stip {

struct SamplingOptions {
  bool greedy = false;
  double temperature = 1.0;         // <= 0 means greedy
  int64_t top_k = 0;                // 0: off
  double top_p = 1.0;               // 1: off
  double repetition_penalty = 1.0;  // 1: off (CTRL-style, as transformers)
  std::optional<uint64_t> seed;     // nullopt: nondeterministic
};

}  // namespace stip
