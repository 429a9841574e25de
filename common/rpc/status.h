// stip::Error <-> grpc::Status: the one place where the two meet.
//
// Codes map one to one (stip::ErrorCode mirrors gRPC's codes). A reason
// (stip::Error::reason(), e.g. kReasonInstanceRetired) travels in the trailing
// metadata under kErrorReasonKey: ToStatus puts it there when it is given the
// call's server context, and a client reads it back with ReasonOf /
// ErrorFromStatus from its ClientContext once the call has finished.
#pragma once

#include <grpcpp/support/status.h>

#include <string>

#include "common/error.h"

namespace grpc {
class ClientContext;
class ServerContextBase;
}  // namespace grpc

namespace stip {

// The trailing-metadata key of a status' machine-readable reason.
inline constexpr char kErrorReasonKey[] = "stip-error-reason";

grpc::StatusCode ToGrpcCode(ErrorCode code);
// OK is no error: it maps to kUnknown (a status that failed to say why).
ErrorCode FromGrpcCode(grpc::StatusCode code);

// Server side. The status for `error` (its code and message); with `context`,
// its reason (if any) is added to the call's trailing metadata.
grpc::Status ToStatus(const Error& error, grpc::ServerContextBase* context = nullptr);
// Converts whatever is being handled into a status (a stip::Error keeps its
// code and reason; anything else is INTERNAL). Call inside a catch block.
grpc::Status CurrentExceptionToStatus(grpc::ServerContextBase* context = nullptr);

// Client side. The reason in a finished call's trailing metadata ("" = none).
std::string ReasonOf(const grpc::ClientContext& context);
// The error a failed status stands for: its code, `message` (the status'
// message if empty) and `reason`.
Error ErrorFromStatus(const grpc::Status& status, const std::string& message = "",
                      std::string reason = "");
// The same with the reason read from the finished call's `context`.
Error ErrorFromStatus(const grpc::Status& status, const grpc::ClientContext& context,
                      const std::string& message = "");
// Throws ErrorFromStatus(status, "`what`: <status message>"), with the reason
// from `context` when given.
[[noreturn]] void ThrowStatus(const grpc::Status& status, const std::string& what,
                              const grpc::ClientContext* context = nullptr);

}  // namespace stip
