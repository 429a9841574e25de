// stip::Error <-> grpc::Status.
#pragma once

#include <grpcpp/support/status.h>

#include "common/error.h"

namespace stip {

grpc::StatusCode ToGrpcCode(ErrorCode code);
ErrorCode FromGrpcCode(grpc::StatusCode code);
grpc::Status ToStatus(const Error& error);
// Converts whatever is being handled into a status (stip::Error keeps its code;
// anything else is INTERNAL). Call inside a catch block.
grpc::Status CurrentExceptionToStatus();
// Throws stip::Error carrying the status' code and `context: message`.
[[noreturn]] void ThrowStatus(const grpc::Status& status, const std::string& context);

}  // namespace stip
