#include "common/engine/tensor_util.h"

#include <ATen/Context.h>

#include "common/error.h"

namespace stip {

at::ScalarType ToScalarType(DType dtype) {
  switch (dtype) {
    case DType::kF64:
      return at::kDouble;
    case DType::kF32:
      return at::kFloat;
    case DType::kF16:
      return at::kHalf;
    case DType::kBF16:
      return at::kBFloat16;
    case DType::kI64:
      return at::kLong;
    case DType::kI32:
      return at::kInt;
    case DType::kI16:
      return at::kShort;
    case DType::kI8:
      return at::kChar;
    case DType::kU8:
      return at::kByte;
    case DType::kBool:
      return at::kBool;
  }
  throw InvalidArgument("unknown dtype");
}

DType FromScalarType(at::ScalarType type) {
  switch (type) {
    case at::kDouble:
      return DType::kF64;
    case at::kFloat:
      return DType::kF32;
    case at::kHalf:
      return DType::kF16;
    case at::kBFloat16:
      return DType::kBF16;
    case at::kLong:
      return DType::kI64;
    case at::kInt:
      return DType::kI32;
    case at::kShort:
      return DType::kI16;
    case at::kChar:
      return DType::kI8;
    case at::kByte:
      return DType::kU8;
    case at::kBool:
      return DType::kBool;
    default:
      throw InvalidArgument(std::string("unsupported tensor type ") + at::toString(type));
  }
}

at::Tensor LoadTensor(const TensorRef& ref, at::ScalarType type, at::Device device) {
  const TensorInfo& info = *ref.info;
  at::ScalarType src = ToScalarType(info.dtype);
  // from_blob needs a non-const pointer but we never write through it.
  at::Tensor view =
      at::from_blob(const_cast<uint8_t*>(ref.data), info.shape, at::TensorOptions().dtype(src));
  at::Tensor out = view.to(device, type, /*non_blocking=*/false, /*copy=*/true);
  return out;
}

at::Tensor LoadTensor(const TensorRef& ref, at::Device device) {
  return LoadTensor(ref, ToScalarType(ref.info->dtype), device);
}

at::ScalarType ParseComputeDType(const std::string& name, const std::string& checkpoint_dtype,
                                 at::Device device) {
  std::string n = name;
  if (n == "auto") {
    if (device.is_cpu()) return at::kFloat;
    n = checkpoint_dtype == "float32" ? "float16" : checkpoint_dtype;
  }
  if (n == "float32" || n == "fp32") return at::kFloat;
  if (n == "float16" || n == "fp16" || n == "half") return at::kHalf;
  if (n == "bfloat16" || n == "bf16") return at::kBFloat16;
  throw InvalidArgument("unsupported dtype \"" + name +
                        "\" (use float32, float16, bfloat16 or auto)");
}

at::Device ParseDevice(const std::string& name) {
  if (name == "auto") return at::hasCUDA() ? at::Device(at::kCUDA, 0) : at::Device(at::kCPU);
  if (name == "cpu") return at::kCPU;
  if (name.rfind("cuda", 0) == 0) {
    if (!at::hasCUDA()) {
      throw InvalidArgument("device \"" + name + "\" requested but this build has no CUDA device");
    }
    return at::Device(name);
  }
  throw InvalidArgument("unknown device \"" + name + "\" (use auto, cpu, cuda or cuda:N)");
}

}  // namespace stip
