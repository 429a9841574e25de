#include "common/rpc/status.h"

#include <grpcpp/client_context.h>
#include <grpcpp/server_context.h>

#include <exception>

namespace stip {

grpc::StatusCode ToGrpcCode(ErrorCode code) {
  switch (code) {
    case ErrorCode::kCancelled:
      return grpc::StatusCode::CANCELLED;
    case ErrorCode::kUnknown:
      return grpc::StatusCode::UNKNOWN;
    case ErrorCode::kInvalidArgument: return grpc::StatusCode::INVALID_ARGUMENT;
    case ErrorCode::kDeadlineExceeded:
      return grpc::StatusCode::DEADLINE_EXCEEDED;
    case ErrorCode::kNotFound: return grpc::StatusCode::NOT_FOUND;
    case ErrorCode::kAlreadyExists:
      return grpc::StatusCode::ALREADY_EXISTS;
    case ErrorCode::kPermissionDenied:
      return grpc::StatusCode::PERMISSION_DENIED;
    case ErrorCode::kResourceExhausted: return grpc::StatusCode::RESOURCE_EXHAUSTED;
    case ErrorCode::kFailedPrecondition:
      return grpc::StatusCode::FAILED_PRECONDITION;
    case ErrorCode::kAborted:
      return grpc::StatusCode::ABORTED;
    case ErrorCode::kOutOfRange:
      return grpc::StatusCode::OUT_OF_RANGE;
    case ErrorCode::kUnimplemented:
      return grpc::StatusCode::UNIMPLEMENTED;
    case ErrorCode::kInternal: return grpc::StatusCode::INTERNAL;
    case ErrorCode::kUnavailable:
      return grpc::StatusCode::UNAVAILABLE;
    case ErrorCode::kDataLoss:
      return grpc::StatusCode::DATA_LOSS;
    case ErrorCode::kUnauthenticated:
      return grpc::StatusCode::UNAUTHENTICATED;
  }
  return grpc::StatusCode::UNKNOWN;
}

ErrorCode FromGrpcCode(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::CANCELLED:
      return ErrorCode::kCancelled;
    case grpc::StatusCode::INVALID_ARGUMENT:
      return ErrorCode::kInvalidArgument;
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return ErrorCode::kDeadlineExceeded;
    case grpc::StatusCode::NOT_FOUND:
      return ErrorCode::kNotFound;
    case grpc::StatusCode::ALREADY_EXISTS:
      return ErrorCode::kAlreadyExists;
    case grpc::StatusCode::PERMISSION_DENIED:
      return ErrorCode::kPermissionDenied;
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return ErrorCode::kResourceExhausted;
    case grpc::StatusCode::FAILED_PRECONDITION:
      return ErrorCode::kFailedPrecondition;
    case grpc::StatusCode::ABORTED:
      return ErrorCode::kAborted;
    case grpc::StatusCode::OUT_OF_RANGE:
      return ErrorCode::kOutOfRange;
    case grpc::StatusCode::UNIMPLEMENTED: return ErrorCode::kUnimplemented;
    case grpc::StatusCode::INTERNAL:
      return ErrorCode::kInternal;
    case grpc::StatusCode::UNAVAILABLE:
      return ErrorCode::kUnavailable;
    case grpc::StatusCode::DATA_LOSS:
      return ErrorCode::kDataLoss;
    case grpc::StatusCode::UNAUTHENTICATED:
      return ErrorCode::kUnauthenticated;
    default:
      return ErrorCode::kUnknown;  // OK, UNKNOWN, and codes from the future
  }
}

grpc::Status ToStatus(const Error& error, grpc::ServerContextBase* context) {
  if (context && !error.reason().empty()) {
    context->AddTrailingMetadata(kErrorReasonKey, error.reason());
  }
  return grpc::Status(ToGrpcCode(error.code()), error.what());
}

grpc::Status CurrentExceptionToStatus(grpc::ServerContextBase* context) {
  try {
    throw;
  } catch (const Error& e) {
    return ToStatus(e, context);
  } catch (const std::exception& e) {
    return grpc::Status(grpc::StatusCode::INTERNAL, std::string("internal error: ") + e.what());
  } catch (...) {
    return grpc::Status(grpc::StatusCode::INTERNAL, "internal error");
  }
}

std::string ReasonOf(const grpc::ClientContext& context) {
  for (const auto& [key, value] : context.GetServerTrailingMetadata()) {
    if (key == kErrorReasonKey) return std::string(value.data(), value.size());
  }
  return "";
}

Error ErrorFromStatus(const grpc::Status& status, const std::string& message, std::string reason) {
  return Error(FromGrpcCode(status.error_code()),
               message.empty() ? status.error_message() : message, std::move(reason));
}

Error ErrorFromStatus(const grpc::Status& status, const grpc::ClientContext& context,
                      const std::string& message) {
  return ErrorFromStatus(status, message, ReasonOf(context));
}

void ThrowStatus(const grpc::Status& status, const std::string& what,
                 const grpc::ClientContext* context) {
  throw ErrorFromStatus(status, what + ": " + status.error_message(),
                        context ? ReasonOf(*context) : std::string());
}

}  // namespace stip
