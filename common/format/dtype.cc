#include "common/format/dtype.h"

#include <cstdint>
#include <limits>
#include <string>

#include "common/error.h"

namespace stip {
namespace {

struct DTypeEntry {
  DType dtype;
  const char* name;
  size_t size;
};

constexpr DTypeEntry kDTypes[] = {
    {DType::kF64, "F64", 8},   {DType::kF32, "F32", 4}, {DType::kF16, "F16", 2},
    {DType::kBF16, "BF16", 2}, {DType::kI64, "I64", 8}, {DType::kI32, "I32", 4},
    {DType::kI16, "I16", 2},   {DType::kI8, "I8", 1},   {DType::kU8, "U8", 1},
    {DType::kBool, "BOOL", 1},
};

const DTypeEntry& Entry(DType dtype) {
  for (const DTypeEntry& e : kDTypes) {
    if (e.dtype == dtype) return e;
  }
  throw Internal("invalid DType value " + std::to_string(static_cast<int>(dtype)));
}

}  // namespace

size_t DTypeSize(DType dtype) { return Entry(dtype).size; }

const char* DTypeName(DType dtype) { return Entry(dtype).name; }

DType ParseDType(std::string_view name, std::string_view what) {
  for (const DTypeEntry& e : kDTypes) {
    if (name == e.name) return e.dtype;
  }
  std::string supported;
  for (const DTypeEntry& e : kDTypes) {
    if (!supported.empty()) supported += ", ";
    supported += e.name;
  }
  throw InvalidArgument(std::string(what) + ": unknown dtype " + QuoteForMessage(name) +
                        " (supported: " + supported + ")");
}

int64_t NumElements(const std::vector<int64_t>& shape, std::string_view what) {
  for (int64_t d : shape) {
    if (d < 0) {
      throw InvalidArgument(std::string(what) + ": negative dimension " + std::to_string(d) +
                            " in shape " + ShapeString(shape));
    }
  }
  int64_t n = 1;
  bool overflow = false;
  for (int64_t d : shape) {
    if (d == 0) return 0;  // an empty tensor, whatever the other dims
    if (!overflow && __builtin_mul_overflow(n, d, &n)) overflow = true;
  }
  if (overflow) {
    throw InvalidArgument(std::string(what) + ": shape " + ShapeString(shape) +
                          " has more than 2^63-1 elements");
  }
  return n;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) s += ", ";
    s += std::to_string(shape[i]);
  }
  s += "]";
  return s;
}

}  // namespace stip
