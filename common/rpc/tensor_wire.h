// Tensors on the wire: {datatype, shape, raw little-endian bytes}.
#pragma once

#include <ATen/ATen.h>

#include "stip/v1/stip.pb.h"

namespace stip {

// "FP32" | "FP16" | "BF16" | "INT64" | "INT32".
const char* WireDataType(at::ScalarType type);
at::ScalarType ParseWireDataType(const std::string& datatype);  // throws kInvalidArgument

void ToWire(const at::Tensor& t, v1::Tensor* out);

struct WireLimits {
  int64_t max_elements = int64_t{1} << 31;
};
// Validates everything before reading the bytes: known datatype, dims >= 0, the
// product without overflow and within limits, byte count == product x size.
// Returns a CPU tensor that owns its memory. Throws kInvalidArgument naming the problem.
at::Tensor FromWire(const v1::Tensor& t, const WireLimits& limits = {});

}  // namespace stip
