// stip::Error <-> grpc::Status.
#pragma once

#include <grpcpp/support/status.h>

#include "common/error.h"

namespace stip {

// Machine-readable error reasons (proto/stip/v1/stip.proto): a status that
// has one carries it in the trailing metadata under kErrorReasonKey.
inline constexpr char kErrorReasonKey[] = "stip-error-reason";
// FAILED_PRECONDITION: the model instance was retired (key rotation); fetch
// the bundle of the user's current instance and open the session there.
inline constexpr char kReasonInstanceRetired[] = "INSTANCE_RETIRED";

grpc::StatusCode ToGrpcCode(ErrorCode code);
ErrorCode FromGrpcCode(grpc::StatusCode code);
grpc::Status ToStatus(const Error& error);
// Converts whatever is being handled into a status (stip::Error keeps its code;
// anything else is INTERNAL). Call inside a catch block.
grpc::Status CurrentExceptionToStatus();
// Throws stip::Error carrying the status' code and `context: message`.
[[noreturn]] void ThrowStatus(const grpc::Status& status, const std::string& context);

}  // namespace stip
