#include "server/step_validation.h"

#include "common/error.h"
#include "common/format/dtype.h"
#include "common/rpc/tensor_wire.h"

namespace stip {

at::Tensor DecodeHiddenStates(const v1::Tensor& wire, int64_t hidden_size) {
  if (wire.datatype().empty() && wire.shape_size() == 0 && wire.data().empty()) {
    throw InvalidArgument("step carries no hidden states");
  }
  const at::ScalarType type = ParseWireDataType(wire.datatype());
  if (type != at::kFloat && type != at::kHalf && type != at::kBFloat16) {
    throw InvalidArgument("hidden states must be FP32, FP16 or BF16, got " + wire.datatype());
  }
  std::vector<int64_t> shape(wire.shape().begin(), wire.shape().end());
  if (shape.size() != 2 || shape[1] != hidden_size || shape[0] < 1) {
    throw InvalidArgument("hidden states must have shape [T >= 1, " + std::to_string(hidden_size) +
                          "], got " + ShapeString(shape));
  }
  at::Tensor x = FromWire(wire);  // checks the byte count against the shape
  if (!at::isfinite(x).all().item<bool>()) {
    throw InvalidArgument("hidden states contain NaN or infinite values");
  }
  return x;
}

}  // namespace stip
