// Errors raised by stip's components: one model for the whole tree. Every
// error names the problem and the object (file, tensor, key) it concerns, and
// carries a code (gRPC's set of codes, so that the daemons map it onto a
// grpc::Status and back without loss: common/rpc/status.h) and, where a
// program must tell one case from others of the same code, a machine-readable
// reason. Messages never contain key material.
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>

namespace stip {

// gRPC's canonical codes (with gRPC's numbers; there is no OK: an Error is a
// failure). Which one to use follows gRPC's guide: the caller should fix its
// input (INVALID_ARGUMENT), the state of the system must change first
// (FAILED_PRECONDITION), retry later (UNAVAILABLE)...
enum class ErrorCode {
  kCancelled = 1,           // the caller cancelled the operation
  kUnknown = 2,             // an error from elsewhere with no better code
  kInvalidArgument = 3,     // malformed input: bad shape, dtype, JSON, header
  kDeadlineExceeded = 4,    // a deadline or timeout passed
  kNotFound = 5,            // missing file, tensor, model, key
  kAlreadyExists = 6,       // what is being created exists already
  kPermissionDenied = 7,    // the caller is known but not allowed
  kResourceExhausted = 8,   // a limit was hit
  kFailedPrecondition = 9,  // state does not allow the operation
  kAborted = 10,            // a concurrent operation got in the way (retry at a higher level)
  kOutOfRange = 11,         // past the end of a valid range
  kUnimplemented = 12,      // unsupported architecture / feature
  kInternal = 13,           // a broken invariant; a bug
  kUnavailable = 14,        // a peer cannot be reached now (retry with backoff)
  kDataLoss = 15,           // corrupt or truncated data on disk
  kUnauthenticated = 16,    // no valid credentials
};

// Every ErrorCode, in numeric order (for tests and tables).
inline constexpr ErrorCode kAllErrorCodes[] = {
    ErrorCode::kCancelled,        ErrorCode::kUnknown,           ErrorCode::kInvalidArgument,
    ErrorCode::kDeadlineExceeded, ErrorCode::kNotFound,          ErrorCode::kAlreadyExists,
    ErrorCode::kPermissionDenied, ErrorCode::kResourceExhausted, ErrorCode::kFailedPrecondition,
    ErrorCode::kAborted,          ErrorCode::kOutOfRange,        ErrorCode::kUnimplemented,
    ErrorCode::kInternal,         ErrorCode::kUnavailable,       ErrorCode::kDataLoss,
    ErrorCode::kUnauthenticated,
};

// "INVALID_ARGUMENT", "NOT_FOUND", ... (gRPC's names).
const char* ErrorCodeName(ErrorCode code);

// Machine-readable reasons (proto/stip/v1/stip.proto, "Machine-readable error
// reasons"): ASCII, upper case. On the wire a status carries its reason in
// the trailing metadata (common/rpc/status.h).
//
// FAILED_PRECONDITION: the model instance was retired (key rotation); fetch
// the bundle of the user's current instance and open the session there.
inline constexpr char kReasonInstanceRetired[] = "INSTANCE_RETIRED";

// Quotes untrusted text for an error message: escapes quotes, backslashes and
// control bytes, and truncates long input (never inside a UTF-8 sequence).
std::string QuoteForMessage(std::string_view s, size_t max_bytes = 64);

class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message, std::string reason = "")
      : std::runtime_error(message), code_(code), reason_(std::move(reason)) {}
  ErrorCode code() const { return code_; }
  // The machine-readable reason ("" = none), e.g. kReasonInstanceRetired.
  const std::string& reason() const { return reason_; }

 private:
  ErrorCode code_;
  std::string reason_;
};

// Convenience constructors: throw stip::InvalidArgument("...").
inline Error Cancelled(const std::string& m) { return Error(ErrorCode::kCancelled, m); }
inline Error Unknown(const std::string& m) { return Error(ErrorCode::kUnknown, m); }
inline Error InvalidArgument(const std::string& m) { return Error(ErrorCode::kInvalidArgument, m); }
inline Error DeadlineExceeded(const std::string& m) {
  return Error(ErrorCode::kDeadlineExceeded, m);
}
inline Error NotFound(const std::string& m) { return Error(ErrorCode::kNotFound, m); }
inline Error AlreadyExists(const std::string& m) { return Error(ErrorCode::kAlreadyExists, m); }
inline Error PermissionDenied(const std::string& m) {
  return Error(ErrorCode::kPermissionDenied, m);
}
inline Error ResourceExhausted(const std::string& m) {
  return Error(ErrorCode::kResourceExhausted, m);
}
inline Error FailedPrecondition(const std::string& m, std::string reason = "") {
  return Error(ErrorCode::kFailedPrecondition, m, std::move(reason));
}
inline Error Aborted(const std::string& m) { return Error(ErrorCode::kAborted, m); }
inline Error OutOfRange(const std::string& m) { return Error(ErrorCode::kOutOfRange, m); }
inline Error Unimplemented(const std::string& m) { return Error(ErrorCode::kUnimplemented, m); }
inline Error Internal(const std::string& m) { return Error(ErrorCode::kInternal, m); }
inline Error Unavailable(const std::string& m) { return Error(ErrorCode::kUnavailable, m); }
inline Error DataLoss(const std::string& m) { return Error(ErrorCode::kDataLoss, m); }
inline Error Unauthenticated(const std::string& m) { return Error(ErrorCode::kUnauthenticated, m); }

}  // namespace stip
