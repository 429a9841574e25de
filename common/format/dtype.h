// Element types of tensors on disk and on the wire (safetensors names and the
// wire datatypes of the gRPC API). Torch-free.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace stip {

enum class DType { kF64, kF32, kF16, kBF16, kI64, kI32, kI16, kI8, kU8, kBool };

// Size of one element in bytes.
size_t DTypeSize(DType dtype);
// safetensors spelling: "F32", "F16", "BF16", "I64", ...
const char* DTypeName(DType dtype);
// Parses the safetensors spelling; throws stip::Error(kInvalidArgument) naming `what`.
DType ParseDType(std::string_view name, std::string_view what = "tensor");

// Product of the dims; throws kInvalidArgument on a negative dim or overflow of int64.
int64_t NumElements(const std::vector<int64_t>& shape, std::string_view what = "tensor");
// "[2, 11, 64]"
std::string ShapeString(const std::vector<int64_t>& shape);

}  // namespace stip
