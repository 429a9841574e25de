// The error model (common/error.h) and its one mapping onto gRPC
// (common/rpc/status.h): every stip::ErrorCode goes to its gRPC code and
// back, with its message and machine-readable reason -- in memory and over a
// real gRPC call on loopback (the reason travels in the trailing metadata).
#include "common/rpc/status.h"

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <stdexcept>
#include <string>

#include "common/error.h"
#include "stip/v1/stip.grpc.pb.h"

namespace stip {
namespace {

// gRPC's canonical codes, written out from grpc/impl/codegen/status.h's
// documentation (the oracle: not derived from the code under test).
const std::map<ErrorCode, std::pair<grpc::StatusCode, std::string>>& Expected() {
  static const std::map<ErrorCode, std::pair<grpc::StatusCode, std::string>> m = {
      {ErrorCode::kCancelled, {grpc::StatusCode::CANCELLED, "CANCELLED"}},
      {ErrorCode::kUnknown, {grpc::StatusCode::UNKNOWN, "UNKNOWN"}},
      {ErrorCode::kInvalidArgument, {grpc::StatusCode::INVALID_ARGUMENT, "INVALID_ARGUMENT"}},
      {ErrorCode::kDeadlineExceeded, {grpc::StatusCode::DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED"}},
      {ErrorCode::kNotFound, {grpc::StatusCode::NOT_FOUND, "NOT_FOUND"}},
      {ErrorCode::kAlreadyExists, {grpc::StatusCode::ALREADY_EXISTS, "ALREADY_EXISTS"}},
      {ErrorCode::kPermissionDenied, {grpc::StatusCode::PERMISSION_DENIED, "PERMISSION_DENIED"}},
      {ErrorCode::kResourceExhausted, {grpc::StatusCode::RESOURCE_EXHAUSTED, "RESOURCE_EXHAUSTED"}},
      {ErrorCode::kFailedPrecondition,
       {grpc::StatusCode::FAILED_PRECONDITION, "FAILED_PRECONDITION"}},
      {ErrorCode::kAborted, {grpc::StatusCode::ABORTED, "ABORTED"}},
      {ErrorCode::kOutOfRange, {grpc::StatusCode::OUT_OF_RANGE, "OUT_OF_RANGE"}},
      {ErrorCode::kUnimplemented, {grpc::StatusCode::UNIMPLEMENTED, "UNIMPLEMENTED"}},
      {ErrorCode::kInternal, {grpc::StatusCode::INTERNAL, "INTERNAL"}},
      {ErrorCode::kUnavailable, {grpc::StatusCode::UNAVAILABLE, "UNAVAILABLE"}},
      {ErrorCode::kDataLoss, {grpc::StatusCode::DATA_LOSS, "DATA_LOSS"}},
      {ErrorCode::kUnauthenticated, {grpc::StatusCode::UNAUTHENTICATED, "UNAUTHENTICATED"}},
  };
  return m;
}

std::string MessageFor(ErrorCode code) {
  return std::string("model \"x\" failed: ") + ErrorCodeName(code) + " (\xc3\xa9t\xc3\xa9)";
}
std::string ReasonFor(ErrorCode code) { return std::string("REASON_") + ErrorCodeName(code); }

TEST(ErrorModel, EveryGrpcCodeHasOneErrorCode) {
  EXPECT_EQ(std::size(kAllErrorCodes), Expected().size());
  for (ErrorCode code : kAllErrorCodes) {
    auto it = Expected().find(code);
    ASSERT_NE(it, Expected().end()) << static_cast<int>(code);
    EXPECT_EQ(ToGrpcCode(code), it->second.first) << it->second.second;
    EXPECT_EQ(ErrorCodeName(code), it->second.second);
    EXPECT_EQ(FromGrpcCode(ToGrpcCode(code)), code) << it->second.second;
  }
  // Every failure code of gRPC maps to an ErrorCode that maps back to it.
  for (int g = 1; g <= 16; ++g) {
    const auto status = static_cast<grpc::StatusCode>(g);
    EXPECT_EQ(ToGrpcCode(FromGrpcCode(status)), status) << g;
  }
  // OK is no error, a code from the future is not understood: UNKNOWN.
  EXPECT_EQ(FromGrpcCode(grpc::StatusCode::OK), ErrorCode::kUnknown);
  EXPECT_EQ(FromGrpcCode(static_cast<grpc::StatusCode>(99)), ErrorCode::kUnknown);
}

TEST(ErrorModel, EveryCodeRoundTripsThroughAStatusWithMessageAndReason) {
  for (ErrorCode code : kAllErrorCodes) {
    const Error original(code, MessageFor(code), ReasonFor(code));
    const grpc::Status status = ToStatus(original);
    EXPECT_EQ(status.error_code(), Expected().at(code).first);
    EXPECT_EQ(status.error_message(), MessageFor(code));
    // Without a call, the reason goes beside the status (as a client reads
    // it from the trailing metadata).
    const Error back = ErrorFromStatus(status, "", original.reason());
    EXPECT_EQ(back.code(), code);
    EXPECT_EQ(std::string(back.what()), MessageFor(code));
    EXPECT_EQ(back.reason(), ReasonFor(code));
    EXPECT_TRUE(ErrorFromStatus(status).reason().empty());
  }
}

TEST(ErrorModel, CurrentExceptionKeepsCodeAndReasonElseInternal) {
  try {
    throw FailedPrecondition("retired", kReasonInstanceRetired);
  } catch (...) {
    const grpc::Status s = CurrentExceptionToStatus();
    EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
    EXPECT_EQ(s.error_message(), "retired");
  }
  try {
    throw std::runtime_error("boom");
  } catch (...) {
    const grpc::Status s = CurrentExceptionToStatus();
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INTERNAL);
    EXPECT_EQ(s.error_message(), "internal error: boom");
  }
}

TEST(ErrorModel, ThrowStatusNamesTheContextAndKeepsTheCode) {
  try {
    ThrowStatus(grpc::Status(grpc::StatusCode::UNAVAILABLE, "connection refused"), "server:1");
    ADD_FAILURE() << "no throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kUnavailable);
    EXPECT_EQ(std::string(e.what()), "server:1: connection refused");
    EXPECT_TRUE(e.reason().empty());
  }
}

// A model store whose Load fails with the error whose code number is the
// instance id, reason included (ToStatus with the call's context).
class FailingStore final : public v1::ModelStore::Service {
 public:
  grpc::Status Load(grpc::ServerContext* context, const v1::ModelRef* request,
                    v1::ModelInfo*) override {
    try {
      const auto code = static_cast<ErrorCode>(std::stoi(request->instance_id()));
      throw Error(code, MessageFor(code), ReasonFor(code));
    } catch (...) {
      return CurrentExceptionToStatus(context);
    }
  }
  grpc::Status Unload(grpc::ServerContext* context, const v1::ModelRef*, v1::ModelInfo*) override {
    return ToStatus(NotFound("no reason"), context);
  }
};

TEST(ErrorModel, EveryCodeRoundTripsOverGrpcWithMessageAndReason) {
  FailingStore service;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  ASSERT_TRUE(server);
  ASSERT_GT(port, 0);
  auto stub = v1::ModelStore::NewStub(
      grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials()));
  for (ErrorCode code : kAllErrorCodes) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    v1::ModelRef ref;
    ref.set_instance_id(std::to_string(static_cast<int>(code)));
    v1::ModelInfo info;
    const grpc::Status status = stub->Load(&context, ref, &info);
    EXPECT_EQ(status.error_code(), Expected().at(code).first) << status.error_message();
    EXPECT_EQ(ReasonOf(context), ReasonFor(code));
    const Error back = ErrorFromStatus(status, context);
    EXPECT_EQ(back.code(), code);
    EXPECT_EQ(std::string(back.what()), MessageFor(code));
    EXPECT_EQ(back.reason(), ReasonFor(code));
  }
  {
    grpc::ClientContext context;
    v1::ModelRef ref;
    v1::ModelInfo info;
    const grpc::Status status = stub->Unload(&context, ref, &info);
    const Error back = ErrorFromStatus(status, context, "unload: " + status.error_message());
    EXPECT_EQ(back.code(), ErrorCode::kNotFound);
    EXPECT_EQ(std::string(back.what()), "unload: no reason");
    EXPECT_TRUE(back.reason().empty());  // no metadata without a reason
  }
  server->Shutdown();
}

}  // namespace
}  // namespace stip
