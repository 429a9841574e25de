#include "common/rpc/tensor_wire.h"

#include <cstring>
#include <limits>

#include "common/error.h"
#include "common/format/dtype.h"

namespace stip {

const char* WireDataType(at::ScalarType type) {
  switch (type) {
    case at::kFloat: return "FP32";
    case at::kHalf: return "FP16";
    case at::kBFloat16: return "BF16";
    case at::kLong: return "INT64";
    case at::kInt: return "INT32";
    default: throw InvalidArgument(std::string("no wire datatype for ") + at::toString(type));
  }
}

at::ScalarType ParseWireDataType(const std::string& d) {
  if (d == "FP32") return at::kFloat;
  if (d == "FP16") return at::kHalf;
  if (d == "BF16") return at::kBFloat16;
  if (d == "INT64") return at::kLong;
  if (d == "INT32") return at::kInt;
  throw InvalidArgument("unknown tensor datatype " + QuoteForMessage(d, 32) +
                        " (FP32, FP16, BF16, INT64 or INT32)");
}

void ToWire(const at::Tensor& t, v1::Tensor* out) {
  at::Tensor c = t.to(at::kCPU).contiguous();
  out->set_datatype(WireDataType(c.scalar_type()));
  out->clear_shape();
  for (int64_t d : c.sizes()) out->add_shape(d);
  out->set_data(c.data_ptr(), static_cast<size_t>(c.nbytes()));
}

at::Tensor FromWire(const v1::Tensor& t, const WireLimits& limits) {
  at::ScalarType type = ParseWireDataType(t.datatype());
  std::vector<int64_t> shape(t.shape().begin(), t.shape().end());
  if (shape.size() > 8) throw InvalidArgument("tensor has " + std::to_string(shape.size()) + " dims");
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) throw InvalidArgument("tensor shape " + ShapeString(shape) + " has a negative dim");
    if (d != 0 && n > limits.max_elements / d) {
      throw InvalidArgument("tensor shape " + ShapeString(shape) + " is too large");
    }
    n *= d;
  }
  if (n > limits.max_elements) {
    throw InvalidArgument("tensor shape " + ShapeString(shape) + " is too large");
  }
  const size_t want = static_cast<size_t>(n) * c10::elementSize(type);
  if (t.data().size() != want) {
    throw InvalidArgument("tensor " + std::string(t.datatype()) + " " + ShapeString(shape) + " needs " +
                          std::to_string(want) + " bytes, got " + std::to_string(t.data().size()));
  }
  at::Tensor out = at::empty(shape, at::TensorOptions().dtype(type));
  if (want) std::memcpy(out.data_ptr(), t.data().data(), want);
  return out;
}

}  // namespace stip
