// Bridges between torch-free tensor descriptions (safetensors, wire datatypes)
// and ATen tensors.
#pragma once

#include <ATen/ATen.h>

#include <string>

#include "common/format/checkpoint.h"
#include "common/format/dtype.h"

namespace stip {

at::ScalarType ToScalarType(DType dtype);
DType FromScalarType(at::ScalarType type);  // throws kInvalidArgument for unsupported types

// Copies a tensor out of a (memory-mapped) file into a tensor of `type` on
// `device` (no copy is kept of the mapping).
at::Tensor LoadTensor(const TensorRef& ref, at::ScalarType type, at::Device device = at::kCPU);
// Same, keeping the tensor's own dtype.
at::Tensor LoadTensor(const TensorRef& ref, at::Device device = at::kCPU);

// "float32" | "fp32" | "float16" | "fp16" | "half" | "bfloat16" | "bf16" | "auto"
// ("auto": float32 on CPU, the checkpoint's dtype on CUDA).
at::ScalarType ParseComputeDType(const std::string& name, const std::string& checkpoint_dtype,
                                 at::Device device);
// "cpu" | "cuda" | "cuda:N" | "auto" (CUDA when available).
at::Device ParseDevice(const std::string& name);

}  // namespace stip
