// Checks on what a client sends in a session step, before anything reaches
// the model: the server must stay up and every other session unaffected
// whatever bytes arrive.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "stip/v1/stip.pb.h"

namespace stip {

// Decodes x' of a step: a known float datatype (FP32, FP16 or BF16), bytes
// matching the shape, shape [T >= 1, hidden_size], every value finite.
// Returns a CPU tensor of the wire datatype. Throws kInvalidArgument naming
// the problem.
at::Tensor DecodeHiddenStates(const v1::Tensor& wire, int64_t hidden_size);

}  // namespace stip
