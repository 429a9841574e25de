// Errors raised by stip's components. Every error names the problem and the
// object (file, tensor, key) it concerns, and carries a code that the daemons
// map onto gRPC status codes. Messages never contain key material.
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>

namespace stip {

enum class ErrorCode {
  kInvalidArgument,     // malformed input: bad shape, dtype, JSON, header
  kNotFound,            // missing file, tensor, model, key
  kFailedPrecondition,  // state does not allow the operation
  kDataLoss,            // corrupt or truncated data on disk
  kResourceExhausted,   // a limit was hit
  kUnimplemented,       // unsupported architecture / feature
  kPermissionDenied,
  kInternal,
};

const char* ErrorCodeName(ErrorCode code);

// Quotes untrusted text for an error message: escapes quotes, backslashes and
// control bytes, and truncates long input (never inside a UTF-8 sequence).
std::string QuoteForMessage(std::string_view s, size_t max_bytes = 64);

class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
  ErrorCode code() const { return code_; }

 private:
  ErrorCode code_;
};

// Convenience constructors: throw stip::InvalidArgument("...").
inline Error InvalidArgument(const std::string& m) { return Error(ErrorCode::kInvalidArgument, m); }
inline Error NotFound(const std::string& m) { return Error(ErrorCode::kNotFound, m); }
inline Error DataLoss(const std::string& m) { return Error(ErrorCode::kDataLoss, m); }
inline Error FailedPrecondition(const std::string& m) {
  return Error(ErrorCode::kFailedPrecondition, m);
}
inline Error Unimplemented(const std::string& m) { return Error(ErrorCode::kUnimplemented, m); }
inline Error ResourceExhausted(const std::string& m) {
  return Error(ErrorCode::kResourceExhausted, m);
}
inline Error Internal(const std::string& m) { return Error(ErrorCode::kInternal, m); }

}  // namespace stip
